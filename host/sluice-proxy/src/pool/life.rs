//! Connection life: opening connections (at warm-up, on demand for a stream, when the scaler
//! asks for more), supervising each one while it lives (driving it, PING keepalive, noticing
//! GOAWAY) and draining it (scale-down, operator drain, GOAWAY) until it closes, handing every
//! count back when it ends.
//!
//! This module decides when connections exist, never which stream goes where (that is
//! `place`'s job): it only leases the first slot of a connection it opened for a waiting stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sluice_config::{BreakerScope, TrafficClass};
use tokio::sync::watch;

use super::connector::Opened;
use super::endpoint;
use super::limits::LimitReached;
use super::liveness::{self, Keepalive, Liveness};
use super::{Endpoint, Group, Lease, Pool, UpstreamConnection, checks, load};
use crate::breaker::{Breaker, Outcome};
use crate::grpc::Status;
use crate::route::RouteDecision;

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
/// endpoints, and its caps hold while the attempt runs); the count stays only if the attempt
/// succeeds.
struct EndpointAttempt<'a> {
    endpoint: &'a Endpoint,
    succeeded: bool,
}

impl<'a> EndpointAttempt<'a> {
    /// Starts an attempt, if the endpoint's caps (`max_connections`, `connections_per_second`)
    /// allow one now.
    fn try_start(endpoint: &'a Endpoint) -> Result<Self, LimitReached> {
        endpoint.try_start_connection()?;
        Ok(Self {
            endpoint,
            succeeded: false,
        })
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

/// What resizing a group did.
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

impl Pool {
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
                let views = endpoint::views(&self.endpoints, Instant::now());
                endpoint::connect_order(&self.endpoints, &views, Instant::now())
            };
            match self.open_connection(group, candidates, false).await {
                Ok(_) => resized.opened += 1,
                Err(status) => resized.errors.push(status.message.to_string()),
            }
        }
        resized
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

    /// Sets this instance's share of `endpoint`'s `max_connections` and `max_streams` in a
    /// cluster (`None`: the whole cap) and starts draining the connections above the new
    /// share, fewest streams first: their resumable streams move to connections within it,
    /// the others finish there. No stream is cut. Whether the endpoint exists.
    pub fn set_endpoint_share(
        &self,
        endpoint: &str,
        connections: Option<u32>,
        streams: Option<u32>,
    ) -> bool {
        let Some(found) = self.endpoints.iter().find(|e| &*e.id == endpoint) else {
            return false;
        };
        found.limits.set_share(connections, streams);
        let keep = found.limits.connection_cap();
        let mut live: Vec<_> = self
            .groups
            .iter()
            .flat_map(|group| group.state.lock().connections.clone())
            .filter(|c| &*c.endpoint.id == endpoint && !c.is_draining() && !c.is_closed())
            .collect();
        if live.len() > keep {
            live.sort_by_key(|c| c.active_streams());
            for connection in &live[..live.len() - keep] {
                connection.start_draining("this instance's cluster share of the endpoint shrank");
            }
        }
        // A larger share may let a waiting stream open a connection (`set_share` woke the
        // streams waiting for the endpoint's own caps).
        for group in &self.groups {
            group.released.notify_waiters();
        }
        true
    }

    /// The endpoints whose `max_connections` or `max_streams` is set, with those caps: what a
    /// cluster splits between its instances.
    pub fn shared_caps(&self) -> Vec<(Arc<str>, Option<u32>, Option<u32>)> {
        self.endpoints
            .iter()
            .filter_map(|e| {
                let (connections, streams) = e.limits.shared_caps();
                (connections.is_some() || streams.is_some())
                    .then(|| (Arc::clone(&e.id), connections, streams))
            })
            .collect()
    }

    /// Takes one connection of the global cap, if any is left.
    pub(super) fn reserve_global(&self) -> bool {
        self.open_connections
            .fetch_update(Relaxed, Relaxed, |n| (n < self.global_cap).then_some(n + 1))
            .is_ok()
    }

    /// Opens a connection for `group` (whose `opening` count and the global reservation the
    /// caller already took). With `take_slot`, the first stream slot on it is leased at once so
    /// the stream that paid for the connection is not overtaken.
    pub(super) async fn open_connection(
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
        // Whether every endpoint was skipped for its caps alone (none refused by its breaker,
        // none dialled).
        let mut only_caps = !endpoints.is_empty();
        for endpoint in endpoints {
            // Caps first: an endpoint at its caps is skipped without taking a breaker probe.
            let attempt = match EndpointAttempt::try_start(&endpoint) {
                Ok(attempt) => attempt,
                Err(reached) => {
                    errors.push(endpoint.limit_refusal(reached));
                    continue;
                }
            };
            only_caps = false;
            let mut permit = match endpoint.breaker.admit() {
                Ok(permit) => permit,
                Err(refused) => {
                    errors.push(format!("{}: {refused}", endpoint.id));
                    continue;
                }
            };
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
                        permit.record(Outcome::Failure);
                    }
                    self.stats.incr(|s| &s.connection_errors_total);
                    tracing::warn!(endpoint = %endpoint.id, class = %group.class, %error, "upstream connect failed");
                    endpoint.connect_failed();
                    errors.push(format!("{}: {error}", endpoint.id));
                }
            }
        }
        drop(opening);
        if only_caps {
            // Every endpoint was at its caps (concurrent openings took what this one was
            // counting on). Not an outage: the stream looks again and waits for room.
            return Err(Status::resource_exhausted(format!(
                "no endpoint could take a new connection for class {} ({})",
                group.class,
                errors.join("; ")
            )));
        }
        Err(Status::unavailable(format!(
            "no upstream endpoint reachable for class {} ({})",
            group.class,
            errors.join("; ")
        )))
    }

    /// Takes a freshly opened connection into `group` and starts its supervisor; with
    /// `take_slot`, leases its first slot to the stream that opened it.
    fn adopt(
        &self,
        group: &Arc<Group>,
        endpoint: Arc<Endpoint>,
        opened: Opened,
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
            configured_max: endpoint.limits.per_connection(group.max_streams),
            peer_max: opened.peer_max_streams,
            closed: AtomicBool::new(false),
            draining: watch::Sender::new(false),
            retired: AtomicBool::new(false),
            unresponsive: AtomicBool::new(false),
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
            Watcher {
                keepalive: self.keepalive,
                liveness: opened.liveness,
                first_rtt: opened.ping_rtt,
            },
            self.max_drain_time,
            Arc::clone(&self.open_connections),
            self.groups.clone(),
        ));
        // The opener's slot: taken even if the peer's limit turned out lower, because this
        // stream was promised the connection it opened; but never past the endpoint's
        // `max_streams` (a concurrent stream may have taken the last one: this one looks again).
        let lease = (take_slot && connection.take_opener_slot()).then(|| {
            let decision = RouteDecision {
                index: 0,
                confidence: 1.0,
                reason: "new connection opened for this stream".into(),
                alternatives: Vec::new(),
                scored: None,
            };
            let leased = Lease::admit(
                &connection,
                group,
                decision,
                self.failure_kinds,
                &self.stats,
            );
            // Refused when the endpoint's half-open probes are all taken: the stream looks again.
            leased
                .inspect_err(|refused| {
                    tracing::debug!(connection = connection.id, %refused, "breaker refused the opener's slot");
                })
                .ok()
        });
        let lease = lease.flatten();
        let mut state = group.state.lock();
        state.opening -= 1;
        state.connections.push(connection);
        drop(state);
        group.released.notify_waiters();
        lease
    }
}

/// How often a connection is asked whether its peer sent GOAWAY: h2 reports a received GOAWAY
/// only as an error when the next stream is opened.
const GOAWAY_CHECK: Duration = Duration::from_millis(100);

/// How often a draining connection is checked for its last stream.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// What a connection's liveness watcher is given.
struct Watcher {
    keepalive: Option<Keepalive>,
    liveness: Arc<Liveness>,
    first_rtt: Duration,
}

/// The watcher's view of its connection: held weakly, like the supervisor's.
struct WatchedConnection(std::sync::Weak<UpstreamConnection>);

impl liveness::Watched for WatchedConnection {
    fn carries_streams(&self) -> bool {
        self.0.upgrade().is_some_and(|c| c.active_streams() > 0)
    }

    fn unresponsive(&self, why: &str) {
        if let Some(connection) = self.0.upgrade() {
            connection.mark_unresponsive(why);
        }
    }
}

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
    watcher: Watcher,
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
    let watched = WatchedConnection(weak.clone());
    let pinger = async {
        match (watcher.keepalive, ping_pong) {
            (Some(keepalive), Some(ping_pong)) => {
                liveness::watch(
                    ping_pong,
                    keepalive,
                    watcher.liveness,
                    watcher.first_rtt,
                    watched,
                )
                .await
            }
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
