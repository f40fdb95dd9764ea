//! Resumable calls: a monitor's stream that outlives the upstream streams carrying it.
//!
//! For methods configured with `resume = "replay-last"` or `"replay-all"`, the relay works in
//! whole messages in both directions. It keeps what a resume must replay (the monitor's latest
//! request, or all of them up to `replay_buffer_bytes`) and the last response message it
//! delivered. When the upstream stream breaks (reset, connection lost, `UNAVAILABLE`), or its
//! connection starts draining (GOAWAY, operator drain), it opens a new upstream stream on
//! another connection - the pool's breakers and health decide which - sends the replay, after
//! the [`sluice_contract::resume::Resumer`] had a chance to rewrite it (e.g. `from_seq` = last
//! seq + 1), and keeps feeding the same downstream stream. The monitor sees the first upstream's
//! response headers, then messages, then the final status: never the switch.
//!
//! Only whole messages reach the monitor, so a switch never leaves half a message on the
//! downstream stream. An optional dedup window drops response messages seen shortly before the
//! switch. When attempts or time run out, the monitor gets `UNAVAILABLE` with the reason.
//!
//! A [`ResumableCall`] runs the call: it reads the monitor's first request message first on
//! `open_on_request` methods, opens the first attempt, relays on it turn by turn,
//! resumes on a new attempt when one breaks, and finishes the call. One attempt's upstream
//! stream is `attempt`'s, what a resume replays is `replay`'s, and opening the next attempt is
//! `reopen`'s. Like the other relays, this one uses `upstream` and `pump` but never `call` or
//! `share`.

mod attempt;
mod reopen;
mod replay;

use std::future::{Future, poll_fn};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response};
use sluice_config::{MethodConfig, ResumeMode};

use super::answers::record_final_status;
use super::attribution::Attribution;
use super::pump::{PumpError, send_all};
use super::request::{BoundedRequest, request_timed_out};
use super::upstream::{
    CallSetup, End, cut_off_lagging, monitor_blamed, must_end, open_upstream, reply, response_head,
    upstream_failure,
};
use crate::Context;
use crate::grpc::{self, Code, FrameError, PREFIX_LEN, Status};
use crate::pool::{FailureKind, Resume};
use attempt::{
    Attempt, Broken, FinalStatus, Phase, UpstreamEvent, next_event, poll_window_of,
    resumable_status, was_not_processed,
};
use reopen::{ResumeBudget, ResumeState, reopen};
use replay::{Dedup, ReplayBuffer};

/// A method's resume settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResumeOptions {
    mode: ResumeMode,
    attempts: u32,
    timeout: Duration,
    on_unavailable: bool,
    dedup_window: usize,
    replay_buffer_bytes: usize,
}

impl ResumeOptions {
    pub(super) fn from_config(method: &MethodConfig) -> Self {
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

/// What one turn of the relay loop saw.
enum Turn {
    MonitorGone,
    MustEnd(Status),
    /// No whole request message within `server.request_timeout`.
    RequestDue,
    Draining,
    FirstMessageDue,
    Request(Option<Result<Bytes, h2::Error>>),
    /// Flow-control window for the queued request bytes (or the stream failed).
    Window(Result<usize, PumpError>),
    Upstream(Result<UpstreamEvent, h2::Error>),
}

/// How a turn ends the call.
enum Stop {
    /// The monitor left: the upstream stream is reset, and there is no one to answer.
    Cancelled,
    /// The call fails with this status, once the upstream stream is reset.
    Fail(Status),
    /// As `Fail`, by the monitor's fault (see [`End::MonitorFault`]).
    Fault(Status),
    /// The monitor already has its answer (the upstream's final status, or a failure on an
    /// upstream stream that ended by itself).
    Ended(End),
}

/// The monitor side of the call.
struct Downstream {
    respond: SendResponse<Bytes>,
    /// Set once the response headers went out.
    stream: Option<SendStream<Bytes>>,
    /// Who served the call, once an upstream stream was opened.
    attribution: Option<Attribution>,
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
        self.answer(&status);
        End::Failed(status)
    }

    /// Ends the call with `status`, by the monitor's fault.
    fn fault(&mut self, status: Status) -> End {
        self.answer(&status);
        End::MonitorFault(status)
    }

    fn answer(&mut self, status: &Status) {
        match self.stream.as_mut() {
            Some(stream) => {
                let mut trailers = status.to_trailers();
                if let Some(attribution) = &self.attribution {
                    attribution.stamp_trailers(&mut trailers);
                }
                let _ = stream.send_trailers(trailers);
            }
            None => reply(&mut self.respond, status),
        }
    }

    /// `trailers` with who served the call.
    fn stamped(&self, mut trailers: HeaderMap) -> HeaderMap {
        if let Some(attribution) = &self.attribution {
            attribution.stamp_trailers(&mut trailers);
        }
        trailers
    }

    /// The response head for an upstream's, with who serves the call; `ended` when it is a
    /// trailers-only answer.
    fn head(&self, status: http::StatusCode, headers: &HeaderMap, ended: bool) -> Response<()> {
        let mut head = response_head(status, headers);
        if let Some(attribution) = &self.attribution {
            attribution.stamp_response(head.headers_mut(), ended);
        }
        head
    }
}

/// Serves one resumable call to its end.
pub(super) async fn serve(
    ctx: &Arc<Context>,
    setup: CallSetup,
    options: ResumeOptions,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> End {
    let (parts, body) = request.into_parts();
    let mut downstream = Downstream {
        respond,
        stream: None,
        attribution: None,
    };
    let Some(path) = parts.uri.path_and_query().cloned() else {
        return downstream.fail(Status::new(Code::Unimplemented, "request has no path"));
    };
    let call = ResumableCall {
        ctx,
        must_end: Box::pin(must_end(ctx, setup.deadline)),
        // Kept for the life of the call: every resume sends them again.
        headers: grpc::headers::request_headers(&parts.headers, 4),
        path,
        replay: ReplayBuffer::new(&options),
        request_splitter: BoundedRequest::new(ctx, setup.max_message_bytes),
        request_ended: false,
        request_in: false,
        partial: false,
        request_due: Box::pin(tokio::time::sleep(ctx.config.server.request_timeout)),
        dedup: Dedup::new(options.dedup_window),
        last_response: None,
        delivered: 0,
        resumes: 0,
        budget: ResumeBudget::default(),
        setup,
        options,
        body,
        downstream,
    };
    drop(parts);
    call.run().await
}

/// One resumable call: the monitor's side, and what a resume needs to know, across the
/// attempts (upstream streams) that carry it in turn.
struct ResumableCall<'a> {
    ctx: &'a Arc<Context>,
    setup: CallSetup,
    options: ResumeOptions,
    path: PathAndQuery,
    headers: HeaderMap,
    /// The monitor's request stream.
    body: RecvStream,
    downstream: Downstream,
    /// Resolves when the call must end early (deadline, shutdown).
    must_end: Pin<Box<dyn Future<Output = Status> + Send + 'a>>,
    replay: ReplayBuffer,
    request_splitter: BoundedRequest,
    request_ended: bool,
    /// Whether a whole request message arrived (or the request ended); until then the
    /// first-message timer does not run, and the request has `server.request_timeout`.
    request_in: bool,
    /// Whether part of a request message is held: it too must be whole within
    /// `server.request_timeout` of its first bytes.
    partial: bool,
    request_due: Pin<Box<tokio::time::Sleep>>,
    dedup: Dedup,
    /// The payload of the last response message delivered, for the resumer.
    last_response: Option<Bytes>,
    delivered: u64,
    resumes: u32,
    budget: ResumeBudget,
}

impl ResumableCall<'_> {
    /// Runs the call to its end: the first attempt, then relay and resume until it finishes.
    async fn run(mut self) -> End {
        // On `open_on_request` methods the provider sees the call only once its first request
        // message is whole (or the request ended).
        let (first, ended) = if self.setup.open_on_request {
            match self.read_start().await {
                ControlFlow::Continue(start) => start,
                ControlFlow::Break(stop) => return self.answer(stop),
            }
        } else {
            (Vec::new(), false)
        };
        let mut attempt = match self.open().await {
            ControlFlow::Continue(attempt) => attempt,
            ControlFlow::Break(end) => return end,
        };
        self.hand_on(&mut attempt, first, ended);
        loop {
            let broken = match self.relay(&mut attempt).await {
                ControlFlow::Continue(broken) => broken,
                ControlFlow::Break(stop) => return self.finish(attempt, stop),
            };
            attempt = match self.resume(attempt, broken).await {
                ControlFlow::Continue(next) => next,
                ControlFlow::Break(end) => return end,
            };
        }
    }

    /// Reads the monitor's request until a message is whole or the request ended: those
    /// messages, and whether it ended.
    async fn read_start(&mut self) -> ControlFlow<Stop, (Vec<Bytes>, bool)> {
        loop {
            let chunk = tokio::select! {
                biased;
                () = poll_fn(|cx| self.downstream.poll_reset(cx)) => return ControlFlow::Break(Stop::Cancelled),
                status = &mut self.must_end => return ControlFlow::Break(Stop::Fail(status)),
                () = &mut self.request_due => {
                    let timeout = self.ctx.config.server.request_timeout;
                    return ControlFlow::Break(Stop::Fail(request_timed_out(self.ctx, timeout)));
                }
                chunk = self.body.data() => chunk,
            };
            let ended = chunk.is_none();
            let messages = self.take_request(chunk)?;
            if ended || !messages.is_empty() {
                return ControlFlow::Continue((messages, ended));
            }
        }
    }

    /// Ends the call as `stop` says, answering the monitor (no upstream stream is left).
    fn answer(&mut self, stop: Stop) -> End {
        match stop {
            Stop::Ended(end) => end,
            Stop::Cancelled => End::Cancelled,
            Stop::Fail(status) => self.downstream.fail(status),
            Stop::Fault(status) => self.downstream.fault(status),
        }
    }

    /// Opens the first upstream stream.
    async fn open(&mut self) -> ControlFlow<End, Attempt> {
        let opened = tokio::select! {
            opened = Box::pin(open_upstream(self.ctx, self.setup.caller(), &self.path, &self.headers, false, self.setup.deadline, None)) => opened,
            status = &mut self.must_end => Err(status),
            () = poll_fn(|cx| self.downstream.poll_reset(cx)) => return ControlFlow::Break(End::Cancelled),
        };
        match opened {
            Ok(open) => {
                self.downstream.attribution =
                    Some(Attribution::new(self.setup.stream, &open.lease));
                ControlFlow::Continue(Attempt::new(open, &self.setup))
            }
            Err(status) => ControlFlow::Break(self.downstream.fail(status)),
        }
    }

    /// Relays between the monitor and `attempt` until the call ends or the attempt breaks.
    async fn relay(&mut self, attempt: &mut Attempt) -> ControlFlow<Stop, Broken> {
        loop {
            let broken = match self.next_turn(attempt).await {
                Turn::MonitorGone => return ControlFlow::Break(Stop::Cancelled),
                Turn::MustEnd(status) => return ControlFlow::Break(Stop::Fail(status)),
                Turn::RequestDue => {
                    let timeout = self.ctx.config.server.request_timeout;
                    return ControlFlow::Break(Stop::Fail(request_timed_out(self.ctx, timeout)));
                }
                Turn::Draining => {
                    // A peer that stopped answering PINGs likely took its endpoint's other
                    // connections with it: the stream moves to another endpoint.
                    let unresponsive = attempt.lease.connection().is_unresponsive();
                    Some(Broken {
                        failure: None,
                        drained: true,
                        avoid_endpoint: unresponsive,
                        reason: if unresponsive {
                            "its connection stopped answering".to_owned()
                        } else {
                            "its connection is draining".to_owned()
                        },
                    })
                }
                Turn::FirstMessageDue => {
                    attempt.first_message_due();
                    None
                }
                Turn::Request(chunk) => {
                    self.on_request(attempt, chunk)?;
                    None
                }
                Turn::Window(Ok(window)) => {
                    // A failure here shows up on the response side.
                    let _ = attempt.flush(window);
                    None
                }
                Turn::Window(Err(_)) => {
                    // The upstream stopped reading the request (it may have answered already,
                    // or reset the stream): its response side says which.
                    attempt.outbox.clear();
                    attempt.send = None;
                    None
                }
                Turn::Upstream(Err(error)) => Some(Broken {
                    // A stream the server refused, or cut off with a GOAWAY (beyond its last
                    // stream id), was never processed: not a failure of the endpoint. It still
                    // spends the resume budget, so a server refusing everything is not retried
                    // in a loop.
                    failure: (!was_not_processed(&error)).then_some(FailureKind::Reset),
                    drained: false,
                    avoid_endpoint: false,
                    reason: upstream_failure(&error).message,
                }),
                Turn::Upstream(Ok(UpstreamEvent::Head(response))) => {
                    self.on_head(attempt, response)?
                }
                Turn::Upstream(Ok(UpstreamEvent::Data(chunk))) => {
                    self.on_data(attempt, chunk).await?;
                    None
                }
                Turn::Upstream(Ok(UpstreamEvent::Trailers(trailers))) => {
                    Some(self.on_trailers(attempt, trailers)?)
                }
            };
            if let Some(broken) = broken {
                return ControlFlow::Continue(broken);
            }
        }
    }

    /// Waits for the next thing to act on, the monitor leaving and the call's end first.
    async fn next_turn(&mut self, attempt: &mut Attempt) -> Turn {
        tokio::select! {
            biased;
            () = poll_fn(|cx| self.downstream.poll_reset(cx)) => Turn::MonitorGone,
            status = &mut self.must_end => Turn::MustEnd(status),
            _ = attempt.draining.wait_for(|d| *d) => Turn::Draining,
            () = &mut self.request_due, if self.awaiting_request() => Turn::RequestDue,
            () = &mut attempt.first_due, if !attempt.first_checked && self.request_in => Turn::FirstMessageDue,
            // More of the monitor's request only once the last has gone out.
            chunk = self.body.data(), if !self.request_ended && attempt.outbox.is_empty() => Turn::Request(chunk),
            window = poll_window_of(&mut attempt.send, &attempt.outbox), if !attempt.outbox.is_empty() => Turn::Window(window),
            event = next_event(&mut attempt.phase) => Turn::Upstream(event),
        }
    }

    /// More of the monitor's request, or its end: whole messages are kept for replay and
    /// queued on the attempt.
    fn on_request(
        &mut self,
        attempt: &mut Attempt,
        chunk: Option<Result<Bytes, h2::Error>>,
    ) -> ControlFlow<Stop> {
        let ended = chunk.is_none();
        let messages = self.take_request(chunk)?;
        self.hand_on(attempt, messages, ended);
        ControlFlow::Continue(())
    }

    /// Queues whole request messages (and the request's end) on `attempt`; the first of them
    /// starts the first-message timer.
    fn hand_on(&mut self, attempt: &mut Attempt, messages: Vec<Bytes>, ended: bool) {
        if ended || !messages.is_empty() {
            self.request_arrived(attempt);
        }
        attempt.queue(messages, ended);
    }

    /// Takes in more of the monitor's request, or its end, returning the messages it
    /// completed, each kept for replay.
    fn take_request(
        &mut self,
        chunk: Option<Result<Bytes, h2::Error>>,
    ) -> ControlFlow<Stop, Vec<Bytes>> {
        let chunk = match chunk {
            None => {
                self.request_ended = true;
                if let Err(error) = self.request_splitter.finish() {
                    return ControlFlow::Break(Stop::Fault(Status::resource_exhausted(format!(
                        "request rejected: {error}"
                    ))));
                }
                return ControlFlow::Continue(Vec::new());
            }
            // The monitor reset its stream.
            Some(Err(_)) => return ControlFlow::Break(Stop::Cancelled),
            Some(Ok(chunk)) => chunk,
        };
        let len = chunk.len();
        if let Err(status) = self.request_splitter.push(chunk) {
            // A full budget is what every call holds: not this monitor's fault.
            return ControlFlow::Break(Stop::Fail(status));
        }
        let mut messages = Vec::new();
        loop {
            let message = match self.request_splitter.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    return ControlFlow::Break(Stop::Fault(self.rejected("request", error)));
                }
            };
            self.replay.record(&message);
            self.ctx
                .stats
                .add(|s| &s.bytes_to_upstream_total, message.len() as u64);
            messages.push(message);
        }
        self.track_partial();
        let _ = self.body.flow_control().release_capacity(len);
        ControlFlow::Continue(messages)
    }

    /// The attempt's response headers: the monitor gets the first attempt's; a trailers-only
    /// answer ends the call unless its status asks for a resume.
    fn on_head(
        &mut self,
        attempt: &mut Attempt,
        response: Response<RecvStream>,
    ) -> ControlFlow<Stop, Option<Broken>> {
        attempt.lease.observe_response(attempt.sent_at.elapsed());
        let (parts, upstream_body) = response.into_parts();
        if upstream_body.is_end_stream() {
            // Trailers-only: the status is in these headers.
            let monitor = self.setup.monitor.name();
            let recorded =
                match resumable_status(&self.options, &attempt.lease, &parts.headers, &monitor) {
                    FinalStatus::Resume(broken) => return ControlFlow::Continue(Some(broken)),
                    FinalStatus::End { recorded } => recorded,
                };
            let blamed = monitor_blamed(&attempt.lease, &parts.headers);
            if !recorded {
                record_final_status(&attempt.lease, &parts.headers, &monitor);
            }
            if self.downstream.stream.is_some() {
                let mut trailers = grpc::headers::response_headers(&parts.headers);
                // Trailers carry no content-type.
                trailers.remove(http::header::CONTENT_TYPE);
                let trailers = self.downstream.stamped(trailers);
                if let Some(stream) = self.downstream.stream.as_mut() {
                    let _ = stream.send_trailers(trailers);
                }
            } else {
                let head = self.downstream.head(parts.status, &parts.headers, true);
                let _ = self.downstream.respond.send_response(head, true);
            }
            return ControlFlow::Break(Stop::Ended(End::Completed(blamed)));
        }
        if self.downstream.stream.is_none() {
            let head = self.downstream.head(parts.status, &parts.headers, false);
            match self.downstream.respond.send_response(head, false) {
                Ok(stream) => {
                    self.downstream.stream = Some(stream);
                    self.setup.monitor.answered();
                }
                Err(_) => return ControlFlow::Break(Stop::Cancelled),
            }
        }
        if !self.setup.first_message.strict {
            attempt.lease.response_started(attempt.sent_at.elapsed());
        }
        // A resumed stream's headers are not the monitor's business: it already has the first
        // upstream's.
        attempt.phase = Phase::Body(upstream_body);
        ControlFlow::Continue(None)
    }

    /// Response bytes: each whole message goes to the monitor unless it is a duplicate from
    /// before a switch.
    async fn on_data(&mut self, attempt: &mut Attempt, chunk: Bytes) -> ControlFlow<Stop> {
        let len = chunk.len();
        attempt.splitter.push(chunk);
        let Some(stream) = self.downstream.stream.as_mut() else {
            return ControlFlow::Continue(());
        };
        loop {
            let message = match attempt.splitter.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    return ControlFlow::Break(Stop::Fail(
                        self.rejected("upstream response", error),
                    ));
                }
            };
            attempt.saw_first_message();
            if self.dedup.is_duplicate(&message) {
                self.ctx.stats.incr(|s| &s.duplicates_dropped_total);
                continue;
            }
            let payload = message.slice(PREFIX_LEN..);
            let size = message.len() as u64;
            match send_all(stream, message, self.setup.on_full, false).await {
                Ok(()) => {}
                Err(PumpError::Lagging(waited)) => {
                    let status = cut_off_lagging(self.ctx, waited);
                    return ControlFlow::Break(Stop::Fault(status));
                }
                Err(_) => return ControlFlow::Break(Stop::Cancelled),
            }
            self.ctx.stats.add(|s| &s.bytes_to_monitors_total, size);
            self.setup.profile.traffic.record(size, 1);
            attempt.lease.delivered(1);
            self.last_response = Some(payload);
            self.delivered += 1;
            self.budget = ResumeBudget::default();
        }
        if let Phase::Body(body) = &mut attempt.phase {
            let _ = body.flow_control().release_capacity(len);
        }
        ControlFlow::Continue(())
    }

    /// The attempt's trailers: the call's final status, unless it asks for a resume.
    fn on_trailers(
        &mut self,
        attempt: &mut Attempt,
        trailers: Option<HeaderMap>,
    ) -> ControlFlow<Stop, Broken> {
        let trailers = trailers.unwrap_or_default();
        let monitor = self.setup.monitor.name();
        let recorded = match resumable_status(&self.options, &attempt.lease, &trailers, &monitor) {
            FinalStatus::Resume(broken) => return ControlFlow::Continue(broken),
            FinalStatus::End { recorded } => recorded,
        };
        if let Err(error) = attempt.splitter.finish() {
            let status =
                Status::internal(format!("upstream response ended inside a message: {error}"));
            return ControlFlow::Break(Stop::Ended(self.downstream.fail(status)));
        }
        let blamed = monitor_blamed(&attempt.lease, &trailers);
        if !recorded {
            record_final_status(&attempt.lease, &trailers, &monitor);
        }
        let trailers = self
            .downstream
            .stamped(grpc::headers::response_headers(&trailers));
        if let Some(stream) = self.downstream.stream.as_mut() {
            let _ = stream.send_trailers(trailers);
        }
        ControlFlow::Break(Stop::Ended(End::Completed(blamed)))
    }

    /// The status of a message that broke the framing rules or the size limit.
    fn rejected(&self, what: &str, error: FrameError) -> Status {
        self.ctx.stats.incr(|s| &s.oversized_messages_total);
        Status::resource_exhausted(format!("{what} rejected: {error}"))
    }

    /// Whether the monitor owes a request message within `server.request_timeout`: its first
    /// one, unless the upstream already answered (a protocol where the server speaks first),
    /// or the rest of one it started, which Sluice is holding.
    fn awaiting_request(&self) -> bool {
        self.first_request_awaited() || self.partial
    }

    fn first_request_awaited(&self) -> bool {
        !self.request_in && self.downstream.stream.is_none()
    }

    /// Notes whether part of a message is held now; the first bytes of one start its timer
    /// (unless the first request's timer already runs).
    fn track_partial(&mut self) {
        let partial = self.request_splitter.buffered() > 0;
        if partial && !self.partial && !self.first_request_awaited() {
            let timeout = self.ctx.config.server.request_timeout;
            self.request_due
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
        }
        self.partial = partial;
    }

    /// The monitor's request is in: the upstream owes its first message from now.
    fn request_arrived(&mut self, attempt: &mut Attempt) {
        if !self.request_in {
            self.request_in = true;
            attempt
                .first_due
                .as_mut()
                .reset(tokio::time::Instant::now() + self.setup.first_message.timeout);
        }
    }

    /// Gives `attempt` up and resumes the call on a new upstream stream.
    async fn resume(&mut self, attempt: Attempt, broken: Broken) -> ControlFlow<End, Attempt> {
        // A migration, or a break of a stream that ran for a while, starts a fresh resume
        // budget; a stream that keeps breaking at once keeps spending the same one.
        if broken.drained || attempt.sent_at.elapsed() >= self.options.timeout {
            self.budget = ResumeBudget::default();
        }
        let retry = Resume {
            broken: attempt.lease.connection().id,
            alternatives: attempt.lease.alternatives().to_vec(),
            avoid_endpoint: broken
                .avoid_endpoint
                .then(|| Arc::clone(&attempt.lease.connection().endpoint.id)),
        };
        let ctx = self.ctx;
        match broken.failure {
            Some(kind) => {
                attempt.lease.failed(kind);
                ctx.stats.incr(|s| &s.upstream_failures_total);
            }
            None => ctx.stats.incr(|s| &s.migrations_total),
        }
        attempt.abandon(self.ctx);
        if self.replay.overflowed {
            ctx.stats.incr(|s| &s.resume_failures_total);
            return ControlFlow::Break(self.downstream.fail(Status::unavailable(format!(
                "upstream stream broke ({}) and cannot be resumed: the call sent more than \
                 replay_buffer_bytes ({}) of requests",
                broken.reason, self.options.replay_buffer_bytes
            ))));
        }
        tracing::info!(
            connection = retry.broken,
            alternatives = retry.alternatives.len(),
            reason = %broken.reason,
            delivered = self.delivered,
            "resuming the stream on another upstream stream",
        );
        let state = ResumeState {
            replay: &self.replay,
            request_ended: self.request_ended,
            last_response: self.last_response.as_ref(),
            delivered: self.delivered,
            attempt: self.resumes + 1,
            retry,
            reason: &broken.reason,
        };
        let reopened = tokio::select! {
            reopened = Box::pin(reopen(ctx, &self.setup, &self.options, &self.path, &self.headers, state, &mut self.budget)) => reopened,
            status = &mut self.must_end => Err(status),
            () = poll_fn(|cx| self.downstream.poll_reset(cx)) => return ControlFlow::Break(End::Cancelled),
        };
        match reopened {
            Ok(next) => {
                ctx.stats.incr(|s| &s.resumes_total);
                self.resumes += 1;
                if let Some(attribution) = self.downstream.attribution.as_mut() {
                    attribution.resumed_on(&next.lease);
                }
                self.dedup.switched();
                ControlFlow::Continue(next)
            }
            Err(status) => {
                ctx.stats.incr(|s| &s.resume_failures_total);
                tracing::info!(%status, "resume failed");
                ControlFlow::Break(self.downstream.fail(status))
            }
        }
    }

    /// Ends the call as `stop` says. The upstream stream is let go before the monitor hears
    /// the end, so that its slot is free by then.
    fn finish(&mut self, attempt: Attempt, stop: Stop) -> End {
        if !matches!(stop, Stop::Ended(_)) {
            attempt.abandon(self.ctx);
        }
        self.answer(stop)
    }
}
