//! One upstream HTTP/2 connection and the stream slots leased on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use parking_lot::Mutex;
use sluice_config::{FailureKinds, TrafficClass};
use tokio::sync::watch;

use super::window::StreamCount;
use super::{Endpoint, Group, load};
use crate::breaker::{Breaker, Outcome, Permit, Refused};
use crate::route::{Candidate, RouteDecision};
use crate::stats::{GaugeGuard, Stats};

/// One HTTP/2 connection to an endpoint, owned by one class group.
pub(crate) struct UpstreamConnection {
    /// Pool-unique id.
    pub id: u64,
    /// Where it goes.
    pub endpoint: Arc<Endpoint>,
    /// The group it belongs to.
    pub class: TrafficClass,
    /// Counts failed streams on this connection.
    pub breaker: Arc<Breaker>,
    pub(super) send_request: h2::client::SendRequest<Bytes>,
    /// Shared with the connection's driver, which sizes stream windows by it.
    pub(super) active_streams: Arc<StreamCount>,
    pub(super) streams_total: AtomicU64,
    pub(super) configured_max: u32,
    pub(super) peer_max: Arc<AtomicU32>,
    pub(super) closed: AtomicBool,
    /// Flips to true when the connection starts draining (GOAWAY received, operator drain):
    /// it takes no new streams, and resumable streams move off it.
    pub(super) draining: watch::Sender<bool>,
    /// Set when the scaler retired the connection: its drain waits for the last stream however
    /// long it takes (scale-down must not cut streams that cannot move).
    pub(super) retired: AtomicBool,
    /// Set when its peer did not answer a silence probe in time (see `liveness`): the
    /// connection drains like a retired one, and resumed streams avoid its endpoint.
    pub(super) unresponsive: AtomicBool,
    pub(super) opened_at: Instant,
    pub(super) load: load::ConnectionLoad,
}

impl UpstreamConnection {
    /// Streams this connection may carry now.
    pub fn capacity(&self) -> u32 {
        self.configured_max.min(self.peer_max.load(Relaxed))
    }

    /// Streams it may carry while its endpoint is degraded: half, at least one.
    pub fn degraded_capacity(&self) -> u32 {
        (self.capacity() / 2).max(1)
    }

    /// Streams on it now.
    pub fn active_streams(&self) -> u32 {
        self.active_streams.get()
    }

    /// Whether the connection takes no new streams: it ended, failed to open a stream, or is
    /// draining.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Whether it is draining (its streams should move elsewhere).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub(super) fn endpoint_index(&self) -> usize {
        self.endpoint.index
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Relaxed);
    }

    /// Notices a GOAWAY from the peer (draining the connection) or a connection error (closing
    /// it) without opening a stream.
    pub(super) fn check_goaway(&self) {
        if let Some(Err(error)) = self.send_request.clone().ready().now_or_never() {
            if error.is_go_away() {
                self.start_draining("the peer sent GOAWAY");
            } else {
                self.mark_closed();
            }
        }
    }

    /// Takes no new streams and asks resumable streams to move off.
    pub(super) fn start_draining(&self, why: &str) {
        self.mark_closed();
        if !self.draining.send_replace(true) {
            tracing::info!(connection = self.id, endpoint = %self.endpoint.id, why, "connection draining");
        }
    }

    /// Drains the connection without a deadline: it closes when its last stream ends.
    pub(super) fn retire(&self, why: &str) {
        self.retired.store(true, Relaxed);
        self.start_draining(why);
    }

    /// Its peer stopped answering: drains it (without a deadline, so streams that cannot
    /// move are cut only if keepalive gives up on the connection) and sends its resumable
    /// streams to another endpoint.
    pub(super) fn mark_unresponsive(&self, why: &str) {
        self.unresponsive.store(true, Relaxed);
        tracing::warn!(connection = self.id, endpoint = %self.endpoint.id, why, "upstream connection unresponsive");
        self.retire(why);
    }

    /// Whether its peer stopped answering (its streams should move to another endpoint).
    pub fn is_unresponsive(&self) -> bool {
        self.unresponsive.load(Relaxed)
    }

    /// The leave of the connection's and its endpoint's breakers for one more stream.
    fn admit_stream(&self) -> Result<[Permit; 2], Refused> {
        let connection = self.breaker.admit()?;
        let endpoint = self.endpoint.breaker.admit()?;
        Ok([connection, endpoint])
    }

    /// Takes a stream slot if the connection has one free under `capacity` and its endpoint
    /// one under its `max_streams`.
    pub(super) fn try_reserve(&self, capacity: u32) -> bool {
        if !self.active_streams.try_add(capacity) {
            return false;
        }
        if !self.endpoint.limits.try_open_stream() {
            self.active_streams.remove();
            return false;
        }
        true
    }

    /// The slot of the stream that opened the connection: taken whatever the peer's limit,
    /// but only under the endpoint's `max_streams`.
    pub(super) fn take_opener_slot(&self) -> bool {
        if !self.endpoint.limits.try_open_stream() {
            return false;
        }
        self.active_streams.add();
        true
    }

    /// Gives a slot taken by [`Self::try_reserve`] or [`Self::take_opener_slot`] back.
    pub(super) fn release_slot(&self) {
        self.active_streams.remove();
        self.endpoint.limits.close_stream();
    }

    pub(super) fn candidate(
        &self,
        now: Instant,
        capacity: u32,
        endpoint_health: crate::health::Health,
        endpoint_breaker: crate::breaker::BreakerState,
    ) -> Candidate {
        let (latency, error_rate) = self.load.read();
        Candidate {
            connection_id: self.id,
            endpoint_id: Arc::clone(&self.endpoint.id),
            region: Arc::clone(&self.endpoint.region),
            priority: self.endpoint.priority,
            active_streams: self.active_streams(),
            max_streams: capacity,
            latency,
            error_rate,
            age: now.saturating_duration_since(self.opened_at),
            endpoint_health,
            endpoint_breaker,
        }
    }
}

/// Why an upstream stream counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Reset, or its connection died.
    Reset,
    /// The upstream answered `UNAVAILABLE`.
    Unavailable,
    /// The upstream answered `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// No first response message within `breakers.first_message_timeout`.
    NoFirstMessage,
    /// Another status the endpoint's `[endpoints.answers]` table calls a failure.
    Answered,
}

impl FailureKind {
    fn counted(self, kinds: &FailureKinds) -> bool {
        match self {
            FailureKind::Reset => kinds.reset,
            FailureKind::Unavailable => kinds.unavailable,
            FailureKind::DeadlineExceeded => kinds.deadline_exceeded,
            FailureKind::NoFirstMessage => kinds.no_first_message,
            // Configured per endpoint on purpose: always counted.
            FailureKind::Answered => true,
        }
    }
}

/// A reserved stream slot on a connection. Dropping it frees the slot and wakes waiters.
pub(crate) struct Lease {
    pub(super) connection: Arc<UpstreamConnection>,
    pub(super) group: Arc<Group>,
    pub(super) decision: RouteDecision,
    /// The connection's and the endpoint's breaker leave; behind a lock so that the stream's
    /// relay and its timers can report through a shared reference.
    permits: Mutex<[Permit; 2]>,
    failure_kinds: FailureKinds,
    /// Set once the stream counted a failure: one stream is one failure, however it ends.
    failure_counted: AtomicBool,
    /// When the response started (headers without the end), in microseconds after the
    /// request; 0 until then. The breakers judge a stream's speed on it.
    started_after_us: AtomicU64,
    _upstream_active: GaugeGuard,
    /// The learning loop's watch on this stream, when the decision is being recorded.
    pub(super) observation: Option<Arc<crate::route::Observation>>,
    /// The placement's alternatives as connection ids, best first.
    pub(super) alternatives: Vec<u64>,
}

impl Lease {
    /// A lease on a slot already taken on `connection` ([`UpstreamConnection::try_reserve`]),
    /// if the connection's and its endpoint's breakers let one more stream through; otherwise
    /// the slot is given back. A lease counts its stream as started on its connection, group
    /// and pool.
    pub(super) fn admit(
        connection: &Arc<UpstreamConnection>,
        group: &Arc<Group>,
        decision: RouteDecision,
        failure_kinds: FailureKinds,
        stats: &Arc<Stats>,
    ) -> Result<Self, Refused> {
        let permits = match connection.admit_stream() {
            Ok(permits) => permits,
            Err(refused) => {
                connection.release_slot();
                return Err(refused);
            }
        };
        connection.streams_total.fetch_add(1, Relaxed);
        group.counters.stream_started();
        stats.incr(|s| &s.upstream_streams_total);
        Ok(Self {
            connection: Arc::clone(connection),
            group: Arc::clone(group),
            decision,
            permits: Mutex::new(permits),
            failure_kinds,
            failure_counted: AtomicBool::new(false),
            started_after_us: AtomicU64::new(0),
            _upstream_active: stats.hold(|s| &s.upstream_streams_active),
            observation: None,
            alternatives: Vec::new(),
        })
    }

    /// The connection the slot is on.
    pub fn connection(&self) -> &Arc<UpstreamConnection> {
        &self.connection
    }

    /// Why the router chose this connection.
    pub fn decision(&self) -> &RouteDecision {
        &self.decision
    }

    /// Where a resume of this stream goes first: the placement's alternatives (connection
    /// ids, best first).
    pub fn alternatives(&self) -> &[u64] {
        &self.alternatives
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
        self.group.counters.observe_latency(latency);
    }

    /// `messages` more complete response messages reached the monitor.
    pub fn delivered(&self, messages: u64) {
        if let Some(observation) = &self.observation {
            observation.delivered(messages);
        }
    }

    /// The response started (headers without the end of the stream) `after` the request was
    /// sent. Nothing is recorded yet (the stream may still fail before it delivers); from now
    /// on the stream's speed is judged on this start, not on its first message.
    pub fn response_started(&self, after: Duration) {
        let micros = u64::try_from(after.as_micros()).unwrap_or(u64::MAX).max(1);
        self.started_after_us.store(micros, Relaxed);
    }

    /// The stream's response started and it is still open at the first-message deadline,
    /// without a message: a quiet stream, and a working one. Counts as a success, slow only if
    /// its start was.
    pub fn quiet_but_working(&self) {
        if let Some(started) = self.started_after() {
            self.record_success(started);
        }
    }

    /// The first response message arrived `after` the request was sent: the stream works
    /// (slow as its start was, when [`Lease::response_started`] noted one).
    pub fn first_message(&self, after: Duration) {
        if let Some(observation) = &self.observation {
            observation.first_message(after);
        }
        self.record_success(self.started_after().unwrap_or(after));
    }

    fn started_after(&self) -> Option<Duration> {
        match self.started_after_us.load(Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    fn record_success(&self, after: Duration) {
        for permit in self.permits.lock().iter_mut() {
            let slow = after > permit.breaker().slow_call_duration();
            permit.record(Outcome::Success { slow });
        }
    }

    /// The stream ended normally (for calls that never sent a response message, this is
    /// their success).
    pub fn finished(&self) {
        self.connection.load.observe_outcome(false);
        for permit in self.permits.lock().iter_mut() {
            permit.record(Outcome::Success { slow: false });
        }
    }

    /// The stream failed on the upstream side. Counts against the connection's and the
    /// endpoint's breakers when the config counts this kind of failure, including failures
    /// of streams that had already worked (a dying endpoint breaks established streams).
    pub fn failed(&self, kind: FailureKind) {
        self.connection.load.observe_outcome(true);
        if let Some(observation) = &self.observation {
            observation.failed();
        }
        if !kind.counted(&self.failure_kinds) || self.failure_counted.swap(true, Relaxed) {
            return;
        }
        self.group.counters.stream_failed();
        for permit in self.permits.lock().iter_mut() {
            if permit.is_recorded() {
                permit.breaker().observe(Outcome::Failure);
            } else {
                permit.record(Outcome::Failure);
            }
        }
    }

    /// Marks the connection unusable for new streams (it failed while opening one).
    pub fn discard_connection(&self) {
        self.connection.mark_closed();
    }

    /// Resolves to `true` when the connection starts draining.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.connection.draining.subscribe()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(observation) = &self.observation {
            observation.ended();
        }
        self.connection.release_slot();
        self.group.released.notify_waiters();
    }
}
