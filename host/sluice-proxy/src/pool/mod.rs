//! The upstream pool: a bounded set of HTTP/2 connections per traffic-class group, spread over
//! the configured endpoints.
//!
//! The pool owns connection lifetimes and stream-slot accounting: which connections exist, how
//! many streams each carries, when a new one may be opened (never past the class limit or the
//! global cap), and the bounded queue of streams waiting for a slot. It asks a [`Router`] where a
//! stream goes but never looks at stream contents; forwarding bytes is the `forward` module's job.

mod connector;
pub mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use sluice_config::{ClassConfig, Config, EndpointConfig, TrafficClass};
use tokio::sync::Notify;

pub use connector::{ConnectError, Connector, Http2Settings};

use crate::grpc::Status;
use crate::route::{Candidate, LeastLoaded, MonitorProfile, RouteDecision, RouteRequest, Router};
use crate::stats::Stats;
use crate::tls::TlsError;

/// How long an endpoint that refused a connection is passed over when another can be tried.
const ENDPOINT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One configured upstream endpoint and how to reach it.
pub struct Endpoint {
    /// The endpoint's id from the config.
    pub id: Arc<str>,
    /// Its region label.
    pub region: Arc<str>,
    /// Its priority (lower preferred).
    pub priority: u32,
    /// `http` or `https`, for the `:scheme` pseudo-header.
    pub scheme: Scheme,
    /// `host:port`, for the `:authority` pseudo-header.
    pub authority: Authority,
    /// Metadata added to every request sent here.
    pub metadata: Vec<(HeaderName, HeaderValue)>,
    connector: Connector,
    retry_after: Mutex<Option<Instant>>,
    /// Connections to this endpoint over all groups, including ones being opened.
    connections: AtomicUsize,
}

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

impl Endpoint {
    fn new(config: &EndpointConfig, settings: Http2Settings) -> Result<Self, PoolError> {
        let invalid = |problem: String| PoolError::Invalid {
            endpoint: config.id.clone(),
            problem,
        };
        let authority = Authority::try_from(config.authority())
            .map_err(|e| invalid(format!("bad authority {:?}: {e}", config.authority())))?;
        let metadata = config
            .metadata
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|e| invalid(format!("metadata name {name:?}: {e}")))?;
                let value = HeaderValue::try_from(value.as_str())
                    .map_err(|e| invalid(format!("metadata value for {name}: {e}")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, PoolError>>()?;
        let connector = Connector::new(config, settings).map_err(|source| PoolError::Tls {
            endpoint: config.id.clone(),
            source,
        })?;
        Ok(Self {
            id: Arc::from(config.id.as_str()),
            region: Arc::from(config.region.as_str()),
            priority: config.priority,
            scheme: if config.uses_tls() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority,
            metadata,
            connector,
            retry_after: Mutex::new(None),
            connections: AtomicUsize::new(0),
        })
    }

    fn cooling_down(&self, now: Instant) -> bool {
        self.retry_after.lock().is_some_and(|until| until > now)
    }
}

/// One HTTP/2 connection to an endpoint, owned by one class group.
pub struct UpstreamConnection {
    /// Pool-unique id.
    pub id: u64,
    /// Where it goes.
    pub endpoint: Arc<Endpoint>,
    /// The group it belongs to.
    pub class: TrafficClass,
    send_request: h2::client::SendRequest<Bytes>,
    active_streams: AtomicU32,
    streams_total: AtomicU64,
    configured_max: u32,
    peer_max: Arc<AtomicU32>,
    closed: Arc<AtomicBool>,
    opened_at: Instant,
    load: load::ConnectionLoad,
}

impl UpstreamConnection {
    /// Streams this connection may carry now.
    pub fn capacity(&self) -> u32 {
        self.configured_max.min(self.peer_max.load(Relaxed))
    }

    /// Streams on it now.
    pub fn active_streams(&self) -> u32 {
        self.active_streams.load(Relaxed)
    }

    /// Whether the connection has ended (error, GOAWAY or peer close).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    fn mark_closed(&self) {
        self.closed.store(true, Relaxed);
    }

    /// Takes a stream slot if the connection has one free.
    fn try_reserve(&self) -> bool {
        let capacity = self.capacity();
        self.active_streams
            .fetch_update(Relaxed, Relaxed, |n| (n < capacity).then_some(n + 1))
            .is_ok()
    }

    fn candidate(&self, now: Instant) -> Candidate {
        let (latency, error_rate) = self.load.read();
        Candidate {
            connection_id: self.id,
            endpoint_id: Arc::clone(&self.endpoint.id),
            region: Arc::clone(&self.endpoint.region),
            priority: self.endpoint.priority,
            active_streams: self.active_streams(),
            max_streams: self.capacity(),
            latency,
            error_rate,
            age: now.saturating_duration_since(self.opened_at),
        }
    }
}

/// A reserved stream slot on a connection. Dropping it frees the slot and wakes waiters.
pub struct Lease {
    connection: Arc<UpstreamConnection>,
    group: Arc<Group>,
    decision: RouteDecision,
    _upstream_active: crate::stats::GaugeGuard,
}

impl Lease {
    /// The connection the slot is on.
    pub fn connection(&self) -> &Arc<UpstreamConnection> {
        &self.connection
    }

    /// Why the router chose this connection.
    pub fn decision(&self) -> &RouteDecision {
        &self.decision
    }

    /// A request handle for the connection, ready to open a stream.
    ///
    /// Fails when the connection closed since the slot was reserved (e.g. the peer sent
    /// GOAWAY); the connection is then marked closed so the pool stops using it.
    pub async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, h2::Error> {
        let result = self.connection.send_request.clone().ready().await;
        if result.is_err() {
            self.connection.mark_closed();
        }
        result
    }

    /// Records the time from sending the request to the response headers (routing latency).
    pub fn observe_response(&self, latency: Duration) {
        self.connection.load.observe_latency(latency);
    }

    /// Records whether the stream failed on the upstream side (reset, connection error).
    pub fn observe_outcome(&self, failed: bool) {
        self.connection.load.observe_outcome(failed);
    }

    /// Marks the connection unusable for new streams (it failed while opening one).
    pub fn discard_connection(&self) {
        self.connection.mark_closed();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connection.active_streams.fetch_sub(1, Relaxed);
        self.group.released.notify_waiters();
    }
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

impl Pool {
    /// Builds the pool from the config. No connection is opened until [`Pool::warm`] or the first
    /// stream.
    pub fn new(
        config: &Config,
        router: Arc<dyn Router>,
        stats: Arc<Stats>,
    ) -> Result<Self, PoolError> {
        let stream_window = config.pool.stream_window_bytes;
        let group = |class: TrafficClass| {
            let cfg: &ClassConfig = config.classes.get(class);
            Arc::new(Group {
                class,
                limit: cfg.connection_limit(config.pool.max_connections),
                min_connections: cfg.min_connections,
                max_streams: u32::try_from(cfg.max_streams_per_connection).unwrap_or(u32::MAX),
                state: Mutex::new(GroupState::default()),
                waiting: AtomicUsize::new(0),
                released: Notify::new(),
            })
        };
        let groups = TrafficClass::ALL.map(group);
        let max_streams = groups.iter().map(|g| g.max_streams).max().unwrap_or(1);
        let settings = Http2Settings {
            stream_window,
            connection_window: u32::try_from(u64::from(stream_window) * u64::from(max_streams))
                .unwrap_or(u32::MAX)
                .min((1 << 31) - 1),
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint::new(e, settings).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            endpoints,
            groups,
            router,
            stats,
            global_cap: config.pool.max_connections,
            open_connections: Arc::new(AtomicUsize::new(0)),
            next_connection_id: AtomicU64::new(1),
            connect_timeout: config.pool.connect_timeout,
            queue_capacity: config.pool.queue_capacity,
            queue_timeout: config.pool.queue_timeout,
        })
    }

    /// Opens each group's `min_connections`. Failures are logged; streams retry later.
    pub async fn warm(&self) {
        for group in &self.groups {
            for _ in 0..group.min_connections {
                let candidates = {
                    let mut state = group.state.lock();
                    if state.connections.len() + state.opening >= group.min_connections
                        || !self.reserve_global()
                    {
                        break;
                    }
                    state.opening += 1;
                    self.endpoint_order()
                };
                if let Err(status) = self.open_connection(group, candidates, false).await {
                    tracing::warn!(class = %group.class, error = %status.message, "could not pre-open connection");
                }
            }
        }
    }

    /// Connections open now, over all groups.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Relaxed)
    }

    /// Per-group views.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.groups
            .iter()
            .map(|group| {
                let state = group.state.lock();
                let live = state.connections.iter().filter(|c| !c.is_closed());
                let (connections, streams) =
                    live.fold((0, 0), |(n, s), c| (n + 1, s + c.active_streams()));
                GroupSnapshot {
                    class: group.class,
                    connections,
                    streams,
                    limit: group.limit,
                    waiting: group.waiting.load(Relaxed),
                }
            })
            .collect()
    }

    /// Reserves a stream slot for `monitor`, opening a connection or waiting in the bounded
    /// queue as needed. Errors are the gRPC status the monitor should get.
    pub async fn acquire(&self, monitor: &MonitorProfile, method: &str) -> Result<Lease, Status> {
        let group = &self.groups[monitor.class.index()];
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut queued: Option<QueueSlot<'_>> = None;
        loop {
            let released = group.released.notified();
            tokio::pin!(released);
            // Register interest before looking, so a slot freed in between is not missed.
            released.as_mut().enable();
            let mut promise = None;
            match self.try_place(group, monitor, method) {
                Step::Leased(lease) => return Ok(lease),
                Step::AwaitOpening => promise = Some(Promise { group }),
                Step::Open(endpoints) => match self.open_connection(group, endpoints, true).await {
                    Ok(Some(lease)) => return Ok(lease),
                    Ok(None) => continue,
                    Err(status) => {
                        if !self.has_live_connections(group) {
                            return Err(status);
                        }
                        // Other connections are alive: look again with a fresh registration.
                        // The failed endpoints now cool down, so the next look waits for a
                        // slot instead of reconnecting at once.
                        continue;
                    }
                },
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
                // Endpoints that refused a connection may be tried again after their cool-down.
                _ = tokio::time::sleep(ENDPOINT_RETRY_AFTER) => false,
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

    fn has_live_connections(&self, group: &Group) -> bool {
        group
            .state
            .lock()
            .connections
            .iter()
            .any(|c| !c.is_closed())
    }

    fn try_place(&self, group: &Arc<Group>, monitor: &MonitorProfile, method: &str) -> Step {
        // The router runs without the group's lock (a policy plugin may take up to its
        // deadline); the slot it picks is then taken with a compare-and-swap, and a slot lost to
        // a concurrent stream means looking again.
        for _ in 0..ROUTE_ATTEMPTS {
            let open = self.connections_with_room(group);
            if open.is_empty() {
                break;
            }
            let now = Instant::now();
            let candidates: Vec<Candidate> = open.iter().map(|c| c.candidate(now)).collect();
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
            let connection = &open[decision.index];
            if connection.try_reserve() {
                return Step::Leased(self.lease_reserved(group, Arc::clone(connection), decision));
            }
        }
        let mut state = group.state.lock();
        let now = Instant::now();
        // Decided under the lock, so that opening connections and queueing below see a
        // consistent group: a slot that freed up meanwhile is taken by the built-in policy.
        let open: Vec<&Arc<UpstreamConnection>> = state
            .connections
            .iter()
            .filter(|c| !c.is_closed() && c.active_streams() < c.capacity())
            .collect();
        let candidates: Vec<Candidate> = open.iter().map(|c| c.candidate(now)).collect();
        if let Some(decision) = LeastLoaded::pick(&candidates) {
            let connection = open[decision.index];
            if connection.try_reserve() {
                return Step::Leased(self.lease_reserved(group, Arc::clone(connection), decision));
            }
        }
        // Streams queue behind connections already being opened as long as those will have room,
        // so a burst of new streams opens one connection per `max_streams`, not one each.
        let room_on_opening = state.opening * group.max_streams as usize;
        if state.opening > 0 && state.opening + state.promised < room_on_opening {
            state.promised += 1;
            return Step::AwaitOpening;
        }
        // While every endpoint has just refused a connection and the group still has live
        // connections, wait for their slots rather than reconnect in a loop.
        let all_cooling = self.endpoints.iter().all(|e| e.cooling_down(now));
        let may_open = !all_cooling || state.connections.is_empty();
        if may_open
            && state.connections.len() + state.opening < group.limit
            && self.reserve_global()
        {
            state.opening += 1;
            return Step::Open(self.endpoint_order());
        }
        Step::Wait
    }

    /// The group's open connections with a free slot now (pruning closed ones).
    fn connections_with_room(&self, group: &Group) -> Vec<Arc<UpstreamConnection>> {
        let mut state = group.state.lock();
        let before = state.connections.len();
        state.connections.retain(|c| !c.is_closed());
        if state.connections.len() != before {
            tracing::debug!(class = %group.class, removed = before - state.connections.len(), "pruned closed connections");
        }
        state
            .connections
            .iter()
            .filter(|c| c.active_streams() < c.capacity())
            .cloned()
            .collect()
    }

    /// A lease on a slot already counted in `connection.active_streams`.
    fn lease_reserved(
        &self,
        group: &Arc<Group>,
        connection: Arc<UpstreamConnection>,
        decision: RouteDecision,
    ) -> Lease {
        connection.streams_total.fetch_add(1, Relaxed);
        self.stats.incr(|s| &s.upstream_streams_total);
        Lease {
            connection,
            group: Arc::clone(group),
            decision,
            _upstream_active: self.stats.hold(|s| &s.upstream_streams_active),
        }
    }

    fn reserve_global(&self) -> bool {
        self.open_connections
            .fetch_update(Relaxed, Relaxed, |n| (n < self.global_cap).then_some(n + 1))
            .is_ok()
    }

    /// Endpoints to try for a new connection: best priority first, then the one with the fewest
    /// connections (spreading load); endpoints that just failed go last.
    fn endpoint_order(&self) -> Vec<Arc<Endpoint>> {
        let now = Instant::now();
        let mut order: Vec<(bool, u32, usize, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    e.cooling_down(now),
                    e.priority,
                    e.connections.load(Relaxed),
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, _, _, i)| Arc::clone(&self.endpoints[i]))
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
            let attempt = EndpointAttempt::start(&endpoint);
            match endpoint.connector.connect(self.connect_timeout).await {
                Ok(opened) => {
                    attempt.succeeded();
                    opening.armed = false;
                    *endpoint.retry_after.lock() = None;
                    return Ok(self.adopt(group, endpoint, opened, take_slot));
                }
                Err(error) => {
                    drop(attempt);
                    self.stats.incr(|s| &s.connection_errors_total);
                    tracing::warn!(endpoint = %endpoint.id, class = %group.class, %error, "upstream connect failed");
                    *endpoint.retry_after.lock() = Some(Instant::now() + ENDPOINT_RETRY_AFTER);
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
        let closed = Arc::new(AtomicBool::new(false));
        let connection = Arc::new(UpstreamConnection {
            id: self.next_connection_id.fetch_add(1, Relaxed),
            endpoint: Arc::clone(&endpoint),
            class: group.class,
            send_request: opened.send_request,
            active_streams: AtomicU32::new(0),
            streams_total: AtomicU64::new(0),
            configured_max: group.max_streams,
            peer_max: opened.peer_max_streams,
            closed: Arc::clone(&closed),
            opened_at: Instant::now(),
            load: load::ConnectionLoad::new(opened.ping_rtt),
        });
        self.stats.incr(|s| &s.connections_opened_total);
        tracing::info!(connection = connection.id, endpoint = %endpoint.id, class = %group.class, "upstream connection opened");
        let driver = opened.driver;
        let open_connections = Arc::clone(&self.open_connections);
        let groups = self.groups.clone();
        let endpoint_for_driver = Arc::clone(&endpoint);
        let id = connection.id;
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::info!(connection = id, %error, "upstream connection ended");
            } else {
                tracing::debug!(connection = id, "upstream connection closed");
            }
            closed.store(true, Relaxed);
            endpoint_for_driver.connections.fetch_sub(1, Relaxed);
            open_connections.fetch_sub(1, Relaxed);
            wake_every_class(&groups);
        });
        let lease = take_slot.then(|| {
            let decision = RouteDecision {
                index: 0,
                confidence: 1.0,
                reason: "new connection opened for this stream".into(),
                alternatives: Vec::new(),
            };
            // The opener's slot: taken even if the peer's limit turned out lower, because this
            // stream was promised the connection it opened.
            connection.active_streams.fetch_add(1, Relaxed);
            self.lease_reserved(group, Arc::clone(&connection), decision)
        });
        let mut state = group.state.lock();
        state.opening -= 1;
        state.connections.push(connection);
        drop(state);
        group.released.notify_waiters();
        lease
    }
}
