//! Resumable calls: a monitor's stream that outlives the upstream streams carrying it.
//!
//! For methods configured with `resume = "replay-last"` or `"replay-all"`, the relay works in
//! whole messages in both directions. It keeps what a resume must replay (the monitor's latest
//! request, or all of them up to `replay_buffer_bytes`) and the last response message it
//! delivered. When the upstream stream breaks (reset, connection lost, `UNAVAILABLE`), or its
//! connection starts draining (GOAWAY, operator drain), it opens a new upstream stream on
//! another connection - the pool's breakers and health decide which - sends the replay, after
//! the [`sluice_contract::resume::Resumer`] had a chance to rewrite it (e.g. `from_seq` = last seq + 1),
//! and keeps feeding the same downstream stream. The monitor sees the first upstream's response
//! headers, then messages, then the final status: never the switch.
//!
//! Only whole messages reach the monitor, so a switch never leaves half a message on the
//! downstream stream. An optional dedup window drops response messages seen shortly before the
//! switch. When attempts or time run out, the monitor gets `UNAVAILABLE` with the reason.

use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use sluice_config::{MethodConfig, ResumeMode};
use tokio::sync::watch;

use super::call::{
    CallSetup, End, OpenStream, cut_off_lagging, monitor_failure, must_end, open_upstream,
    record_final_status, reply, status_failure, upstream_failure,
};
use super::pump::{PumpError, poll_window, send_all};
use crate::Context;
use crate::grpc::{self, Code, FrameError, MessageSplitter, PREFIX_LEN, Status};
use crate::pool::{FailureKind, Lease, Resume};
use sluice_contract::resume::{ResumeAnswer, ResumeRequest};

/// A method's resume settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResumeOptions {
    mode: ResumeMode,
    attempts: u32,
    timeout: Duration,
    on_unavailable: bool,
    dedup_window: usize,
    replay_buffer_bytes: usize,
}

impl ResumeOptions {
    pub(crate) fn from_config(method: &MethodConfig) -> Self {
        Self {
            mode: method.resume,
            attempts: method.resume_attempts,
            timeout: method.resume_timeout,
            on_unavailable: method.resume_on_unavailable,
            dedup_window: method.dedup_window,
            replay_buffer_bytes: method.replay_buffer_bytes,
        }
    }
}

/// The request messages a resume replays.
struct ReplayBuffer {
    mode: ResumeMode,
    /// Framed messages (prefix included), oldest first.
    messages: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
    /// More than `limit` bytes were needed: the stream can no longer be resumed faithfully.
    overflowed: bool,
}

impl ReplayBuffer {
    fn new(options: &ResumeOptions) -> Self {
        Self {
            mode: options.mode,
            messages: VecDeque::new(),
            bytes: 0,
            limit: options.replay_buffer_bytes,
            overflowed: false,
        }
    }

    fn record(&mut self, framed: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.mode == ResumeMode::ReplayLast {
            self.messages.clear();
            self.bytes = 0;
        }
        self.bytes += framed.len();
        if self.bytes > self.limit {
            self.overflowed = true;
            self.messages.clear();
            return;
        }
        self.messages.push_back(framed.clone());
    }

    /// Whether any message is compressed (a resumer sees raw protobuf only).
    fn any_compressed(&self) -> bool {
        self.messages.iter().any(|m| m.first() != Some(&0))
    }
}

/// Hashes of recently delivered response messages, to drop what a resumed upstream delivers
/// again. Only the first `window` messages after a switch are checked, and only against what
/// was delivered before it, so a message that legitimately repeats later (a heartbeat, an
/// unchanged snapshot) is never dropped.
struct Dedup {
    window: usize,
    order: VecDeque<u64>,
    seen: HashSet<u64>,
    /// Hashes delivered before the last switch, while checking after it.
    before_switch: HashSet<u64>,
    checks_left: usize,
}

impl Dedup {
    fn new(window: usize) -> Self {
        Self {
            window,
            order: VecDeque::with_capacity(window.min(4096)),
            seen: HashSet::with_capacity(window.min(4096)),
            before_switch: HashSet::new(),
            checks_left: 0,
        }
    }

    /// The upstream stream changed: check the next `window` messages.
    fn switched(&mut self) {
        if self.window > 0 {
            self.before_switch = self.seen.clone();
            self.checks_left = self.window;
        }
    }

    /// Remembers `message`; `true` when it was delivered before the last switch and is among
    /// the first `window` messages after it.
    fn is_duplicate(&mut self, message: &[u8]) -> bool {
        if self.window == 0 {
            return false;
        }
        // SipHash with fixed keys: deterministic within the process, collisions negligible
        // for a window of recent messages.
        let mut hasher = std::hash::DefaultHasher::new();
        message.hash(&mut hasher);
        let hash = hasher.finish();
        if self.checks_left > 0 {
            self.checks_left -= 1;
            let duplicate = self.before_switch.contains(&hash);
            if self.checks_left == 0 {
                self.before_switch = HashSet::new();
            }
            if duplicate {
                return true;
            }
        }
        if self.seen.insert(hash) {
            self.order.push_back(hash);
            if self.order.len() > self.window
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
        false
    }
}

/// Where the current upstream stream's response is.
enum Phase {
    Head(h2::client::ResponseFuture),
    Body(RecvStream),
    Trailers(RecvStream),
    Done,
}

/// One upstream stream carrying the call.
struct Upstream {
    lease: Lease,
    send: Option<SendStream<Bytes>>,
    /// Request bytes waiting for the upstream's flow-control window. The relay never waits
    /// for that window with other work undone: a bidirectional upstream may be waiting for us
    /// to take its responses before it reads more requests.
    outbox: VecDeque<Bytes>,
    /// End the request stream once the outbox is empty.
    end_after_outbox: bool,
    phase: Phase,
    splitter: MessageSplitter,
    sent_at: Instant,
    first_seen: bool,
    first_checked: bool,
    first_due: std::pin::Pin<Box<tokio::time::Sleep>>,
    draining: watch::Receiver<bool>,
}

impl Upstream {
    fn new(open: OpenStream, setup: &CallSetup) -> Self {
        let draining = open.lease.draining();
        Self {
            draining,
            lease: open.lease,
            send: Some(open.send),
            outbox: VecDeque::new(),
            end_after_outbox: false,
            phase: Phase::Head(open.response),
            splitter: MessageSplitter::new(setup.max_message_bytes),
            sent_at: Instant::now(),
            first_seen: false,
            first_checked: false,
            first_due: Box::pin(tokio::time::sleep(setup.first_message_timeout)),
        }
    }

    /// Queues request messages; with `end`, the request stream ends after them.
    fn queue(&mut self, messages: impl IntoIterator<Item = Bytes>, end: bool) {
        self.outbox.extend(messages);
        self.end_after_outbox |= end;
        if self.outbox.is_empty() {
            self.end_request_if_due();
        }
    }

    /// Sends as much of the outbox as `window` allows.
    fn flush(&mut self, mut window: usize) -> Result<(), h2::Error> {
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        while window > 0 {
            let Some(front) = self.outbox.front_mut() else {
                break;
            };
            let piece = front.split_to(window.min(front.len()));
            window -= piece.len();
            if front.is_empty() {
                self.outbox.pop_front();
            }
            let last = self.outbox.is_empty() && self.end_after_outbox;
            send.send_data(piece, last)?;
            if last {
                self.end_after_outbox = false;
            }
        }
        Ok(())
    }

    fn end_request_if_due(&mut self) {
        if self.end_after_outbox
            && let Some(send) = self.send.as_mut()
        {
            // A failure here shows up on the response side.
            let _ = send.send_data(Bytes::new(), true);
            self.end_after_outbox = false;
        }
    }

    /// Stops using this upstream stream: h2 resets it (CANCEL) once every handle is gone.
    fn abandon(mut self) {
        if let Some(send) = self.send.as_mut() {
            send.send_reset(h2::Reason::CANCEL);
        }
    }
}

enum UpstreamEvent {
    Head(Response<RecvStream>),
    Data(Bytes),
    Trailers(Option<HeaderMap>),
}

/// The next thing the upstream stream says; an error means it broke. Cancel-safe: every await
/// is a poll of h2 state.
async fn next_event(phase: &mut Phase) -> Result<UpstreamEvent, h2::Error> {
    loop {
        match phase {
            Phase::Head(response) => return response.await.map(UpstreamEvent::Head),
            Phase::Body(body) => match body.data().await {
                Some(chunk) => return chunk.map(UpstreamEvent::Data),
                None => {
                    if let Phase::Body(body) = std::mem::replace(phase, Phase::Done) {
                        *phase = Phase::Trailers(body);
                    }
                }
            },
            Phase::Trailers(body) => return body.trailers().await.map(UpstreamEvent::Trailers),
            Phase::Done => return std::future::pending().await,
        }
    }
}

/// Why the current upstream stream is given up.
struct Break {
    /// The breaker failure, or `None` when the upstream never processed the stream or is going
    /// away on purpose (a migration).
    failure: Option<FailureKind>,
    /// Its connection is draining: the stream moves, and the move starts a fresh budget.
    drained: bool,
    reason: String,
}

/// What one turn of the relay loop saw.
enum Turn {
    MonitorGone,
    MustEnd(Status),
    Draining,
    FirstMessageDue,
    Request(Option<Result<Bytes, h2::Error>>),
    /// Flow-control window for the queued request bytes (or the stream failed).
    Window(Result<usize, PumpError>),
    Upstream(Result<UpstreamEvent, h2::Error>),
}

/// The monitor side of the call.
struct Downstream {
    respond: SendResponse<Bytes>,
    /// Set once the response headers went out.
    stream: Option<SendStream<Bytes>>,
}

impl Downstream {
    fn poll_reset(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let reset = match self.stream.as_mut() {
            Some(stream) => stream.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        reset.map(|_| ())
    }

    /// Ends the call with `status`.
    fn fail(&mut self, status: Status) -> End {
        match self.stream.as_mut() {
            Some(stream) => {
                let _ = stream.send_trailers(status.to_trailers());
            }
            None => reply(&mut self.respond, &status),
        }
        End::Failed(status)
    }
}

/// Serves one resumable call to its end.
pub(crate) async fn serve(
    ctx: &Arc<Context>,
    setup: CallSetup,
    options: ResumeOptions,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> End {
    let (parts, mut body) = request.into_parts();
    let mut downstream = Downstream {
        respond,
        stream: None,
    };
    let Some(path) = parts.uri.path_and_query().cloned() else {
        return downstream.fail(Status::new(Code::Unimplemented, "request has no path"));
    };
    // Kept for the life of the call: every resume sends them again.
    let headers = grpc::headers::request_headers(&parts.headers, 4);
    drop(parts);
    let must_end = must_end(ctx, setup.deadline);
    tokio::pin!(must_end);

    let opened = tokio::select! {
        opened = Box::pin(open_upstream(ctx, &setup.profile, &path, &headers, false, setup.deadline, None)) => opened,
        status = &mut must_end => Err(status),
        () = poll_fn(|cx| downstream.poll_reset(cx)) => return End::Cancelled,
    };
    let mut upstream = match opened {
        Ok(open) => Upstream::new(open, &setup),
        Err(status) => return downstream.fail(status),
    };

    let mut replay = ReplayBuffer::new(&options);
    let mut request_splitter = MessageSplitter::new(setup.max_message_bytes);
    let mut request_ended = false;
    let mut dedup = Dedup::new(options.dedup_window);
    let mut last_response: Option<Bytes> = None;
    let mut delivered: u64 = 0;
    let mut resumes: u32 = 0;
    let mut budget = ResumeBudget::default();

    loop {
        let turn = tokio::select! {
            biased;
            () = poll_fn(|cx| downstream.poll_reset(cx)) => Turn::MonitorGone,
            status = &mut must_end => Turn::MustEnd(status),
            _ = upstream.draining.wait_for(|d| *d) => Turn::Draining,
            () = &mut upstream.first_due, if !upstream.first_checked => Turn::FirstMessageDue,
            // More of the monitor's request only once the last has gone out.
            chunk = body.data(), if !request_ended && upstream.outbox.is_empty() => Turn::Request(chunk),
            window = poll_window_of(&mut upstream.send, &upstream.outbox), if !upstream.outbox.is_empty() => Turn::Window(window),
            event = next_event(&mut upstream.phase) => Turn::Upstream(event),
        };
        let broken = match turn {
            Turn::MonitorGone => {
                upstream.abandon();
                return End::Cancelled;
            }
            Turn::MustEnd(status) => {
                upstream.abandon();
                return downstream.fail(status);
            }
            Turn::Draining => Break {
                failure: None,
                drained: true,
                reason: "its connection is draining".to_owned(),
            },
            Turn::FirstMessageDue => {
                upstream.first_checked = true;
                if !upstream.first_seen {
                    upstream.lease.failed(FailureKind::NoFirstMessage);
                }
                continue;
            }
            Turn::Request(None) => {
                request_ended = true;
                if let Err(error) = request_splitter.finish() {
                    upstream.abandon();
                    return downstream.fail(Status::resource_exhausted(format!(
                        "request rejected: {error}"
                    )));
                }
                upstream.queue([], true);
                continue;
            }
            Turn::Window(Ok(window)) => {
                // A failure here shows up on the response side.
                let _ = upstream.flush(window);
                continue;
            }
            Turn::Window(Err(_)) => {
                // The upstream stopped reading the request (it may have answered already, or
                // reset the stream): its response side says which.
                upstream.outbox.clear();
                upstream.send = None;
                continue;
            }
            Turn::Request(Some(Err(_))) => {
                // The monitor reset its stream.
                upstream.abandon();
                return End::Cancelled;
            }
            Turn::Request(Some(Ok(chunk))) => {
                let len = chunk.len();
                request_splitter.push(chunk);
                loop {
                    let message = match request_splitter.next_message() {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        Err(error) => {
                            return reject(ctx, upstream, &mut downstream, "request", error);
                        }
                    };
                    replay.record(&message);
                    ctx.stats
                        .add(|s| &s.bytes_to_upstream_total, message.len() as u64);
                    upstream.queue([message], false);
                }
                let _ = body.flow_control().release_capacity(len);
                continue;
            }
            Turn::Upstream(Err(error)) => Break {
                // A stream the server refused, or cut off with a GOAWAY (beyond its last
                // stream id), was never processed: not a failure of the endpoint. It still
                // spends the resume budget, so a server refusing everything is not retried in
                // a loop.
                failure: (!was_not_processed(&error)).then_some(FailureKind::Reset),
                drained: false,
                reason: upstream_failure(&error).message,
            },
            Turn::Upstream(Ok(UpstreamEvent::Head(response))) => {
                upstream.lease.observe_response(upstream.sent_at.elapsed());
                let (parts, upstream_body) = response.into_parts();
                if upstream_body.is_end_stream() {
                    // Trailers-only: the status is in these headers.
                    if let Some(broken) = resumable_status(&options, &parts.headers) {
                        broken
                    } else {
                        record_final_status(&upstream.lease, &parts.headers);
                        let failed = monitor_failure(&parts.headers);
                        let mut trailers = grpc::headers::response_headers(&parts.headers);
                        return match downstream.stream.as_mut() {
                            Some(stream) => {
                                // Trailers carry no content-type.
                                trailers.remove(http::header::CONTENT_TYPE);
                                let _ = stream.send_trailers(trailers);
                                End::Completed(failed)
                            }
                            None => {
                                let mut head = Response::new(());
                                *head.status_mut() = parts.status;
                                *head.headers_mut() = trailers;
                                let _ = downstream.respond.send_response(head, true);
                                End::Completed(failed)
                            }
                        };
                    }
                } else {
                    if downstream.stream.is_none() {
                        let mut head = Response::new(());
                        *head.status_mut() = parts.status;
                        *head.headers_mut() = grpc::headers::response_headers(&parts.headers);
                        match downstream.respond.send_response(head, false) {
                            Ok(stream) => {
                                downstream.stream = Some(stream);
                                setup.monitor.answered();
                            }
                            Err(_) => {
                                upstream.abandon();
                                return End::Cancelled;
                            }
                        }
                    }
                    // A resumed stream's headers are not the monitor's business: it already
                    // has the first upstream's.
                    upstream.phase = Phase::Body(upstream_body);
                    continue;
                }
            }
            Turn::Upstream(Ok(UpstreamEvent::Data(chunk))) => {
                let len = chunk.len();
                upstream.splitter.push(chunk);
                let Some(stream) = downstream.stream.as_mut() else {
                    continue;
                };
                loop {
                    let message = match upstream.splitter.next_message() {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        Err(error) => {
                            return reject(
                                ctx,
                                upstream,
                                &mut downstream,
                                "upstream response",
                                error,
                            );
                        }
                    };
                    if !upstream.first_seen {
                        upstream.first_seen = true;
                        upstream.lease.first_message(upstream.sent_at.elapsed());
                    }
                    if dedup.is_duplicate(&message) {
                        ctx.stats.incr(|s| &s.duplicates_dropped_total);
                        continue;
                    }
                    let payload = message.slice(PREFIX_LEN..);
                    let size = message.len() as u64;
                    match send_all(stream, message, setup.on_full, false).await {
                        Ok(()) => {}
                        Err(PumpError::Lagging(waited)) => {
                            upstream.abandon();
                            let status = cut_off_lagging(ctx, waited);
                            return downstream.fail(status);
                        }
                        Err(_) => {
                            upstream.abandon();
                            return End::Cancelled;
                        }
                    }
                    ctx.stats.add(|s| &s.bytes_to_monitors_total, size);
                    setup.profile.traffic.record(size, 1);
                    upstream.lease.delivered(1);
                    last_response = Some(payload);
                    delivered += 1;
                    budget = ResumeBudget::default();
                }
                if let Phase::Body(body) = &mut upstream.phase {
                    let _ = body.flow_control().release_capacity(len);
                }
                continue;
            }
            Turn::Upstream(Ok(UpstreamEvent::Trailers(trailers))) => {
                let trailers = trailers.unwrap_or_default();
                if let Some(broken) = resumable_status(&options, &trailers) {
                    broken
                } else {
                    if let Err(error) = upstream.splitter.finish() {
                        return downstream.fail(Status::internal(format!(
                            "upstream response ended inside a message: {error}"
                        )));
                    }
                    record_final_status(&upstream.lease, &trailers);
                    if let Some(stream) = downstream.stream.as_mut() {
                        let _ = stream.send_trailers(grpc::headers::response_headers(&trailers));
                    }
                    return End::Completed(monitor_failure(&trailers));
                }
            }
        };

        // The upstream stream is gone or going: resume the call on another one. A migration,
        // or a break of a stream that ran for a while, starts a fresh resume budget; a stream
        // that keeps breaking at once keeps spending the same one.
        if broken.drained || upstream.sent_at.elapsed() >= options.timeout {
            budget = ResumeBudget::default();
        }
        let retry = Resume {
            broken: upstream.lease.connection().id,
            alternatives: upstream.lease.alternatives().to_vec(),
        };
        match broken.failure {
            Some(kind) => {
                upstream.lease.failed(kind);
                ctx.stats.incr(|s| &s.upstream_failures_total);
            }
            None => ctx.stats.incr(|s| &s.migrations_total),
        }
        upstream.abandon();
        if replay.overflowed {
            ctx.stats.incr(|s| &s.resume_failures_total);
            return downstream.fail(Status::unavailable(format!(
                "upstream stream broke ({}) and cannot be resumed: the call sent more than \
                 replay_buffer_bytes ({}) of requests",
                broken.reason, options.replay_buffer_bytes
            )));
        }
        tracing::info!(
            connection = retry.broken,
            alternatives = retry.alternatives.len(),
            reason = %broken.reason,
            delivered,
            "resuming the stream on another upstream stream",
        );
        let state = ResumeState {
            replay: &replay,
            request_ended,
            last_response: last_response.as_ref(),
            delivered,
            attempt: resumes + 1,
            retry,
            reason: &broken.reason,
        };
        let reopened = tokio::select! {
            reopened = Box::pin(reopen(ctx, &setup, &options, &path, &headers, state, &mut budget)) => reopened,
            status = &mut must_end => Err(status),
            () = poll_fn(|cx| downstream.poll_reset(cx)) => return End::Cancelled,
        };
        match reopened {
            Ok(next) => {
                ctx.stats.incr(|s| &s.resumes_total);
                resumes += 1;
                dedup.switched();
                upstream = next;
            }
            Err(status) => {
                ctx.stats.incr(|s| &s.resume_failures_total);
                tracing::info!(%status, "resume failed");
                return downstream.fail(status);
            }
        }
    }
}

/// Ends the call over a message that broke the framing rules or the size limit.
fn reject(
    ctx: &Context,
    upstream: Upstream,
    downstream: &mut Downstream,
    what: &str,
    error: FrameError,
) -> End {
    ctx.stats.incr(|s| &s.oversized_messages_total);
    upstream.abandon();
    downstream.fail(Status::resource_exhausted(format!(
        "{what} rejected: {error}"
    )))
}

/// Whether the server never processed the stream: refused it, or cut it off with a GOAWAY.
fn was_not_processed(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote())
}

/// A final status that means "try elsewhere" for this method.
fn resumable_status(options: &ResumeOptions, headers: &HeaderMap) -> Option<Break> {
    let unavailable = status_failure(headers) == Some(FailureKind::Unavailable);
    (unavailable && options.on_unavailable).then(|| Break {
        failure: Some(FailureKind::Unavailable),
        drained: false,
        reason: format!(
            "upstream answered UNAVAILABLE: {}",
            headers
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default()
        ),
    })
}

/// What a resume needs to know about the call so far.
struct ResumeState<'a> {
    replay: &'a ReplayBuffer,
    request_ended: bool,
    last_response: Option<&'a Bytes>,
    delivered: u64,
    attempt: u32,
    /// The broken connection and its placement's alternatives.
    retry: Resume,
    reason: &'a str,
}

/// Upstream streams opened and time spent resuming since the monitor last received a message
/// (or since a migration, or a break of a long-lived upstream stream). A stream that keeps
/// breaking before it delivers anything runs out of budget, however often it reopens.
#[derive(Debug, Default)]
struct ResumeBudget {
    attempts: u32,
    since: Option<Instant>,
}

/// Opens a new upstream stream for the call with the replay queued on it, within the method's
/// resume attempts (upstream streams opened) and time. While no endpoint can take it (backing
/// off, breakers open, queues full) it waits and tries again, until the time runs out.
async fn reopen(
    ctx: &Arc<Context>,
    setup: &CallSetup,
    options: &ResumeOptions,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    state: ResumeState<'_>,
    budget: &mut ResumeBudget,
) -> Result<Upstream, Status> {
    let started = *budget.since.get_or_insert_with(Instant::now);
    let messages = replay_messages(ctx, setup, &state);
    let mut last_error = state.reason.to_owned();
    let mut refusals: u32 = 0;
    if budget.attempts > 0 {
        // The last resumed stream broke before delivering anything: do not hammer.
        tokio::time::sleep(
            resume_pause(budget.attempts).min(options.timeout.saturating_sub(started.elapsed())),
        )
        .await;
    }
    while budget.attempts < options.attempts {
        let Some(remaining) = options.timeout.checked_sub(started.elapsed()) else {
            break;
        };
        let opened = tokio::time::timeout(
            remaining,
            open_upstream(
                ctx,
                &setup.profile,
                path,
                headers,
                false,
                setup.deadline,
                Some(&state.retry),
            ),
        )
        .await;
        match opened {
            Ok(Ok(open)) => {
                budget.attempts += 1;
                let mut upstream = Upstream::new(open, setup);
                upstream.queue(messages, state.request_ended);
                return Ok(upstream);
            }
            Ok(Err(status)) => last_error = status.message,
            Err(_) => break,
        }
        // Nothing could take the stream now. Wait a little (growing, with jitter, so that many
        // streams resuming at once spread out) for back-offs and open breakers to pass.
        refusals += 1;
        tokio::time::sleep(
            resume_pause(refusals).min(options.timeout.saturating_sub(started.elapsed())),
        )
        .await;
    }
    Err(Status::unavailable(format!(
        "upstream stream broke ({}) and could not be resumed within {} attempts and {:?}: {last_error}",
        state.reason, options.attempts, options.timeout
    )))
}

/// The pause after the `n`th fruitless try: 40 ms doubling to 640 ms, with jitter so that many
/// streams resuming at once spread out.
fn resume_pause(n: u32) -> Duration {
    Duration::from_millis(20 * (1 << n.clamp(1, 5))).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The framed request messages to send on the new upstream stream: the replay, rewritten by
/// the resumer when one is loaded.
fn replay_messages(ctx: &Context, setup: &CallSetup, state: &ResumeState<'_>) -> Vec<Bytes> {
    let recorded: Vec<Bytes> = state.replay.messages.iter().cloned().collect();
    if state.replay.any_compressed() {
        return recorded;
    }
    let payloads: Vec<Bytes> = recorded.iter().map(|m| m.slice(PREFIX_LEN..)).collect();
    let request = ResumeRequest {
        monitor: &setup.profile,
        method: &setup.path,
        requests: &payloads,
        last_response: state.last_response,
        responses_delivered: state.delivered,
        attempt: state.attempt,
    };
    match ctx.resumer.resume(&request) {
        ResumeAnswer::Replay(rewritten) => rewritten.iter().map(|p| frame(p)).collect(),
        ResumeAnswer::Unchanged => recorded,
        ResumeAnswer::Failed(reason) => {
            tracing::warn!(%reason, "resumer failed; replaying the requests unchanged");
            recorded
        }
    }
}

/// Prefixes a payload as an uncompressed gRPC message.
fn frame(payload: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    framed.put_slice(payload);
    framed.freeze()
}

/// Waits for flow-control window for the upstream's queued request bytes.
async fn poll_window_of(
    send: &mut Option<SendStream<Bytes>>,
    outbox: &VecDeque<Bytes>,
) -> Result<usize, PumpError> {
    match send.as_mut() {
        Some(send) => {
            send.reserve_capacity(outbox.iter().map(Bytes::len).sum());
            poll_fn(|cx| poll_window(send, cx)).await
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mode: ResumeMode, limit: usize) -> ResumeOptions {
        ResumeOptions {
            mode,
            attempts: 3,
            timeout: Duration::from_secs(1),
            on_unavailable: true,
            dedup_window: 0,
            replay_buffer_bytes: limit,
        }
    }

    #[test]
    fn replay_last_keeps_one_message_and_replay_all_keeps_them_up_to_the_limit() {
        let mut last = ReplayBuffer::new(&options(ResumeMode::ReplayLast, 1024));
        last.record(&frame(b"a"));
        last.record(&frame(b"b"));
        assert_eq!(last.messages.len(), 1);
        assert_eq!(&last.messages[0][PREFIX_LEN..], b"b");

        let mut all = ReplayBuffer::new(&options(ResumeMode::ReplayAll, 14));
        all.record(&frame(b"aa"));
        all.record(&frame(b"bb"));
        assert_eq!(all.messages.len(), 2);
        assert!(!all.overflowed);
        all.record(&frame(b"cc"));
        assert!(all.overflowed, "21 bytes exceed the 14-byte buffer");
        assert!(all.messages.is_empty());
    }

    #[test]
    fn dedup_checks_only_the_first_messages_after_a_switch_against_earlier_ones() {
        let mut dedup = Dedup::new(2);
        assert!(!dedup.is_duplicate(b"x"));
        assert!(!dedup.is_duplicate(b"x"), "no check before a switch");
        dedup.switched();
        assert!(dedup.is_duplicate(b"x"), "delivered before the switch");
        assert!(!dedup.is_duplicate(b"y"));
        assert!(
            !dedup.is_duplicate(b"x"),
            "only the first 2 messages after a switch are checked"
        );
        dedup.switched();
        assert!(!dedup.is_duplicate(b"z"));
        assert!(
            !dedup.is_duplicate(b"z"),
            "repeats after the switch are not duplicates of what came before"
        );
        let mut off = Dedup::new(0);
        off.is_duplicate(b"x");
        off.switched();
        assert!(!off.is_duplicate(b"x"));
    }
}
