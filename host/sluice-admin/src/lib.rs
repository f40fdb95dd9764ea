//! The admin HTTP API, served on its own listener (default `127.0.0.1:9901`).
//!
//! - `/api/v1/...`: JSON reads of the pool (stats, endpoints, connections, groups, breakers,
//!   monitors), the policies (plugins and their events, routing decisions) and the analytics
//!   engine (scaling, insights, predictions, metric history, alerts, reports), and the operator
//!   actions (plugins: upload, activate, shadow, promote, roll back, enable, clear; breakers:
//!   force open, disable, release; endpoints: drain). `/api/v1/openapi.json` describes them.
//! - `/ws`: a WebSocket pushing the dashboard's data about once a second ([`live`]).
//! - `/metrics`: Prometheus text ([`prometheus`]).
//! - `/` and `/assets/...`: the dashboard page, embedded in the binary ([`dashboard`]).
//! - `/healthz`, `/readyz`: liveness and readiness.
//!
//! Who may call it (the `guard` module enforces it on every route, `/ws` and the embedding
//! program's routes included):
//!
//! - **Host**: only the hosts this listener answers to: its listen address (with the bound
//!   port), for a loopback address `localhost`, `127.0.0.1` and `[::1]` with that port, and
//!   `admin.allowed_hosts`; any other `Host` is refused with 421, token or no token, which stops
//!   DNS rebinding.
//! - **Origin**: a request carrying `Origin` (a browser's) must come from the listener's own
//!   origin (`http://` or, with TLS, `https://` and an allowed host) or `admin.allowed_origins`;
//!   otherwise 403. Requests without `Origin` (curl, the CLI, Prometheus) pass; the health checks
//!   skip this rule.
//! - **Token**: with `admin.token` set every route except the health checks and the dashboard's
//!   static files (which hold no data) needs the bearer token, and Sluice refuses to bind a
//!   non-loopback address without one (checked by the config). Without a token, reads are served
//!   but writes (uploads, activations, promotions, breaker overrides, drains, the embedding
//!   program's actions) answer 401 unless `admin.allow_unauthenticated_writes = true`.
//!
//! With `[admin.tls]` everything is served over HTTPS ([`tls`]). Plugin uploads must be sent as
//! `Content-Type: application/wasm` (415 otherwise). Errors are JSON:
//! `{"error": "...", "status": N}`.
//!
//! This crate translates HTTP to calls on [`sluice_policy::Policies`],
//! [`sluice_proxy::ProxyView`] and [`sluice_analytics::Analytics`]; it must not hold state of
//! its own (beyond the frame the live feed last published) or reach into the data path.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use sluice_config::AdminConfig;
use sluice_policy::Policies;
use sluice_proxy::ProxyView;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

mod analytics;
pub mod dashboard;
mod error;
mod guard;
mod inventory;
pub mod live;
mod openapi;
pub mod overview;
mod plugins;
pub mod prometheus;
mod resilience;
pub mod tls;

pub use error::ApiError;
pub use openapi::DOCUMENT as OPENAPI;

use guard::Guard;

/// What the handlers reach.
#[derive(Clone)]
pub struct AdminState {
    /// The policy slots.
    pub policies: Arc<Policies>,
    /// The data plane's state and operator actions.
    pub proxy: ProxyView,
    /// The scaler and analytics engine, when it runs in this process.
    pub analytics: Option<Arc<sluice_analytics::Analytics>>,
    /// When the server was bound: the uptime's origin.
    pub started: Instant,
    live: live::LiveFeed,
}

/// A bound admin listener, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    addr: SocketAddr,
    /// Set with `[admin.tls]`: connections are TLS.
    tls: Option<TlsAcceptor>,
    guard: Arc<Guard>,
    app: Router,
    state: AdminState,
}

/// A running admin server.
pub struct AdminHandle {
    addr: SocketAddr,
    tls: bool,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds the listener in `config`, without the analytics routes' data (they answer 503).
    pub async fn bind(
        config: &AdminConfig,
        policies: Arc<Policies>,
        proxy: ProxyView,
    ) -> std::io::Result<Self> {
        Self::bind_with_analytics(config, policies, proxy, None).await
    }

    /// Binds the listener in `config`, serving the analytics engine's data too. With
    /// `[admin.tls]` the certificate and key are read here, and an unusable one is an error
    /// naming the file.
    pub async fn bind_with_analytics(
        config: &AdminConfig,
        policies: Arc<Policies>,
        proxy: ProxyView,
        analytics: Option<Arc<sluice_analytics::Analytics>>,
    ) -> std::io::Result<Self> {
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        if config.listen.ip().is_unspecified() && config.allowed_hosts.is_empty() {
            tracing::warn!(
                listen = %config.listen,
                "the admin API answers only to Host {addr}: list the names clients use in \
                 admin.allowed_hosts"
            );
        }
        let guard = Arc::new(Guard::new(config, addr, tls.is_some()));
        let state = AdminState {
            policies,
            proxy,
            analytics,
            started: Instant::now(),
            live: live::LiveFeed::new(),
        };
        Ok(Self {
            listener,
            addr,
            tls,
            app: router(state.clone(), Arc::clone(&guard), config.max_upload_bytes),
            guard,
            state,
        })
    }

    /// Adds routes of the embedding program (the demo's endpoint controls), behind the same
    /// rules as the API: the bearer token, and for writes a token or
    /// `admin.allow_unauthenticated_writes`.
    pub fn with_routes(mut self, routes: Router) -> Self {
        let guarded = routes.route_layer(middleware::from_fn_with_state(
            Arc::clone(&self.guard),
            guard::require_token,
        ));
        self.app = self.app.merge(guarded);
        self
    }

    /// Serves until the handle is shut down.
    pub fn spawn(self) -> AdminHandle {
        let addr = self.addr;
        let (shutdown, mut stop) = watch::channel(false);
        tokio::spawn(
            self.state
                .live
                .clone()
                .run(self.state.clone(), shutdown.subscribe()),
        );
        // The Host and Origin rules wrap everything, the routes merged by `with_routes` and the
        // fallbacks included, so they are layered last.
        let app = self.app.layer(middleware::from_fn_with_state(
            self.guard,
            guard::check_host_and_origin,
        ));
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let tls = self.tls.is_some();
        let task = match self.tls {
            Some(acceptor) => tokio::spawn(serve(
                tls::TlsListener::new(self.listener, acceptor, addr),
                app,
                stopped,
            )),
            None => tokio::spawn(serve(self.listener, app, stopped)),
        };
        AdminHandle {
            addr,
            tls,
            shutdown,
            task,
        }
    }
}

async fn serve<L>(
    listener: L,
    app: Router,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
    L::Addr: Debug,
{
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "admin server stopped");
    }
}

impl AdminHandle {
    /// Where the admin API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://host:port`, or `https://host:port` with `[admin.tls]`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn router(state: AdminState, guard: Arc<Guard>, max_upload_bytes: usize) -> Router {
    let api = Router::new()
        .route("/api/v1/plugins", get(plugins::list))
        .route("/api/v1/plugins/events", get(plugins::events))
        .route("/api/v1/scorer", get(plugins::scorer))
        .route("/api/v1/scorer/promote", post(plugins::promote_scorer))
        .route("/api/v1/plugins/{slot}", post(plugins::upload))
        .route("/api/v1/plugins/{slot}/activate", post(plugins::activate))
        .route("/api/v1/plugins/{slot}/shadow", post(plugins::shadow))
        .route("/api/v1/plugins/{slot}/{action}", post(plugins::act))
        .route("/api/v1/endpoints", get(resilience::endpoints))
        .route("/api/v1/endpoints/{id}/drain", post(resilience::drain))
        .route("/api/v1/endpoints/{id}/enable", post(resilience::enable))
        .route("/api/v1/breakers", get(resilience::breakers))
        .route("/api/v1/breakers/events", get(resilience::events))
        .route(
            "/api/v1/breakers/{scope}/{name}/{action}",
            post(resilience::act),
        )
        .route("/api/v1/groups", get(analytics::groups))
        .route("/api/v1/scaling", get(analytics::scaling))
        .route("/api/v1/insights", get(analytics::insights))
        .route("/api/v1/predictions", get(analytics::predictions))
        .route("/api/v1/alerts", get(analytics::alerts))
        .route("/api/v1/metrics", get(analytics::metric_names))
        .route("/api/v1/metrics/{name}", get(analytics::metric))
        .route("/api/v1/decisions", get(analytics::decisions))
        .route("/api/v1/reports", get(analytics::reports))
        .route("/api/v1/reports/{period}", get(analytics::report))
        .route("/api/v1/stats", get(inventory::stats))
        .route("/api/v1/connections", get(inventory::connections))
        .route("/api/v1/monitors", get(inventory::monitors))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/metrics", get(prometheus::metrics))
        .route("/ws", get(live::upgrade))
        .layer(DefaultBodyLimit::max(max_upload_bytes))
        .route_layer(middleware::from_fn_with_state(guard, guard::require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .merge(dashboard::routes())
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(state)
}
