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
//! Every route except the health checks and the dashboard's static files (which hold no data)
//! needs the bearer token when one is configured, and Sluice refuses to bind a non-loopback
//! address without one (checked by the config). Errors are JSON: `{"error": "...", "status": N}`.
//!
//! This crate translates HTTP to calls on [`sluice_policy::Policies`],
//! [`sluice_proxy::ProxyView`] and [`sluice_analytics::Analytics`]; it must not hold state of
//! its own (beyond the frame the live feed last published) or reach into the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use sluice_config::AdminConfig;
use sluice_policy::Policies;
use sluice_proxy::ProxyView;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod analytics;
pub mod dashboard;
mod error;
mod inventory;
pub mod live;
mod openapi;
pub mod overview;
mod plugins;
pub mod prometheus;
mod resilience;

pub use error::ApiError;
pub use openapi::DOCUMENT as OPENAPI;

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
    token: Option<Arc<str>>,
}

/// A bound admin listener, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    app: Router,
    state: AdminState,
}

/// A running admin server.
pub struct AdminHandle {
    addr: SocketAddr,
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

    /// Binds the listener in `config`, serving the analytics engine's data too.
    pub async fn bind_with_analytics(
        config: &AdminConfig,
        policies: Arc<Policies>,
        proxy: ProxyView,
        analytics: Option<Arc<sluice_analytics::Analytics>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let state = AdminState {
            policies,
            proxy,
            analytics,
            started: Instant::now(),
            live: live::LiveFeed::new(),
            token: config.token.as_deref().map(Arc::from),
        };
        Ok(Self {
            listener,
            app: router(state.clone(), config.max_upload_bytes),
            state,
        })
    }

    /// Adds routes of the embedding program (the demo's endpoint controls), behind the same
    /// bearer token as the API.
    pub fn with_routes(mut self, routes: Router) -> Self {
        let guarded = routes.route_layer(middleware::from_fn_with_state(
            self.state.clone(),
            require_token,
        ));
        self.app = self.app.merge(guarded);
        self
    }

    /// Serves until the handle is shut down.
    pub fn spawn(self) -> AdminHandle {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (shutdown, mut stop) = watch::channel(false);
        tokio::spawn(
            self.state
                .live
                .clone()
                .run(self.state.clone(), shutdown.subscribe()),
        );
        let task = tokio::spawn(async move {
            let served = axum::serve(self.listener, self.app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin server stopped");
            }
        });
        AdminHandle {
            addr,
            shutdown,
            task,
        }
    }
}

impl AdminHandle {
    /// Where the admin API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn router(state: AdminState, max_upload_bytes: usize) -> Router {
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
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
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

async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.token {
        let headers = request.headers();
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|token| token.as_bytes().to_vec())
            .or_else(|| websocket_token(headers));
        match presented.as_deref() {
            Some(token) if constant_time_eq(token, expected.as_bytes()) => {}
            Some(_) => return Err(ApiError::unauthorized("wrong bearer token")),
            None => {
                return Err(ApiError::unauthorized(
                    "missing bearer token (Authorization: Bearer <admin.token>)",
                ));
            }
        }
    }
    Ok(next.run(request).await)
}

/// The token a browser offers when opening `/ws`: the subprotocol `bearer.<token as hex>`
/// (browsers cannot set headers on a WebSocket, and hex keeps any token a valid protocol name).
fn websocket_token(headers: &axum::http::HeaderMap) -> Option<Vec<u8>> {
    let offered = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    let hex = offered
        .split(',')
        .find_map(|p| p.trim().strip_prefix("bearer."))?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
