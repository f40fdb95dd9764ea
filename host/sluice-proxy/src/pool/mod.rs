//! The upstream pool: a bounded set of HTTP/2 connections per traffic-class group, spread over
//! the configured endpoints.
//!
//! The pool owns connection lifetimes and stream-slot accounting: which connections exist, how
//! many streams each carries, when a new one may be opened (never past the class limit or the
//! global cap), and the bounded queue of streams waiting for a slot. It asks a [`Router`] where a
//! stream goes but never looks at stream contents; forwarding bytes is the `forward` module's job.

mod checks;
mod connection;
mod connector;
mod endpoint;
pub mod load;
pub mod rate;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_config::{
    BreakerScope, BreakerSettings, ClassConfig, Config, FailureKinds, TrafficClass,
};
use tokio::sync::{Notify, watch};

pub use connection::{FailureKind, Lease, UpstreamConnection};
pub use connector::{ConnectError, Connector, Http2Settings};
pub use endpoint::Endpoint;
pub use window::StreamWindowSizing;
pub(crate) use window::connection_window;

use crate::breaker::{Breaker, BreakerEvents, BreakerSnapshot, BreakerState, Permit};
use crate::grpc::Status;
use crate::health::{Health, HealthSnapshot};
use crate::route::{
    Candidate, LeastLoaded, MonitorProfile, OutcomeLog, RouteDecision, RouteRequest, Router,
};
use crate::stats::Stats;
use crate::tls::TlsError;

/// Longest pause of a waiting stream before it looks again (endpoints may have recovered).
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Monitors with their own breaker; beyond this, unknown monitors share one.
const MONITOR_BREAKERS: usize = 4096;

/// An endpoint the pool could not set up.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The endpoint's TLS settings are unusable.
    #[error("endpoint {endpoint}: {source}")]
    Tls {
        /// The endpoint id.
        endpoint: String,
        /// The TLS problem.
        source: TlsError,
    },
    /// The endpoint's URL or metadata cannot be used in HTTP/2 headers.
    #[error("endpoint {endpoint}: {problem}")]
    Invalid {
        /// The endpoint id.
        endpoint: String,
        /// The problem.
        problem: String,
    },
}

/// A connection being opened for a group: holds the group's `opening` count and the global
/// reservation, and gives both back when dropped while armed.
struct Opening<'a> {
    pool: &'a Pool,
    group: &'a Arc<Group>,
    armed: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.group.state.lock().opening -= 1;
            self.pool.open_connections.fetch_sub(1, Relaxed);
            wake_every_class(&self.pool.groups);
        }
    }
}

/// Wakes the waiters of every class: a global connection slot freed up, so any class may now
/// open a connection.
fn wake_every_class(groups: &[Arc<Group>]) {
    for group in groups {
        group.released.notify_waiters();
    }
}

/// Counts a connection attempt against its endpoint (so concurrent openings spread over
/// endpoints); the count stays only if the attempt succeeds.
struct EndpointAttempt<'a> {
    endpoint: &'a Endpoint,
    succeeded: bool,
}

impl<'a> EndpointAttempt<'a> {
    fn start(endpoint: &'a Endpoint) -> Self {
        endpoint.connections.fetch_add(1, Relaxed);
        Self {
            endpoint,
            succeeded: false,
        }
    }

    /// Keeps the count: the connection now exists and its driver gives it back when it ends.
    fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for EndpointAttempt<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.endpoint.connections.fetch_sub(1, Relaxed);
        }
    }
}

/// A place in a group's wait queue, given back when dropped.
struct QueueSlot<'a> {
    group: &'a Group,
    _gauge: crate::stats::GaugeGuard,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.group.waiting.fetch_sub(1, Relaxed);
    }
}

/// The connections of one traffic class.
pub struct Group {
    class: TrafficClass,
    limit: usize,
    min_connections: usize,
    max_streams: u32,
    /// Connections the scaler wants held, opened ahead of demand (at least `min_connections`).
    target: AtomicUsize,
    /// Connections open now, draining ones included (they still count against the caps).
    held: AtomicUsize,
    counters: load::GroupCounters,
    state: Mutex<GroupState>,
    waiting: AtomicUsize,
    released: Notify,
}

#[derive(Default)]
struct GroupState {
    connections: Vec<Arc<UpstreamConnection>>,
    /// Connections being opened.
    opening: usize,
    /// Streams waiting for a connection being opened (besides the one opening each).
    promised: usize,
}

/// A point-in-time view of one group, for stats and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The class.
    pub class: TrafficClass,
    /// Open connections.
    pub connections: usize,
    /// Streams over all its connections.
    pub streams: u32,
    /// The class's connection limit.
    pub limit: usize,
    /// Streams waiting for a slot.
    pub waiting: usize,
}

/// What [`Pool::resize`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resized {
    /// The group's target after clamping.
    pub target: usize,
    /// Connections opened.
    pub opened: usize,
    /// Connections that started draining.
    pub drained: usize,
    /// Why connections could not be opened (the global cap, unreachable endpoints).
    pub errors: Vec<String>,
}

/// One group's size and load, as the scaler and analytics see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupLoad {
    /// The class.
    pub class: TrafficClass,
    /// Connections taking streams (neither draining nor closed).
    pub connections: usize,
    /// Connections open, draining ones included.
    pub held: usize,
    /// Connections taking streams that carry none.
    pub idle_connections: usize,
    /// The configured minimum.
    pub min_connections: usize,
    /// The group's limit (its configured max or its share of the global cap).
    pub max_connections: usize,
    /// Connections the scaler last asked for.
    pub target: usize,
    /// The configured streams per connection.
    pub max_streams_per_connection: u32,
    /// Streams on its connections.
    pub streams: u32,
    /// Streams its connections can carry.
    pub capacity: u32,
    /// Streams waiting for a slot.
    pub waiting: usize,
    /// Streams placed on the group since start.
    pub streams_started_total: u64,
    /// Streams that failed on the upstream side since start (kinds the breakers count).
    pub streams_failed_total: u64,
    /// 99th percentile of time to response headers over the requested window, in ms.
    pub latency_p99_ms: Option<f64>,
    /// Mean peak-EWMA latency of its connections, in ms.
    pub latency_ms: f64,
}

/// One upstream connection as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionSnapshot {
    /// Pool-unique id.
    pub id: u64,
    /// The endpoint it goes to.
    pub endpoint: Arc<str>,
    /// The endpoint's region.
    pub region: Arc<str>,
    /// The group that owns it.
    pub class: TrafficClass,
    /// Streams on it now.
    pub streams: u32,
    /// Streams it may carry (the configured limit, lowered by the peer's setting).
    pub max_streams: u32,
    /// Streams it has carried since it opened.
    pub streams_total: u64,
    /// Peak-EWMA latency, in ms.
    pub latency_ms: f64,
    /// Exponentially weighted share of recent streams that failed, 0..=1.
    pub error_rate: f64,
    /// Seconds since it opened.
    pub age_s: f64,
    /// It takes no new streams and its resumable streams move off.
    pub draining: bool,
    /// Its breaker's state.
    pub breaker: BreakerState,
}

/// The pool: every group, every endpoint, and the global cap.
pub struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    groups: [Arc<Group>; 3],
    router: Arc<dyn Router>,
    stats: Arc<Stats>,
    global_cap: usize,
    open_connections: Arc<AtomicUsize>,
    next_connection_id: AtomicU64,
    connect_timeout: Duration,
    queue_capacity: usize,
    queue_timeout: Duration,
    keepalive: Option<Keepalive>,
    max_drain_time: Duration,
    failure_kinds: FailureKinds,
    connection_breakers: BreakerSettings,
    monitor_breakers: BreakerSettings,
    breaker_events: Arc<BreakerEvents>,
    monitors: Mutex<HashMap<Arc<str>, MonitorEntry>>,
    preferences: HashMap<Arc<str>, MonitorPreferences>,
    /// Decisions being watched for the learning loop.
    outcomes: OutcomeLog,
    /// Ends background tasks (health checks) when the pool goes away.
    stop: watch::Sender<bool>,
}

/// PING settings of upstream connections.
#[derive(Debug, Clone, Copy)]
struct Keepalive {
    interval: Duration,
    timeout: Duration,
}

/// A monitor's breaker and its open calls.
struct MonitorEntry {
    breaker: Arc<Breaker>,
    active: Arc<AtomicU64>,
}

/// Counts one open call of a monitor until dropped.
#[derive(Debug)]
pub struct MonitorCall {
    active: Arc<AtomicU64>,
}

impl Drop for MonitorCall {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Relaxed);
    }
}

/// What a resumed stream's placement knows of the stream that broke.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The connection it broke on: not used again for it.
    pub broken: u64,
    /// The alternatives its placement listed (connection ids, best first): tried before the
    /// router is asked again.
    pub alternatives: Vec<u64>,
}

/// A monitor's soft placement preferences.
#[derive(Debug, Clone, Default)]
struct MonitorPreferences {
    region: Option<Arc<str>>,
    max_latency: Option<Duration>,
}

/// What placement may do with one endpoint right now.
#[derive(Debug, Clone, Copy)]
struct EndpointView {
    /// New streams may go there (healthy or degraded, breaker permits, best usable priority).
    selected: bool,
    /// Connections there take half their streams.
    degraded: bool,
    /// The endpoint's health and breaker, as routers see them.
    health: Health,
    breaker: crate::breaker::BreakerState,
}

/// Routing rounds without the group's lock before placing under it with the built-in policy
/// (each lost round means concurrent streams took the slots the router chose).
const ROUTE_ATTEMPTS: usize = 3;

enum Step {
    Leased(Lease),
    Open(Vec<Arc<Endpoint>>),
    /// Wait for a connection that is being opened; it will have room.
    AwaitOpening,
    Wait,
    /// No endpoint can take the stream now.
    Unavailable(String),
}

/// A stream's claim on a slot of a connection being opened, given back when it retries.
struct Promise<'a> {
    group: &'a Group,
}

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        self.group.state.lock().promised -= 1;
    }
}

/// One endpoint as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointSnapshot {
    /// Its id.
    pub id: Arc<str>,
    /// Its region.
    pub region: Arc<str>,
    /// Its priority.
    pub priority: u32,
    /// Health verdict and reason.
    pub health: HealthSnapshot,
    /// Its breaker.
    pub breaker: BreakerSnapshot,
    /// Connections to it.
    pub connections: usize,
}

impl Pool {
    /// Builds the pool from the config. No connection is opened until [`Pool::warm`] or the first
    /// stream.
    pub fn new(
        config: &Config,
        router: Arc<dyn Router>,
        stats: Arc<Stats>,
    ) -> Result<Self, PoolError> {
        let stream_window = StreamWindowSizing {
            floor: config.pool.stream_window_bytes,
            budget: config.pool.stream_window_budget(),
        };
        let group = |class: TrafficClass| {
            let cfg: &ClassConfig = config.classes.get(class);
            Arc::new(Group {
                class,
                limit: cfg.connection_limit(config.pool.max_connections),
                min_connections: cfg.min_connections,
                max_streams: u32::try_from(cfg.max_streams_per_connection).unwrap_or(u32::MAX),
                target: AtomicUsize::new(cfg.min_connections),
                held: AtomicUsize::new(0),
                counters: load::GroupCounters::default(),
                state: Mutex::new(GroupState::default()),
                waiting: AtomicUsize::new(0),
                released: Notify::new(),
            })
        };
        let groups = TrafficClass::ALL.map(group);
        let max_streams = groups.iter().map(|g| g.max_streams).max().unwrap_or(1);
        let settings = Http2Settings {
            stream_window,
            // Room for every stream's floor window plus twice the budget: streams that stalled
            // while they had a larger share hold at most budget + budget/2 + budget/4 + ...,
            // and must not take the window the others need.
            connection_window: connection_window(
                u64::from(stream_window.floor) * u64::from(max_streams)
                    + 2 * u64::from(stream_window.budget),
            ),
        };
        let breaker_events = Arc::new(BreakerEvents::default());
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Endpoint::new(i, e, config, settings, &breaker_events).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let preferences = config
            .monitors
            .iter()
            .map(|m| {
                let preferences = MonitorPreferences {
                    region: m.prefer_region.as_deref().map(Arc::from),
                    max_latency: m.max_latency,
                };
                (Arc::from(m.id.as_str()), preferences)
            })
            .collect();
        let pool = &config.pool;
        Ok(Self {
            endpoints,
            groups,
            router,
            stats,
            global_cap: pool.max_connections,
            open_connections: Arc::new(AtomicUsize::new(0)),
            next_connection_id: AtomicU64::new(1),
            connect_timeout: pool.connect_timeout,
            queue_capacity: pool.queue_capacity,
            queue_timeout: pool.queue_timeout,
            keepalive: (!pool.keepalive_interval.is_zero()).then_some(Keepalive {
                interval: pool.keepalive_interval,
                timeout: pool.keepalive_timeout,
            }),
            max_drain_time: pool.max_drain_time,
            failure_kinds: config.breakers.failures,
            connection_breakers: config.breakers.settings(BreakerScope::Connection),
            monitor_breakers: config.breakers.settings(BreakerScope::Monitor),
            breaker_events,
            monitors: Mutex::new(HashMap::new()),
            preferences,
            outcomes: OutcomeLog::new(&config.learning),
            stop: watch::Sender::new(false),
        })
    }

    /// Starts the endpoints' active health checks (when `[health] active`) and opens each
    /// group's `min_connections`. Failures are logged; streams retry later.
    pub async fn warm(&self, health_checks: bool) {
        if health_checks {
            for endpoint in &self.endpoints {
                tokio::spawn(checks::run_active_checks(
                    Arc::clone(endpoint),
                    self.connect_timeout,
                    self.stop.subscribe(),
                ));
            }
        }
        for group in &self.groups {
            let resized = self.resize(group.class, group.min_connections).await;
            for error in resized.errors {
                tracing::warn!(class = %group.class, %error, "could not pre-open connection");
            }
        }
    }

    /// Sets the number of connections `class` holds: `target`, clamped to the group's
    /// `min_connections` and limit. Missing connections are opened now (within the global
    /// cap); surplus ones, the least loaded first, start draining: they take no new streams,
    /// their resumable streams move to the group's other connections, and they close when
    /// their last stream ends, however long that takes (`pool.max_drain_time` does not apply:
    /// scaling down never cuts a stream). Streams still open connections on
    /// demand up to the group's limit when every connection is full.
    pub async fn resize(&self, class: TrafficClass, target: usize) -> Resized {
        let group = &self.groups[class.index()];
        let target = target.clamp(
            group.min_connections,
            group.limit.max(group.min_connections),
        );
        group.target.store(target, Relaxed);
        let mut resized = Resized {
            target,
            ..Resized::default()
        };
        let surplus: Vec<Arc<UpstreamConnection>> = {
            let state = group.state.lock();
            let mut live: Vec<&Arc<UpstreamConnection>> = state
                .connections
                .iter()
                .filter(|c| !c.is_closed())
                .collect();
            let held = live.len() + state.opening;
            if held <= target {
                Vec::new()
            } else {
                live.sort_by_key(|c| (c.active_streams(), std::cmp::Reverse(c.id)));
                live.into_iter()
                    .take(held - target)
                    .map(Arc::clone)
                    .collect()
            }
        };
        for connection in surplus {
            connection.retire("the scaler removed it");
            resized.drained += 1;
        }
        while resized.errors.is_empty() {
            let candidates = {
                let mut state = group.state.lock();
                let live = state.connections.iter().filter(|c| !c.is_closed()).count();
                if live + state.opening >= target {
                    break;
                }
                if !self.reserve_global() {
                    resized.errors.push(format!(
                        "the global cap of {} connections is reached",
                        self.global_cap
                    ));
                    break;
                }
                state.opening += 1;
                let views = self.endpoint_views(Instant::now());
                self.endpoint_order(&views)
            };
            match self.open_connection(group, candidates, false).await {
                Ok(_) => resized.opened += 1,
                Err(status) => resized.errors.push(status.message.to_string()),
            }
        }
        resized
    }

    /// Connections open now, over all groups.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Relaxed)
    }

    /// Per-group views: the summary of [`Pool::group_loads`] that stats and tests use.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.group_loads(Duration::ZERO)
            .into_iter()
            .map(|group| GroupSnapshot {
                class: group.class,
                connections: group.connections,
                streams: group.streams,
                limit: group.max_connections,
                waiting: group.waiting,
            })
            .collect()
    }

    /// Each group's size, load and recent stream outcomes, for the scaler and analytics.
    /// `latency_window` bounds the samples behind the latency quantile.
    pub fn group_loads(&self, latency_window: Duration) -> Vec<GroupLoad> {
        self.groups
            .iter()
            .map(|group| {
                let state = group.state.lock();
                let live: Vec<&Arc<UpstreamConnection>> = state
                    .connections
                    .iter()
                    .filter(|c| !c.is_closed())
                    .collect();
                let streams = live.iter().map(|c| c.active_streams()).sum();
                let capacity = live.iter().map(|c| c.capacity()).sum();
                let idle = live.iter().filter(|c| c.active_streams() == 0).count();
                let latency_ms = if live.is_empty() {
                    0.0
                } else {
                    live.iter()
                        .map(|c| c.load.read().0.as_secs_f64() * 1e3)
                        .sum::<f64>()
                        / live.len() as f64
                };
                let connections = live.len();
                drop(state);
                let (streams_started_total, streams_failed_total) = group.counters.totals();
                GroupLoad {
                    class: group.class,
                    connections,
                    held: group.held.load(Relaxed),
                    idle_connections: idle,
                    min_connections: group.min_connections,
                    max_connections: group.limit,
                    target: group.target.load(Relaxed),
                    max_streams_per_connection: group.max_streams,
                    streams,
                    capacity,
                    waiting: group.waiting.load(Relaxed),
                    streams_started_total,
                    streams_failed_total,
                    latency_p99_ms: group.counters.latency_quantile(0.99, latency_window),
                    latency_ms,
                }
            })
            .collect()
    }

    /// The global connection cap.
    pub fn global_cap(&self) -> usize {
        self.global_cap
    }

    /// Every endpoint's health and breaker.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.endpoints
            .iter()
            .map(|e| EndpointSnapshot {
                id: Arc::clone(&e.id),
                region: Arc::clone(&e.region),
                priority: e.priority,
                health: e.health.snapshot(&e.breaker),
                breaker: e.breaker.snapshot(),
                connections: e.connection_count(),
            })
            .collect()
    }

    /// Every connection open now (draining ones included), by group then age.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        let now = Instant::now();
        let mut all = Vec::new();
        for group in &self.groups {
            let state = group.state.lock();
            all.extend(state.connections.iter().map(|c| {
                let (latency, error_rate) = c.load.read();
                ConnectionSnapshot {
                    id: c.id,
                    endpoint: Arc::clone(&c.endpoint.id),
                    region: Arc::clone(&c.endpoint.region),
                    class: c.class,
                    streams: c.active_streams(),
                    max_streams: c.capacity(),
                    streams_total: c.streams_total.load(Relaxed),
                    latency_ms: latency.as_secs_f64() * 1e3,
                    error_rate,
                    age_s: now.saturating_duration_since(c.opened_at).as_secs_f64(),
                    draining: c.is_draining(),
                    breaker: c.breaker.state(),
                }
            }));
        }
        all
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| &*e.id == id)
    }

    /// Every breaker: endpoints, live connections, monitors.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        let mut all: Vec<BreakerSnapshot> = self
            .endpoints
            .iter()
            .map(|e| e.breaker.snapshot())
            .collect();
        for group in &self.groups {
            let state = group.state.lock();
            all.extend(state.connections.iter().map(|c| c.breaker.snapshot()));
        }
        all.extend(self.monitors.lock().values().map(|m| m.breaker.snapshot()));
        all
    }

    /// Finds a breaker by scope and name (as listed by [`Pool::breakers`]).
    pub fn breaker(&self, scope: BreakerScope, name: &str) -> Option<Arc<Breaker>> {
        match scope {
            BreakerScope::Endpoint => self.endpoint(name).map(|e| Arc::clone(&e.breaker)),
            BreakerScope::Monitor => self
                .monitors
                .lock()
                .get(name)
                .map(|m| Arc::clone(&m.breaker)),
            BreakerScope::Connection => self.groups.iter().find_map(|group| {
                let state = group.state.lock();
                state
                    .connections
                    .iter()
                    .find(|c| &**c.breaker.name() == name)
                    .map(|c| Arc::clone(&c.breaker))
            }),
        }
    }

    /// Decisions watched for the learning loop ([`OutcomeLog::drain`] takes the finished ones).
    pub fn outcomes(&self) -> &OutcomeLog {
        &self.outcomes
    }

    /// Breaker state changes, oldest first.
    pub fn breaker_events(&self) -> &Arc<BreakerEvents> {
        &self.breaker_events
    }

    /// Admits one call of `monitor` through its breaker; the returned [`MonitorCall`] counts
    /// the call among the monitor's open calls while it lives.
    pub fn admit_monitor(&self, monitor: &MonitorProfile) -> Result<(Permit, MonitorCall), Status> {
        let (breaker, active) = {
            let mut monitors = self.monitors.lock();
            let key = if monitors.len() < MONITOR_BREAKERS || monitors.contains_key(&monitor.id) {
                Arc::clone(&monitor.id)
            } else {
                Arc::from("(other monitors)")
            };
            let entry = monitors
                .entry(Arc::clone(&key))
                .or_insert_with(|| MonitorEntry {
                    breaker: Breaker::new(
                        BreakerScope::Monitor,
                        key,
                        self.monitor_breakers,
                        Arc::clone(&self.breaker_events),
                    ),
                    active: Arc::new(AtomicU64::new(0)),
                });
            (Arc::clone(&entry.breaker), Arc::clone(&entry.active))
        };
        let permit = breaker
            .admit()
            .map_err(|refused| Status::unavailable(refused.to_string()))?;
        active.fetch_add(1, Relaxed);
        Ok((permit, MonitorCall { active }))
    }

    /// Open calls per monitor (monitors beyond the breaker limit are counted together).
    pub fn monitor_calls(&self) -> Vec<(Arc<str>, u64)> {
        self.monitors
            .lock()
            .iter()
            .map(|(id, m)| (Arc::clone(id), m.active.load(Relaxed)))
            .collect()
    }

    /// Starts draining every connection to `endpoint`: they take no new streams, and resumable
    /// streams move off them. Returns how many connections started draining.
    pub fn drain_endpoint(&self, endpoint: &str) -> usize {
        let mut drained = 0;
        for group in &self.groups {
            let state = group.state.lock();
            for connection in state
                .connections
                .iter()
                .filter(|c| &*c.endpoint.id == endpoint)
            {
                if !connection.is_draining() {
                    connection.start_draining("endpoint drained by an operator");
                    drained += 1;
                }
            }
        }
        drained
    }

    /// Reserves a stream slot for `monitor`, opening a connection or waiting in the bounded
    /// queue as needed. A `resume` names the connection a broken stream was on (not used
    /// again) and the alternatives its placement listed (tried first, in order). Errors are the
    /// gRPC status the monitor should get.
    pub async fn acquire(
        &self,
        monitor: &MonitorProfile,
        method: &str,
        resume: Option<&Resume>,
    ) -> Result<Lease, Status> {
        let group = &self.groups[monitor.class.index()];
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut queued: Option<QueueSlot<'_>> = None;
        loop {
            let released = group.released.notified();
            tokio::pin!(released);
            // Register interest before looking, so a slot freed in between is not missed.
            released.as_mut().enable();
            let mut promise = None;
            match self.try_place(group, monitor, method, resume) {
                Step::Leased(lease) => return Ok(lease),
                Step::Unavailable(reason) => return Err(Status::unavailable(reason)),
                Step::AwaitOpening => promise = Some(Promise { group }),
                // Boxed: dialling (TCP, TLS, HTTP/2 handshake) holds kilobytes of state that
                // every call's future would otherwise carry and copy, though few calls dial.
                Step::Open(endpoints) => {
                    match Box::pin(self.open_connection(group, endpoints, true)).await {
                        Ok(Some(lease)) => return Ok(lease),
                        Ok(None) => continue,
                        Err(status) => {
                            if !self.has_live_connections(group) {
                                return Err(status);
                            }
                            // Other connections are alive: look again with a fresh registration.
                            // The failed endpoints now back off, so the next look waits for a
                            // slot instead of reconnecting at once.
                            continue;
                        }
                    }
                }
                Step::Wait => {}
            }
            // Streams promised a slot on a connection being opened are not queued: they have one.
            if queued.is_none() && promise.is_none() {
                if group.waiting.fetch_add(1, Relaxed) >= self.queue_capacity {
                    group.waiting.fetch_sub(1, Relaxed);
                    self.stats.incr(|s| &s.queue_rejected_total);
                    return Err(Status::resource_exhausted(format!(
                        "all {} connections of class {} are full and the wait queue ({} streams) is full",
                        group.limit, group.class, self.queue_capacity
                    )));
                }
                queued = Some(QueueSlot {
                    group,
                    _gauge: self.stats.hold(|s| &s.queue_waiting),
                });
            }
            let timed_out = tokio::select! {
                _ = &mut released => false,
                // Endpoints that refused a connection, or whose breaker was open, may be usable
                // again when their back-off or open period ends.
                _ = tokio::time::sleep(self.recheck_after()) => false,
                _ = tokio::time::sleep_until(deadline) => true,
            };
            drop(promise);
            if timed_out {
                self.stats.incr(|s| &s.queue_timeouts_total);
                return Err(Status::resource_exhausted(format!(
                    "no stream slot freed in class {} within {:?}",
                    group.class, self.queue_timeout
                )));
            }
        }
    }

    /// How long a waiting stream sleeps before looking again without being woken.
    fn recheck_after(&self) -> Duration {
        let now = Instant::now();
        self.endpoints
            .iter()
            .filter_map(|e| e.retry_at())
            .filter(|at| *at > now)
            .map(|at| at - now)
            .min()
            .unwrap_or(RECHECK_AFTER)
            .clamp(Duration::from_millis(5), RECHECK_AFTER)
    }

    fn has_live_connections(&self, group: &Group) -> bool {
        group
            .state
            .lock()
            .connections
            .iter()
            .any(|c| !c.is_closed())
    }

    /// Which endpoints new streams may use now: those neither unhealthy nor refused by their
    /// breaker, and of those only the best priority (traffic spills to lower priorities when
    /// higher ones lose health, and comes back when they recover).
    fn endpoint_views(&self, now: Instant) -> Vec<EndpointView> {
        let verdicts: Vec<(bool, Health)> = self
            .endpoints
            .iter()
            .map(|e| {
                let health = e.health();
                // An endpoint that just refused a connection and has none left cannot take a
                // stream before its back-off ends: the next priority can.
                let unreachable = e.backing_off(now) && e.connection_count() == 0;
                let usable = health != Health::Unhealthy && !unreachable && e.breaker.permits(now);
                (usable, health)
            })
            .collect();
        let best = self
            .endpoints
            .iter()
            .zip(&verdicts)
            .filter(|(_, (usable, _))| *usable)
            .map(|(e, _)| e.priority)
            .min();
        self.endpoints
            .iter()
            .zip(verdicts)
            .map(|(e, (usable, health))| EndpointView {
                selected: usable && Some(e.priority) == best,
                degraded: health == Health::Degraded,
                health,
                breaker: e.breaker.state(),
            })
            .collect()
    }

    /// Why no endpoint can take a stream, for the monitor's status message.
    fn unavailable_reason(&self) -> String {
        let reasons: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                let snapshot = e.health.snapshot(&e.breaker);
                let why = snapshot
                    .reason
                    .unwrap_or_else(|| "half-open probes in flight".to_owned());
                format!("{}: {why}", e.id)
            })
            .collect();
        format!("no upstream endpoint is available ({})", reasons.join("; "))
    }

    fn try_place(
        &self,
        group: &Arc<Group>,
        monitor: &MonitorProfile,
        method: &str,
        resume: Option<&Resume>,
    ) -> Step {
        let views = self.endpoint_views(Instant::now());
        if !views.iter().any(|v| v.selected) {
            return Step::Unavailable(self.unavailable_reason());
        }
        let preferences = self.preferences.get(&monitor.id);
        let avoid = resume.map(|r| r.broken);
        if let Some(lease) =
            resume.and_then(|r| self.try_alternatives(group, &views, preferences, r))
        {
            return Step::Leased(lease);
        }
        // The router runs without the group's lock (a policy plugin may take up to its
        // deadline); the slot it picks is then taken with a compare-and-swap, and a slot lost to
        // a concurrent stream means looking again.
        for _ in 0..ROUTE_ATTEMPTS {
            let open = self.connections_with_room(group, &views, preferences, avoid);
            if open.is_empty() {
                break;
            }
            let now = Instant::now();
            let candidates = candidates_of(&open, &views, now);
            let request = RouteRequest {
                monitor,
                method,
                candidates: &candidates,
            };
            let decision = self
                .router
                .route(&request)
                .filter(|d| d.index < candidates.len() && d.confidence.is_finite())
                .or_else(|| LeastLoaded::pick(&candidates));
            let Some(decision) = decision else { break };
            let (connection, capacity) = &open[decision.index];
            // Kept as connection ids: what a resume of this stream tries first.
            let alternatives: Vec<u64> = decision
                .alternatives
                .iter()
                .filter_map(|&i| candidates.get(i).map(|c| c.connection_id))
                .collect();
            if let Some(mut lease) = self.try_lease(group, connection, *capacity, decision) {
                lease.alternatives = alternatives;
                // The feature rows are the learning loop's; a stream must not carry them.
                let scored = lease.decision.scored.take();
                lease.observation = self.outcomes.observe(
                    &monitor.id,
                    &connection.endpoint.id,
                    connection.id,
                    &lease.decision,
                    scored,
                    candidates.len(),
                );
                return Step::Leased(lease);
            }
        }
        let mut state = group.state.lock();
        let now = Instant::now();
        // Decided under the lock, so that opening connections and queueing below see a
        // consistent group: a slot that freed up meanwhile is taken by the built-in policy.
        let open = placeable(&state.connections, &views, preferences, avoid);
        let candidates = candidates_of(&open, &views, now);
        if let Some(decision) = LeastLoaded::pick(&candidates) {
            let (connection, capacity) = &open[decision.index];
            if let Some(lease) = self.try_lease(group, connection, *capacity, decision) {
                return Step::Leased(lease);
            }
        }
        // Streams queue behind connections already being opened as long as those will have room,
        // so a burst of new streams opens one connection per `max_streams`, not one each.
        let room_on_opening = state.opening * group.max_streams as usize;
        if state.opening > 0 && state.opening + state.promised < room_on_opening {
            state.promised += 1;
            return Step::AwaitOpening;
        }
        let order = self.endpoint_order(&views);
        // While every usable endpoint is backing off after refused connections, wait for their
        // back-off (or for slots on live connections) rather than reconnect in a loop.
        let all_backing_off = order.iter().all(|e| e.backing_off(now));
        let live = state
            .connections
            .iter()
            .any(|c| !c.is_closed() && views[c.endpoint_index()].selected);
        if all_backing_off && !live && state.opening == 0 {
            return Step::Unavailable(format!(
                "no upstream endpoint reachable for class {} (reconnecting with back-off)",
                group.class
            ));
        }
        if !all_backing_off
            && state.connections.len() + state.opening < group.limit
            && self.reserve_global()
        {
            state.opening += 1;
            return Step::Open(order);
        }
        Step::Wait
    }

    /// A slot on the first of a broken stream's alternatives that can take it now; the lease
    /// keeps the alternatives after it, for a further resume.
    fn try_alternatives(
        &self,
        group: &Arc<Group>,
        views: &[EndpointView],
        preferences: Option<&MonitorPreferences>,
        resume: &Resume,
    ) -> Option<Lease> {
        if resume.alternatives.is_empty() {
            return None;
        }
        let open = self.connections_with_room(group, views, preferences, Some(resume.broken));
        for (rank, id) in resume.alternatives.iter().enumerate() {
            let Some((connection, capacity)) = open.iter().find(|(c, _)| c.id == *id) else {
                continue;
            };
            let decision = RouteDecision {
                index: 0,
                confidence: 1.0,
                reason: format!(
                    "resume: alternative {} of the broken stream's placement (conn {id})",
                    rank + 1
                )
                .into(),
                alternatives: Vec::new(),
                scored: None,
            };
            if let Some(mut lease) = self.try_lease(group, connection, *capacity, decision) {
                lease.alternatives = resume.alternatives[rank + 1..].to_vec();
                return Some(lease);
            }
        }
        None
    }

    /// The group's connections that may take a stream now, with their current capacity
    /// (pruning closed ones).
    fn connections_with_room(
        &self,
        group: &Group,
        views: &[EndpointView],
        preferences: Option<&MonitorPreferences>,
        avoid: Option<u64>,
    ) -> Vec<(Arc<UpstreamConnection>, u32)> {
        let mut state = group.state.lock();
        let before = state.connections.len();
        state.connections.retain(|c| !c.is_closed());
        if state.connections.len() != before {
            tracing::debug!(class = %group.class, removed = before - state.connections.len(), "pruned closed connections");
        }
        placeable(&state.connections, views, preferences, avoid)
            .into_iter()
            .map(|(c, cap)| (Arc::clone(c), cap))
            .collect()
    }

    /// Takes a slot on `connection` and the breakers' leave for the stream; gives the slot
    /// back if a breaker refuses (it may have just opened, or its probes are taken).
    fn try_lease(
        &self,
        group: &Arc<Group>,
        connection: &Arc<UpstreamConnection>,
        capacity: u32,
        decision: RouteDecision,
    ) -> Option<Lease> {
        if !connection.try_reserve(capacity) {
            return None;
        }
        let permits = connection.admit_stream();
        match permits {
            Ok(permits) => {
                Some(self.lease_reserved(group, Arc::clone(connection), decision, permits))
            }
            Err(refused) => {
                tracing::debug!(connection = connection.id, %refused, "breaker refused a placement");
                connection.active_streams.remove();
                None
            }
        }
    }

    /// A lease on a slot already counted in `connection.active_streams`.
    fn lease_reserved(
        &self,
        group: &Arc<Group>,
        connection: Arc<UpstreamConnection>,
        decision: RouteDecision,
        permits: [Permit; 2],
    ) -> Lease {
        connection.streams_total.fetch_add(1, Relaxed);
        group.counters.stream_started();
        self.stats.incr(|s| &s.upstream_streams_total);
        Lease {
            connection,
            group: Arc::clone(group),
            decision,
            permits: Mutex::new(permits),
            failure_kinds: self.failure_kinds,
            failure_counted: AtomicBool::new(false),
            _upstream_active: self.stats.hold(|s| &s.upstream_streams_active),
            observation: None,
            alternatives: Vec::new(),
        }
    }

    fn reserve_global(&self) -> bool {
        self.open_connections
            .fetch_update(Relaxed, Relaxed, |n| (n < self.global_cap).then_some(n + 1))
            .is_ok()
    }

    /// Endpoints to try for a new connection: the selected (usable, best priority) ones, those
    /// not backing off first, then the one with the fewest connections (spreading load).
    fn endpoint_order(&self, views: &[EndpointView]) -> Vec<Arc<Endpoint>> {
        let now = Instant::now();
        let mut order: Vec<(bool, usize, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| views[*i].selected)
            .map(|(i, e)| (e.backing_off(now), e.connection_count(), i))
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, _, i)| Arc::clone(&self.endpoints[i]))
            .collect()
    }

    /// Opens a connection for `group` (whose `opening` count and the global reservation the
    /// caller already took). With `take_slot`, the first stream slot on it is leased at once so
    /// the stream that paid for the connection is not overtaken.
    async fn open_connection(
        &self,
        group: &Arc<Group>,
        endpoints: Vec<Arc<Endpoint>>,
        take_slot: bool,
    ) -> Result<Option<Lease>, Status> {
        // Both guards give their counts back if this future is dropped mid-connect (the
        // stream that started the opening was cancelled) or every endpoint fails.
        let mut opening = Opening {
            pool: self,
            group,
            armed: true,
        };
        let mut errors = Vec::new();
        for endpoint in endpoints {
            let mut permit = match endpoint.breaker.admit() {
                Ok(permit) => permit,
                Err(refused) => {
                    errors.push(format!("{}: {refused}", endpoint.id));
                    continue;
                }
            };
            let attempt = EndpointAttempt::start(&endpoint);
            match endpoint.connector().connect(self.connect_timeout).await {
                Ok(opened) => {
                    attempt.succeeded();
                    opening.armed = false;
                    endpoint.connect_succeeded();
                    // The streams on the connection report the endpoint's outcomes.
                    drop(permit);
                    return Ok(self.adopt(group, endpoint, opened, take_slot));
                }
                Err(error) => {
                    drop(attempt);
                    if self.failure_kinds.connect {
                        permit.record(crate::breaker::Outcome::Failure);
                    }
                    self.stats.incr(|s| &s.connection_errors_total);
                    tracing::warn!(endpoint = %endpoint.id, class = %group.class, %error, "upstream connect failed");
                    endpoint.connect_failed();
                    errors.push(format!("{}: {error}", endpoint.id));
                }
            }
        }
        drop(opening);
        Err(Status::unavailable(format!(
            "no upstream endpoint reachable for class {} ({})",
            group.class,
            errors.join("; ")
        )))
    }

    fn adopt(
        &self,
        group: &Arc<Group>,
        endpoint: Arc<Endpoint>,
        opened: connector::Opened,
        take_slot: bool,
    ) -> Option<Lease> {
        let id = self.next_connection_id.fetch_add(1, Relaxed);
        let connection = Arc::new(UpstreamConnection {
            id,
            breaker: Breaker::new(
                BreakerScope::Connection,
                Arc::from(format!("{}#{id}", endpoint.id)),
                self.connection_breakers,
                Arc::clone(&self.breaker_events),
            ),
            endpoint: Arc::clone(&endpoint),
            class: group.class,
            send_request: opened.send_request,
            active_streams: opened.active_streams,
            streams_total: AtomicU64::new(0),
            configured_max: group.max_streams,
            peer_max: opened.peer_max_streams,
            closed: AtomicBool::new(false),
            draining: watch::Sender::new(false),
            retired: AtomicBool::new(false),
            opened_at: Instant::now(),
            load: load::ConnectionLoad::new(opened.ping_rtt),
        });
        self.stats.incr(|s| &s.connections_opened_total);
        group.held.fetch_add(1, Relaxed);
        tracing::info!(connection = connection.id, endpoint = %endpoint.id, class = %group.class, "upstream connection opened");
        tokio::spawn(supervise(
            Arc::clone(&connection),
            opened.driver,
            opened.ping_pong,
            self.keepalive,
            self.max_drain_time,
            Arc::clone(&self.open_connections),
            self.groups.clone(),
        ));
        let lease = if take_slot {
            let decision = RouteDecision {
                index: 0,
                confidence: 1.0,
                reason: "new connection opened for this stream".into(),
                alternatives: Vec::new(),
                scored: None,
            };
            // The opener's slot: taken even if the peer's limit turned out lower, because this
            // stream was promised the connection it opened.
            connection.active_streams.add();
            let permits = connection.admit_stream();
            match permits {
                Ok(permits) => {
                    Some(self.lease_reserved(group, Arc::clone(&connection), decision, permits))
                }
                Err(refused) => {
                    // The endpoint's half-open probes are all taken: look again.
                    tracing::debug!(connection = connection.id, %refused, "breaker refused the opener's slot");
                    connection.active_streams.remove();
                    None
                }
            }
        } else {
            None
        };
        let mut state = group.state.lock();
        state.opening -= 1;
        state.connections.push(connection);
        drop(state);
        group.released.notify_waiters();
        lease
    }
}

/// The router's view of `open` connections (their endpoint's health and breaker from `views`).
fn candidates_of<C: AsRef<UpstreamConnection>>(
    open: &[(C, u32)],
    views: &[EndpointView],
    now: Instant,
) -> Vec<Candidate> {
    open.iter()
        .map(|(c, cap)| {
            let c = c.as_ref();
            let view = &views[c.endpoint_index()];
            c.candidate(now, *cap, view.health, view.breaker)
        })
        .collect()
}

/// Connections of `connections` that may take a stream now, with their capacity: open, on a
/// selected endpoint, breaker permitting, with a free slot; narrowed to the monitor's preferred
/// region and latency when that leaves any.
fn placeable<'a>(
    connections: &'a [Arc<UpstreamConnection>],
    views: &[EndpointView],
    preferences: Option<&MonitorPreferences>,
    avoid: Option<u64>,
) -> Vec<(&'a Arc<UpstreamConnection>, u32)> {
    let now = Instant::now();
    let mut open: Vec<(&Arc<UpstreamConnection>, u32)> = connections
        .iter()
        .filter(|c| !c.is_closed() && Some(c.id) != avoid)
        .filter_map(|c| {
            let view = views[c.endpoint_index()];
            if !view.selected {
                return None;
            }
            let capacity = if view.degraded {
                c.degraded_capacity()
            } else {
                c.capacity()
            };
            (c.active_streams() < capacity && c.breaker.permits(now)).then_some((c, capacity))
        })
        .collect();
    if let Some(preferences) = preferences {
        if let Some(region) = &preferences.region
            && open.iter().any(|(c, _)| &c.endpoint.region == region)
        {
            open.retain(|(c, _)| &c.endpoint.region == region);
        }
        if let Some(max) = preferences.max_latency
            && open.iter().any(|(c, _)| c.load.read().0 <= max)
        {
            open.retain(|(c, _)| c.load.read().0 <= max);
        }
    }
    open
}

/// How often a connection is asked whether its peer sent GOAWAY: h2 reports a received GOAWAY
/// only as an error when the next stream is opened.
const GOAWAY_CHECK: Duration = Duration::from_millis(100);

/// How often a draining connection is checked for its last stream.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// Runs one connection until it ends: drives it, PINGs it, notices GOAWAY, and closes it once
/// it is draining and its last stream ended (or `max_drain_time` passed). Then gives its counts
/// back and wakes waiting streams.
///
/// It holds the connection weakly: once no group and no stream holds it, its request handle is
/// dropped and h2 closes the connection by itself.
async fn supervise(
    connection: Arc<UpstreamConnection>,
    driver: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), h2::Error>> + Send>>,
    ping_pong: Option<h2::PingPong>,
    keepalive: Option<Keepalive>,
    max_drain_time: Duration,
    open_connections: Arc<AtomicUsize>,
    groups: [Arc<Group>; 3],
) {
    let id = connection.id;
    let class = connection.class;
    let endpoint = Arc::clone(&connection.endpoint);
    let mut draining = connection.draining.subscribe();
    let weak = Arc::downgrade(&connection);
    drop(connection);
    let drained = async {
        loop {
            tokio::select! {
                // The watch's guard must not live across the select (it is not `Send`).
                () = async { let _ = draining.wait_for(|d| *d).await; } => break,
                () = tokio::time::sleep(GOAWAY_CHECK) => match weak.upgrade() {
                    Some(connection) => connection.check_goaway(),
                    None => return std::future::pending().await,
                },
            }
        }
        let deadline = tokio::time::Instant::now() + max_drain_time;
        loop {
            match weak.upgrade() {
                None => return std::future::pending().await,
                Some(connection) if connection.active_streams() == 0 => {
                    return "its last stream ended";
                }
                Some(connection)
                    if !connection.retired.load(Relaxed)
                        && tokio::time::Instant::now() >= deadline =>
                {
                    return "the drain time is over";
                }
                Some(_) => {}
            }
            tokio::time::sleep(DRAIN_CHECK).await;
        }
    };
    let pinger = async {
        match (keepalive, ping_pong) {
            (Some(keepalive), Some(ping_pong)) => keep_alive(ping_pong, keepalive).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        result = driver => match result {
            Err(error) => tracing::info!(connection = id, endpoint = %endpoint.id, %error, "upstream connection ended"),
            Ok(()) => tracing::debug!(connection = id, "upstream connection closed"),
        },
        error = pinger => {
            tracing::warn!(connection = id, endpoint = %endpoint.id, %error, "keepalive failed; closing the connection");
            // Dropping the driver closes the socket and fails every stream on it, which
            // resumes the resumable ones elsewhere.
        }
        why = drained => {
            tracing::info!(connection = id, endpoint = %endpoint.id, why, "drained connection closed");
        }
    }
    // Closed, not drained: its streams fail on their own, and those failures count against the
    // breakers (a migration would not).
    if let Some(connection) = weak.upgrade() {
        connection.mark_closed();
    }
    endpoint.connections.fetch_sub(1, Relaxed);
    open_connections.fetch_sub(1, Relaxed);
    groups[class.index()].held.fetch_sub(1, Relaxed);
    wake_every_class(&groups);
}

/// Why keepalive gave up on a connection.
#[derive(Debug, thiserror::Error)]
enum KeepaliveError {
    #[error("no PING answer within {0:?}")]
    Timeout(Duration),
    #[error("PING failed: {0}")]
    Failed(h2::Error),
}

/// PINGs every `interval`; returns when one is not answered within `timeout`. A black-holed
/// connection (packets dropped, no RST or FIN) is detected within `interval + timeout`.
async fn keep_alive(mut ping_pong: h2::PingPong, keepalive: Keepalive) -> KeepaliveError {
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return KeepaliveError::Failed(error),
            Err(_) => return KeepaliveError::Timeout(keepalive.timeout),
        }
    }
}
