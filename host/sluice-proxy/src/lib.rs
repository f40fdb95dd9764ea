//! Sluice's data plane: monitors' gRPC calls in, a bounded pool of upstream HTTP/2 connections
//! out.
//!
//! - `front` accepts monitor connections (h2c or TLS) and identifies monitors.
//! - `forward` serves each call: admission, upstream stream, relaying, status.
//! - [`pool`] owns upstream connections, stream slots and the wait queue.
//! - [`route`] is the placement policy seam ([`sluice_contract::route::Router`]).
//! - [`grpc`] is the wire format: status, deadlines, headers, framing.
//! - `health` and [`breaker`] judge endpoints, connections and monitors; [`stats`] counts.
//!
//! Public are only what other crates read: the proxy's handle and view, the snapshot types
//! they return ([`pool`], [`breaker`], [`route`], [`stats`]) and the deadline parser in
//! [`grpc`]; the rest is the crate's own.
//!
//! The crate speaks HTTP/2 through `h2` directly on both sides: a proxy needs the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS, explicit flow-control window release for backpressure, and
//! frame-level forwarding of bytes it never decodes.
//!
//! Start a proxy with [`Proxy::bind`] and [`Proxy::spawn`].

pub mod breaker;
mod coalesce;
mod forward;
mod front;
pub mod grpc;
mod health;
pub mod pool;
pub mod route;
pub mod stats;
#[cfg(test)]
mod testing;
mod tls;

pub use tls::TlsError;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_config::{BreakerScope, Config};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::forward::{PackRegistry, RequestBudget, ShareRegistry, SubscriptionRegistry};
use crate::front::identity::MonitorDirectory;
use crate::pool::{GroupSnapshot, Pool, PoolError};
use crate::route::{LeastLoaded, Router};
use crate::stats::{Stats, StatsSnapshot};
use sluice_contract::resume::{ReplayUnchanged, Resumer};

/// Everything a call needs, shared by all calls.
pub(crate) struct Context {
    pub config: Arc<Config>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
    pub monitors: MonitorDirectory,
    pub shares: Arc<ShareRegistry<()>>,
    /// Bidirectional subscriptions running now (methods with `share` and `bidi`).
    pub subscriptions: Arc<SubscriptionRegistry>,
    /// Packed subscriptions running now (methods with `pack`), by packing group.
    pub packs: PackRegistry,
    /// Request bytes held before admission, over every call (`server.max_buffered_request_bytes`).
    pub request_budget: RequestBudget,
    /// Rewrites requests of broken streams before they are replayed.
    pub resumer: Arc<dyn Resumer>,
    /// Flipped when the shutdown grace has run out: open calls end with `UNAVAILABLE`.
    pub terminate: watch::Sender<bool>,
    /// The next monitor call's id (`x-sluice-stream`, the decision log's `stream`).
    pub next_stream: std::sync::atomic::AtomicU64,
}

/// A proxy that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The configuration breaks a rule (see `Config::validate`).
    #[error(transparent)]
    Config(#[from] sluice_config::ConfigError),
    /// The monitor-facing TLS certificate or key is unusable.
    #[error("server TLS: {0}")]
    Tls(#[from] TlsError),
    /// An endpoint could not be set up.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A bound, not yet running proxy.
pub struct Proxy {
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Proxy {
    /// Binds the listener and prepares the pool with the built-in router.
    pub async fn bind(config: Arc<Config>) -> Result<Self, ProxyError> {
        Self::bind_with_router(config, Arc::new(LeastLoaded)).await
    }

    /// Binds with a specific placement policy.
    pub async fn bind_with_router(
        config: Arc<Config>,
        router: Arc<dyn Router>,
    ) -> Result<Self, ProxyError> {
        Self::bind_with_policies(config, router, Arc::new(ReplayUnchanged)).await
    }

    /// Binds with a specific placement policy and resumer.
    pub async fn bind_with_policies(
        config: Arc<Config>,
        router: Arc<dyn Router>,
        resumer: Arc<dyn Resumer>,
    ) -> Result<Self, ProxyError> {
        // Configs built in code skip `Config::from_file`; the data path relies on these rules.
        config.validate()?;
        let stats = Arc::new(Stats::default());
        let pool = Pool::new(&config, router, Arc::clone(&stats))?;
        let tls = match &config.server.tls {
            Some(tls) => {
                let server = tls::server_config(
                    &tls.cert_file,
                    &tls.key_file,
                    tls.client_ca_file.as_deref(),
                )?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
            None => None,
        };
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, source })?;
        let ctx = Arc::new(Context {
            monitors: MonitorDirectory::new(&config),
            request_budget: RequestBudget::new(config.server.max_buffered_request_bytes),
            config,
            pool,
            stats,
            shares: Arc::default(),
            subscriptions: Arc::default(),
            packs: PackRegistry::default(),
            resumer,
            terminate: watch::Sender::new(false),
            next_stream: std::sync::atomic::AtomicU64::new(1),
        });
        Ok(Self { ctx, listener, tls })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.ctx.config.server.listen)
    }

    /// Starts serving on the current tokio runtime.
    pub fn spawn(self) -> ProxyHandle {
        let addr = self.local_addr();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::clone(&self.ctx);
        let warm_ctx = Arc::clone(&self.ctx);
        let health_checks = self.ctx.config.health.active;
        tokio::spawn(async move { warm_ctx.pool.warm(health_checks).await });
        tokio::spawn(tick_traffic_meters(
            Arc::downgrade(&self.ctx),
            shutdown_rx.clone(),
        ));
        let task = tokio::spawn(front::accept_loop(
            ctx,
            self.listener,
            self.tls,
            shutdown_rx,
        ));
        tracing::info!(%addr, tls = self.ctx.config.server.tls.is_some(), "sluice listening");
        ProxyHandle {
            addr,
            ctx: self.ctx,
            shutdown: shutdown_tx,
            task,
        }
    }
}

/// Folds the monitors' traffic counters into their profiles once a second, until the proxy
/// stops.
async fn tick_traffic_meters(ctx: std::sync::Weak<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(ctx) = ctx.upgrade() else { return };
        let now = std::time::Instant::now();
        for meter in ctx.monitors.meters() {
            meter.tick(now);
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    addr: SocketAddr,
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the proxy is doing right now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Counters and gauges.
    pub stats: StatsSnapshot,
    /// Per-class connection groups.
    pub groups: Vec<GroupSnapshot>,
    /// Upstream connections open over all groups.
    pub connections: usize,
    /// Upstream streams currently shared by several monitors.
    pub shared_streams: usize,
    /// Packed upstream subscriptions running now (methods with `pack`).
    pub packs: usize,
    /// Distinct monitor subscriptions those packs carry.
    pub packed_subscriptions: usize,
}

impl ProxyHandle {
    /// Where monitors connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// A cloneable view for the admin API: state and operator actions.
    pub fn view(&self) -> ProxyView {
        ProxyView {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Counters, gauges and pool state.
    pub fn snapshot(&self) -> Snapshot {
        self.view().snapshot()
    }

    /// Every endpoint's health and breaker.
    pub fn endpoints(&self) -> Vec<pool::EndpointSnapshot> {
        self.view().endpoints()
    }

    /// Breaker state changes with a sequence number above `since`, oldest first.
    pub fn breaker_events(&self, since: u64) -> Vec<breaker::BreakerEvent> {
        self.view().breaker_events(since)
    }

    /// Stops accepting and sends GOAWAY to monitors, lets open calls finish for up to
    /// `server.shutdown_grace`, then ends the rest with `UNAVAILABLE "sluice is shutting down"`
    /// so that no monitor sees a bare connection reset.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let grace = self.ctx.config.server.shutdown_grace;
        if !self.wait_for_calls(grace).await {
            let open = self.ctx.stats.downstream_streams_active.load(Relaxed);
            tracing::info!(open, "shutdown grace over; ending the remaining calls");
            self.ctx.terminate.send_replace(true);
            // Time for the final statuses to be written out.
            self.wait_for_calls(Duration::from_secs(1)).await;
        }
        let _ = self.task.await;
    }

    async fn wait_for_calls(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.ctx.stats.downstream_streams_active.load(Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the admin API sees of a running proxy, and the operator actions it may take. Cheap to
/// clone; it keeps the proxy's shared state alive, not its listener.
#[derive(Clone)]
pub struct ProxyView {
    ctx: Arc<Context>,
}

impl ProxyView {
    /// Counters, gauges and pool state.
    pub fn snapshot(&self) -> Snapshot {
        let (packs, packed_subscriptions) = self.ctx.packs.counts();
        Snapshot {
            stats: self.ctx.stats.snapshot(),
            groups: self.ctx.pool.snapshot(),
            connections: self.ctx.pool.open_connections(),
            shared_streams: self.ctx.shares.len() + self.ctx.subscriptions.len(),
            packs,
            packed_subscriptions,
        }
    }

    /// Every endpoint's health and breaker.
    pub fn endpoints(&self) -> Vec<pool::EndpointSnapshot> {
        self.ctx.pool.endpoints()
    }

    /// The endpoints with `max_connections` or `max_streams`, with those caps: what a cluster
    /// of instances splits.
    pub fn shared_caps(&self) -> Vec<(Arc<str>, Option<u32>, Option<u32>)> {
        self.ctx.pool.shared_caps()
    }

    /// Sets this instance's share of `endpoint`'s caps (`None`: the whole cap); connections
    /// above it start draining, no stream is cut. Whether the endpoint exists.
    pub fn set_endpoint_share(
        &self,
        endpoint: &str,
        connections: Option<u32>,
        streams: Option<u32>,
    ) -> bool {
        self.ctx
            .pool
            .set_endpoint_share(endpoint, connections, streams)
    }

    /// The configuration the proxy runs with.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Every upstream connection open now.
    pub fn connections(&self) -> Vec<pool::ConnectionSnapshot> {
        self.ctx.pool.connections()
    }

    /// Every breaker: endpoints, connections, monitors.
    pub fn breakers(&self) -> Vec<breaker::BreakerSnapshot> {
        self.ctx.pool.breakers()
    }

    /// Routing decisions whose outcome is known (their stream ended or was watched for
    /// `learning.observe_for`), taken out of the pool's log.
    pub fn drain_outcomes(&self) -> Vec<route::RouteOutcome> {
        self.ctx.pool.outcomes().drain()
    }

    /// The configured monitors' measured traffic, by id.
    pub fn monitor_traffic(&self) -> Vec<(Arc<str>, sluice_contract::traffic::TrafficProfile)> {
        self.ctx.monitors.traffic()
    }

    /// Breaker state changes with a sequence number above `since`, oldest first.
    pub fn breaker_events(&self, since: u64) -> Vec<breaker::BreakerEvent> {
        self.ctx.pool.breaker_events().since(since)
    }

    /// Forces a breaker open, disables it, or (`None`) releases the override. Returns the
    /// breaker as it is afterwards, or `None` when no breaker has that scope and name.
    pub fn override_breaker(
        &self,
        scope: BreakerScope,
        name: &str,
        value: Option<breaker::Override>,
    ) -> Option<breaker::BreakerSnapshot> {
        let breaker = self.ctx.pool.breaker(scope, name)?;
        breaker.set_override(value);
        Some(breaker.snapshot())
    }

    /// Each group's size, load and stream outcomes; the latency quantile covers `latency_window`.
    pub fn group_loads(&self, latency_window: Duration) -> Vec<pool::GroupLoad> {
        self.ctx.pool.group_loads(latency_window)
    }

    /// Sets how many connections `class` holds: clamped to the class's minimum and limit;
    /// missing ones open now, surplus ones drain without cutting a stream.
    pub async fn resize(&self, class: sluice_config::TrafficClass, target: usize) -> pool::Resized {
        self.ctx.pool.resize(class, target).await
    }

    /// Open calls per monitor.
    pub fn monitor_calls(&self) -> Vec<(Arc<str>, u64)> {
        self.ctx.pool.monitor_calls()
    }

    /// The global connection cap.
    pub fn global_cap(&self) -> usize {
        self.ctx.pool.global_cap()
    }

    /// Drains every connection to `endpoint` (resumable streams move elsewhere). Returns the
    /// number of connections that started draining, or `None` for an unknown endpoint.
    pub fn drain_endpoint(&self, endpoint: &str) -> Option<usize> {
        self.ctx.pool.endpoint(endpoint)?;
        Some(self.ctx.pool.drain_endpoint(endpoint))
    }

    /// Clears what the provider's answers marked on `endpoint` (misconfigured, quota
    /// pushback), so that it takes new streams again: the operator fixed the credentials, or
    /// knows the quota is back. Returns whether a mark was cleared, or `None` for an unknown
    /// endpoint.
    pub fn enable_endpoint(&self, endpoint: &str) -> Option<bool> {
        let endpoint = self.ctx.pool.endpoint(endpoint)?;
        let cleared = endpoint.health.standing.reenable();
        if cleared {
            tracing::info!(endpoint = %endpoint.id, "endpoint re-enabled by an operator");
        }
        Some(cleared)
    }
}
