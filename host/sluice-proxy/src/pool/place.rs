//! Placement: which connection slot a new stream gets, and waiting for one.
//!
//! `acquire` tries a broken stream's alternatives first, then asks the router (without the
//! group's lock) and takes the chosen slot with a compare-and-swap, falling back to the built-in
//! policy under the lock; when no connection has room it waits on a connection being opened,
//! asks `life` to open one, or queues (bounded in size and time).
//!
//! This module places streams on connections that exist. It never opens, drains or closes a
//! connection itself (that is `life`'s job) and never looks at what a stream carries.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::endpoint::{self, EndpointView};
use super::{Endpoint, Group, Lease, Pool, UpstreamConnection};
use crate::grpc::{Code, Status};
use crate::route::{Candidate, LeastLoaded, MonitorProfile, RouteDecision, RouteRequest};

/// Longest pause of a waiting stream before it looks again (endpoints may have recovered).
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Routing rounds without the group's lock before placing under it with the built-in policy
/// (each lost round means concurrent streams took the slots the router chose).
const ROUTE_ATTEMPTS: usize = 3;

/// What a resumed stream's placement knows of the stream that broke.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    /// The connection it broke on: not used again for it.
    pub broken: u64,
    /// The alternatives its placement listed (connection ids, best first): tried before the
    /// router is asked again.
    pub alternatives: Vec<u64>,
    /// An endpoint whose answer told this stream to go elsewhere (quota pushback, refused
    /// credentials): not used for it, whether or not enough monitors saw such answers for the
    /// endpoint to be marked for everyone.
    pub avoid_endpoint: Option<Arc<str>>,
}

/// A monitor's soft placement preferences.
#[derive(Debug, Clone, Default)]
pub(super) struct MonitorPreferences {
    pub(super) region: Option<Arc<str>>,
    pub(super) max_latency: Option<Duration>,
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

/// What one look at a group found for a stream.
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

impl Pool {
    /// Reserves a stream slot for `monitor`'s call `stream` (the decision log files the
    /// router's decision under it), opening a connection or waiting in the bounded queue as
    /// needed. A `resume` names the connection a broken stream was on (not used
    /// again) and the alternatives its placement listed (tried first, in order). Errors are the
    /// gRPC status the monitor should get.
    pub async fn acquire(
        &self,
        monitor: &MonitorProfile,
        method: &str,
        stream: u64,
        resume: Option<&Resume>,
    ) -> Result<Lease, Status> {
        let group = &self.groups[monitor.class.index()];
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut queued: Option<QueueSlot<'_>> = None;
        loop {
            let released = group.released.notified();
            let limits_released = self.limits_released.notified();
            tokio::pin!(released, limits_released);
            // Register interest before looking, so a slot freed in between is not missed.
            released.as_mut().enable();
            limits_released.as_mut().enable();
            let mut promise = None;
            match self.try_place(group, monitor, method, stream, resume) {
                Step::Leased(lease) => return Ok(lease),
                Step::Unavailable(reason) => return Err(Status::unavailable(reason)),
                Step::AwaitOpening => promise = Some(Promise { group }),
                // Boxed: dialling (TCP, TLS, HTTP/2 handshake) holds kilobytes of state that
                // every call's future would otherwise carry and copy, though few calls dial.
                Step::Open(endpoints) => {
                    match Box::pin(self.open_connection(group, endpoints, true)).await {
                        Ok(Some(lease)) => return Ok(lease),
                        Ok(None) => continue,
                        // Every endpoint was at its caps after all: look again, and wait.
                        Err(status) if status.code == Code::ResourceExhausted => continue,
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
                    let full = match self.limits_reached() {
                        Some(limits) => format!("endpoint limits reached ({limits})"),
                        None => format!(
                            "all {} connections of class {} are full",
                            group.limit, group.class
                        ),
                    };
                    return Err(Status::resource_exhausted(format!(
                        "{full} and the wait queue ({} streams) is full",
                        self.queue_capacity,
                    )));
                }
                queued = Some(QueueSlot {
                    group,
                    _gauge: self.stats.hold(|s| &s.queue_waiting),
                });
            }
            let timed_out = tokio::select! {
                _ = &mut released => false,
                _ = &mut limits_released => false,
                // Endpoints that refused a connection, or whose breaker was open, may be usable
                // again when their back-off or open period ends.
                _ = tokio::time::sleep(self.recheck_after()) => false,
                _ = tokio::time::sleep_until(deadline) => true,
            };
            drop(promise);
            if timed_out {
                self.stats.incr(|s| &s.queue_timeouts_total);
                let limits = self
                    .limits_reached()
                    .map(|limits| format!(" (endpoint limits reached: {limits})"))
                    .unwrap_or_default();
                return Err(Status::resource_exhausted(format!(
                    "no stream slot freed in class {} within {:?}{limits}",
                    group.class, self.queue_timeout,
                )));
            }
        }
    }

    /// The endpoint caps reached now, naming each endpoint and cap, for a monitor's
    /// `RESOURCE_EXHAUSTED` (`None` when no cap is reached).
    fn limits_reached(&self) -> Option<String> {
        let reached: Vec<String> = self
            .endpoints
            .iter()
            .filter_map(|e| e.limits_reached())
            .collect();
        (!reached.is_empty()).then(|| reached.join("; "))
    }

    /// How long a waiting stream sleeps before looking again without being woken: until the
    /// first reconnect back-off or connection-open token is due, at most [`RECHECK_AFTER`].
    fn recheck_after(&self) -> Duration {
        let now = Instant::now();
        let backoffs = self
            .endpoints
            .iter()
            .filter_map(|e| e.retry_at())
            .filter(|at| *at > now)
            .map(|at| at - now);
        let tokens = self
            .endpoints
            .iter()
            .filter_map(|e| e.limits.connect_token_in());
        backoffs
            .chain(tokens)
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

    fn try_place(
        &self,
        group: &Arc<Group>,
        monitor: &MonitorProfile,
        method: &str,
        stream: u64,
        resume: Option<&Resume>,
    ) -> Step {
        let avoid_endpoint = resume.and_then(|r| r.avoid_endpoint.as_deref());
        let now = Instant::now();
        let mut views = endpoint::views_avoiding(&self.endpoints, now, avoid_endpoint);
        // An outage is every endpoint out for everyone: one stream told to avoid an endpoint
        // that serves the others does not make one.
        let outage = !views.iter().any(|v| v.selected)
            && (avoid_endpoint.is_none()
                || !endpoint::views(&self.endpoints, now)
                    .iter()
                    .any(|v| v.selected));
        if outage && endpoint::probe_outage(&self.endpoints, now) {
            views = endpoint::views_avoiding(&self.endpoints, Instant::now(), avoid_endpoint);
        }
        if !views.iter().any(|v| v.selected) {
            return Step::Unavailable(endpoint::unavailable_reason(&self.endpoints));
        }
        let views = self.spill_past_caps(group, views, now, avoid_endpoint);
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
                stream,
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
        let order = endpoint::connect_order(&self.endpoints, &views, Instant::now());
        if order.is_empty() {
            // Every selected endpoint is at its caps (connections, connection-open rate): wait
            // for a slot, a connection to close, or the next token.
            return Step::Wait;
        }
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

    /// `views` with the selected endpoints whose caps leave `group` no room counted out, as
    /// long as that leaves another endpoint selected: a stream goes first to another endpoint
    /// of the same priority, then to the next priority, and queues only when every usable
    /// endpoint is at its caps. "No room" is the endpoint's `max_streams` reached, or no new
    /// connection allowed there (`max_connections`, `connections_per_second`) and none of the
    /// group's connections there with a free slot.
    fn spill_past_caps(
        &self,
        group: &Group,
        mut views: Vec<EndpointView>,
        now: Instant,
        avoid: Option<&str>,
    ) -> Vec<EndpointView> {
        let mut full = vec![false; self.endpoints.len()];
        loop {
            let selected: Vec<usize> = (0..views.len()).filter(|&i| views[i].selected).collect();
            let at_caps = |i: usize| {
                let endpoint = &self.endpoints[i];
                endpoint.limits.streams_full()
                    || (!endpoint.may_open_connection() && !group_has_room_on(group, i))
            };
            if selected.is_empty() || !selected.iter().all(|&i| at_caps(i)) {
                return views;
            }
            for i in selected {
                full[i] = true;
            }
            let spilled = endpoint::views_excluding(&self.endpoints, now, |e| {
                full[e.index] || avoid == Some(&*e.id)
            });
            if !spilled.iter().any(|v| v.selected) {
                // Every usable endpoint is at its caps: the stream waits in the class queue.
                return views;
            }
            views = spilled;
        }
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
        let leased = Lease::admit(connection, group, decision, self.failure_kinds, &self.stats);
        leased
            .inspect_err(|refused| {
                tracing::debug!(connection = connection.id, %refused, "breaker refused a placement");
            })
            .ok()
    }
}

/// Whether one of `group`'s live connections to the endpoint at `index` has a free slot.
fn group_has_room_on(group: &Group, index: usize) -> bool {
    group
        .state
        .lock()
        .connections
        .iter()
        .any(|c| !c.is_closed() && c.endpoint_index() == index && c.active_streams() < c.capacity())
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
/// selected endpoint below its `max_streams`, breaker permitting, with a free slot; narrowed to
/// the monitor's preferred region and latency when that leaves any.
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
            let room = c.active_streams() < capacity && !c.endpoint.limits.streams_full();
            (room && c.breaker.permits(now)).then_some((c, capacity))
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

#[cfg(test)]
mod tests;
