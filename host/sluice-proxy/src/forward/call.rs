//! One proxied call, from the monitor's HEADERS to its trailers.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use tracing::Instrument;

use super::pump::{self, Ending, OnFull, PumpError};
use crate::Context;
use crate::breaker::{Outcome, Permit};
use crate::grpc::{self, Code, MessageScanner, Status};
use crate::pool::{FailureKind, Lease, Resume};
use crate::route::MonitorProfile;

/// Attempts to open an upstream stream before giving up (a connection can close between the
/// slot being reserved and the stream being opened, e.g. on GOAWAY).
const OPEN_ATTEMPTS: usize = 3;

/// What admission decided about a call.
pub(crate) struct CallSetup {
    pub profile: MonitorProfile,
    pub path: Arc<str>,
    pub deadline: Option<tokio::time::Instant>,
    pub max_message_bytes: usize,
    pub on_full: OnFull,
    pub share: Option<super::share::ShareOptions>,
    pub resume: Option<super::resumable::ResumeOptions>,
    /// The monitor breaker's leave for this call.
    pub monitor: Arc<MonitorPermit>,
    /// How long the first response message may take before the stream counts as failed.
    pub first_message_timeout: std::time::Duration,
}

/// Serves one call from a monitor to its end.
pub(crate) async fn serve(
    ctx: Arc<Context>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    ctx.stats.incr(|s| &s.downstream_streams_total);
    let _active = ctx.stats.hold(|s| &s.downstream_streams_active);
    let setup = match admit(&ctx, &request) {
        Ok(setup) => setup,
        Err(response) => {
            let _ = respond.send_response(response, true);
            return;
        }
    };
    let monitor = Arc::clone(&setup.monitor);
    let span = tracing::debug_span!(
        "stream",
        monitor = %setup.profile.id,
        class = %setup.profile.class,
        method = %setup.path,
    );
    async move {
        // The opt-in paths are boxed so that the plain path's future, which every call
        // builds and moves, stays small.
        let end = if setup.share.is_some() {
            Box::pin(super::share::serve(ctx, setup, request, respond)).await
        } else if let Some(options) = setup.resume {
            Box::pin(super::resumable::serve(
                &ctx, setup, options, request, respond,
            ))
            .await
        } else {
            proxy(&ctx, setup, request, respond).await
        };
        monitor.ended(&end);
    }
    .instrument(span)
    .await
}

/// The monitor breaker's leave for one call. A call whose response has started counts as a
/// success at once, so that a long-lived stream does not hold a half-open breaker's probe for
/// its whole life; if it fails later, the failure counts too. Statuses that say the service
/// was not there for the monitor (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`) are failures;
/// a monitor's own cancellation counts for nothing.
pub(crate) struct MonitorPermit {
    permit: parking_lot::Mutex<Permit>,
    /// Counts the call among the monitor's open calls while it lives.
    _call: crate::pool::MonitorCall,
}

impl MonitorPermit {
    /// The response started reaching the monitor.
    pub(crate) fn answered(&self) {
        self.permit.lock().record(Outcome::Success { slow: false });
    }

    fn ended(&self, end: &End) {
        let failed = match end {
            End::Completed(failed) => *failed,
            End::Cancelled => return,
            End::Failed(status) => is_monitor_failure(status.code),
        };
        let mut permit = self.permit.lock();
        if !failed {
            permit.record(Outcome::Success { slow: false });
        } else if permit.is_recorded() {
            permit.breaker().observe(Outcome::Failure);
        } else {
            permit.record(Outcome::Failure);
        }
    }
}

fn is_monitor_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal
    )
}

/// Whether a final upstream status counts against the monitor's breaker (the codes of
/// [`is_monitor_failure`]: 14, 4, 13).
pub(crate) fn monitor_failure(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(http::HeaderValue::as_bytes),
        Some(b"14" | b"4" | b"13")
    )
}

/// Checks the call is gRPC and the monitor is allowed, and gathers its options.
fn admit(ctx: &Context, request: &Request<RecvStream>) -> Result<CallSetup, Response<()>> {
    if request.method() != http::Method::POST {
        return Err(Status::new(
            Code::Unimplemented,
            "only gRPC calls (HTTP/2 POST) are proxied",
        )
        .to_response());
    }
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        let mut response =
            Status::new(Code::Unknown, "content-type must be application/grpc").to_response();
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Err(response);
    }
    let path = request.uri().path();
    let profile = ctx.monitors.identify(request.headers()).map_err(|status| {
        ctx.stats.incr(|s| &s.unauthenticated_total);
        tracing::debug!(method = path, reason = %status.message, "monitor refused");
        status.to_response()
    })?;
    let (permit, call) = ctx.pool.admit_monitor(&profile).map_err(|status| {
        ctx.stats.incr(|s| &s.breaker_rejected_total);
        tracing::debug!(monitor = %profile.id, %status, "monitor breaker refused the call");
        status.to_response()
    })?;
    let method = ctx.config.method(path);
    let class = ctx.config.classes.get(profile.class);
    let on_full = match class.lag_policy {
        sluice_config::LagPolicy::Block => OnFull::Wait,
        sluice_config::LagPolicy::Disconnect => OnFull::GiveUpAfter(class.lag_timeout),
    };
    let deadline = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| grpc::timeout::parse(v.as_bytes()))
        .map(|timeout| tokio::time::Instant::now() + timeout);
    Ok(CallSetup {
        profile,
        path: Arc::from(path),
        deadline,
        max_message_bytes: method
            .and_then(|m| m.max_message_bytes)
            .unwrap_or(ctx.config.server.max_message_bytes),
        on_full,
        share: method
            .filter(|m| m.share)
            .map(super::share::ShareOptions::from_config),
        resume: method
            .filter(|m| m.resume.resumes())
            .map(super::resumable::ResumeOptions::from_config),
        first_message_timeout: ctx.config.breakers.first_message_timeout,
        monitor: Arc::new(MonitorPermit {
            permit: parking_lot::Mutex::new(permit),
            _call: call,
        }),
    })
}

/// Resolves when a call must end early: at its deadline, or when Sluice stops and the shutdown
/// grace has run out. Yields the status the monitor gets.
pub(crate) async fn must_end(ctx: &Context, deadline: Option<tokio::time::Instant>) -> Status {
    let mut terminating = ctx.terminate.subscribe();
    let deadline_reached = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline_reached => {
            ctx.stats.incr(|s| &s.deadline_exceeded_total);
            Status::new(Code::DeadlineExceeded, "deadline exceeded")
        }
        _ = terminating.wait_for(|stop| *stop) => Status::unavailable("sluice is shutting down"),
    }
}

/// Counts a monitor cut off for refusing data for `waited`, and gives the status it gets.
pub(crate) fn cut_off_lagging(ctx: &Context, waited: std::time::Duration) -> Status {
    ctx.stats.incr(|s| &s.lagging_disconnects_total);
    Status::resource_exhausted(format!(
        "lagging: the monitor accepted no data for {waited:?}"
    ))
}

/// The status a monitor gets when its upstream stream failed.
pub(crate) fn upstream_failure(error: &h2::Error) -> Status {
    if let Some(reason) = error.reason() {
        if error.is_go_away() {
            return Status::unavailable(format!("upstream connection closed (GOAWAY {reason:?})"));
        }
        let code = match reason {
            Reason::REFUSED_STREAM => Code::Unavailable,
            Reason::CANCEL => Code::Cancelled,
            Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        };
        return Status::new(code, format!("upstream reset the stream ({reason:?})"));
    }
    Status::unavailable(format!("upstream connection lost: {error}"))
}

/// The upstream request: the monitor's headers (minus hop-by-hop and Sluice's own), the
/// endpoint's injected metadata, and the remaining deadline.
fn upstream_request(
    lease: &Lease,
    path: &http::uri::PathAndQuery,
    mut headers: HeaderMap,
    deadline: Option<tokio::time::Instant>,
) -> Result<Request<()>, Status> {
    let endpoint = &lease.connection().endpoint;
    let uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path.clone())
        .build()
        .map_err(|e| Status::internal(format!("cannot build upstream URI: {e}")))?;
    for (name, value) in &endpoint.metadata {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        headers.insert("grpc-timeout", grpc::timeout::encode(remaining));
    }
    let mut request = Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    Ok(request)
}

/// An upstream stream that has been opened.
pub(crate) struct OpenStream {
    pub lease: Lease,
    pub response: h2::client::ResponseFuture,
    pub send: SendStream<Bytes>,
}

/// Reserves a slot and opens the upstream stream, retrying on connections that closed under us.
pub(crate) async fn open_upstream(
    ctx: &Context,
    profile: &MonitorProfile,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    end_of_stream: bool,
    deadline: Option<tokio::time::Instant>,
    resume: Option<&Resume>,
) -> Result<OpenStream, Status> {
    let mut last_error = String::new();
    let mut attempts = 0;
    // Connections found closed (e.g. after GOAWAY) do not use up attempts: each is marked and
    // never chosen again. The overall bound covers an upstream that closes every connection.
    for _ in 0..OPEN_ATTEMPTS * 8 {
        if attempts == OPEN_ATTEMPTS {
            break;
        }
        // One span per placement decision, inside the stream's span; the router's own spans
        // (a plugin call) nest in it.
        let decision = tracing::debug_span!("decision", attempt = attempts);
        let lease = ctx
            .pool
            .acquire(profile, path.path(), resume)
            .instrument(decision.clone())
            .await?;
        if let Some(bucket) = &lease.connection().endpoint.rate_limit {
            bucket.acquire().await.map_err(|limited| {
                ctx.stats.incr(|s| &s.rate_limited_total);
                Status::resource_exhausted(format!(
                    "endpoint {}: {limited}",
                    lease.connection().endpoint.id
                ))
            })?;
        }
        decision.in_scope(|| {
            tracing::debug!(
                connection = lease.connection().id,
                endpoint = %lease.connection().endpoint.id,
                confidence = lease.decision().confidence,
                reason = %lease.decision().reason,
                "routed",
            );
        });
        let mut send_request = match lease.ready().await {
            Ok(send_request) => send_request,
            Err(error) => {
                last_error = error.to_string();
                if !error.is_go_away() {
                    attempts += 1;
                }
                continue;
            }
        };
        let request = upstream_request(&lease, path, headers.clone(), deadline)?;
        match send_request.send_request(request, end_of_stream) {
            Ok((response, send)) => {
                return Ok(OpenStream {
                    lease,
                    response,
                    send,
                });
            }
            Err(error) => {
                lease.discard_connection();
                last_error = error.to_string();
                attempts += 1;
            }
        }
    }
    Err(Status::unavailable(format!(
        "could not open an upstream stream: {last_error}"
    )))
}

/// How a relayed call ended, for logs and counters.
pub(crate) enum End {
    /// The upstream's final status reached the monitor; `true` when that status counts against
    /// the monitor's breaker (see [`monitor_failure`]).
    Completed(bool),
    Cancelled,
    Failed(Status),
}

/// Forwards the request body to the upstream and ends it the way the monitor ended it.
async fn forward_request(
    mut body: RecvStream,
    mut upstream: SendStream<Bytes>,
    mut scanner: MessageScanner,
    ctx: Arc<Context>,
) -> Result<(), PumpError> {
    let counter = &ctx.stats.bytes_to_upstream_total;
    let result = pump::pump(
        &mut body,
        &mut upstream,
        &mut scanner,
        OnFull::Wait,
        counter,
        None,
        None,
    )
    .await;
    match result {
        Ok(Ending::Trailers(trailers)) => upstream
            .send_trailers(grpc::headers::request_headers(&trailers, 0))
            .map_err(PumpError::Sink),
        Ok(Ending::Closed) => Ok(()),
        Err(error) => {
            // The monitor went away or sent garbage: the upstream must not wait for more.
            upstream.send_reset(Reason::CANCEL);
            Err(error)
        }
    }
}

/// Sends a status to a monitor whose response headers were not sent yet.
pub(crate) fn reply(respond: &mut SendResponse<Bytes>, status: &Status) {
    let _ = respond.send_response(status.to_response(), true);
}

async fn proxy(
    ctx: &Arc<Context>,
    setup: CallSetup,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> End {
    let (parts, body) = request.into_parts();
    let Some(path) = parts.uri.path_and_query().cloned() else {
        let status = Status::new(Code::Unimplemented, "request has no path");
        reply(&mut respond, &status);
        return End::Failed(status);
    };
    let headers = grpc::headers::request_headers(&parts.headers, 4);
    let opened = tokio::select! {
        // Boxed: opening is short, and keeping its state out of the call's future keeps every
        // long-lived stream's task small.
        opened = Box::pin(open_upstream(ctx, &setup.profile, &path, &headers, body.is_end_stream(), setup.deadline, None)) => opened,
        status = must_end(ctx, setup.deadline) => Err(status),
        _ = poll_fn(|cx| respond.poll_reset(cx)) => {
            ctx.stats.incr(|s| &s.cancelled_total);
            return End::Cancelled;
        }
    };
    let open = match opened {
        Ok(open) => open,
        Err(status) => {
            tracing::debug!(%status, "call refused");
            reply(&mut respond, &status);
            return End::Failed(status);
        }
    };
    // Long-lived streams must not keep their request headers alive.
    drop((parts, path, headers));
    let end = relay(ctx, &setup, body, respond, open).await;
    match &end {
        End::Completed(_) => {}
        End::Cancelled => {
            ctx.stats.incr(|s| &s.cancelled_total);
            tracing::debug!("cancelled by the monitor");
        }
        End::Failed(status) => tracing::debug!(%status, "call failed"),
    }
    end
}

/// The breaker failure a final upstream status stands for, if any.
pub(crate) fn status_failure(headers: &HeaderMap) -> Option<FailureKind> {
    match headers.get("grpc-status").map(http::HeaderValue::as_bytes) {
        Some(b"14") => Some(FailureKind::Unavailable),
        Some(b"4") => Some(FailureKind::DeadlineExceeded),
        _ => None,
    }
}

/// Reports a stream's final upstream status to its lease.
pub(crate) fn record_final_status(lease: &Lease, headers: &HeaderMap) {
    match status_failure(headers) {
        Some(kind) => lease.failed(kind),
        None => lease.finished(),
    }
}

async fn relay(
    ctx: &Arc<Context>,
    setup: &CallSetup,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    open: OpenStream,
) -> End {
    let OpenStream {
        lease,
        response,
        send,
    } = open;
    let sent_at = std::time::Instant::now();
    let request_pump = async {
        if body.is_end_stream() {
            // The whole request went out with the HEADERS frame.
            drop(send);
            return Ok(());
        }
        let scanner = MessageScanner::new(setup.max_message_bytes);
        forward_request(body, send, scanner, Arc::clone(ctx)).await
    };
    tokio::pin!(request_pump);
    let mut request_done = false;
    let must_end = must_end(ctx, setup.deadline);
    tokio::pin!(must_end);
    tokio::pin!(response);
    // Servers may hold their response headers back until the first message: the timer covers
    // both phases.
    let first_message_due = tokio::time::sleep(setup.first_message_timeout);
    tokio::pin!(first_message_due);
    let mut first_message_checked = false;

    // Phase 1: until the upstream answers with headers.
    let response = loop {
        tokio::select! {
            response = &mut response => break response,
            () = &mut first_message_due, if !first_message_checked => {
                first_message_checked = true;
                lease.failed(FailureKind::NoFirstMessage);
            }
            result = &mut request_pump, if !request_done => {
                request_done = true;
                if let Some(end) = request_side_failure(ctx, result) {
                    if let End::Failed(status) = &end {
                        reply(&mut respond, status);
                    }
                    return end;
                }
            }
            _ = poll_fn(|cx| respond.poll_reset(cx)) => return End::Cancelled,
            status = &mut must_end => {
                reply(&mut respond, &status);
                return End::Failed(status);
            }
        }
    };
    let response = match response {
        Ok(response) => {
            lease.observe_response(sent_at.elapsed());
            response
        }
        Err(error) => {
            lease.failed(FailureKind::Reset);
            ctx.stats.incr(|s| &s.upstream_failures_total);
            let status = upstream_failure(&error);
            reply(&mut respond, &status);
            return End::Failed(status);
        }
    };
    let (parts, mut upstream_body) = response.into_parts();
    let end_of_stream = upstream_body.is_end_stream();
    // A trailers-only answer: its status is in these headers.
    let final_status = end_of_stream.then(|| {
        record_final_status(&lease, &parts.headers);
        monitor_failure(&parts.headers)
    });
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    *head.headers_mut() = grpc::headers::response_headers(&parts.headers);
    drop(parts);
    let mut downstream = match respond.send_response(head, end_of_stream) {
        Ok(downstream) => downstream,
        Err(_) => return End::Cancelled,
    };
    if let Some(failed) = final_status {
        return End::Completed(failed);
    }
    setup.monitor.answered();

    // Phase 2: stream the response while the request side may still be flowing.
    let first_seen = std::sync::atomic::AtomicBool::new(false);
    let on_first_data = || {
        first_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        lease.first_message(sent_at.elapsed());
    };
    let traffic = &setup.profile.traffic;
    let on_data = |bytes, messages| {
        traffic.record(bytes, messages);
        lease.delivered(messages);
    };
    let outcome = {
        let mut scanner = MessageScanner::new(setup.max_message_bytes);
        let counter = &ctx.stats.bytes_to_monitors_total;
        let response_pump = pump::pump(
            &mut upstream_body,
            &mut downstream,
            &mut scanner,
            setup.on_full,
            counter,
            Some(&on_first_data),
            Some(&on_data),
        );
        tokio::pin!(response_pump);
        loop {
            tokio::select! {
                result = &mut response_pump => break Ok(result),
                () = &mut first_message_due, if !first_message_checked => {
                    first_message_checked = true;
                    if !first_seen.load(std::sync::atomic::Ordering::Relaxed) {
                        lease.failed(FailureKind::NoFirstMessage);
                    }
                }
                result = &mut request_pump, if !request_done => {
                    request_done = true;
                    if let Some(end) = request_side_failure(ctx, result) {
                        break Err(end);
                    }
                }
                status = &mut must_end => break Err(End::Failed(status)),
            }
        }
    };
    let result = match outcome {
        Ok(result) => result,
        Err(End::Failed(status)) => {
            let _ = downstream.send_trailers(status.to_trailers());
            return End::Failed(status);
        }
        Err(end) => return end,
    };
    match result {
        Ok(Ending::Trailers(trailers)) => {
            record_final_status(&lease, &trailers);
            let _ = downstream.send_trailers(grpc::headers::response_headers(&trailers));
            End::Completed(monitor_failure(&trailers))
        }
        Ok(Ending::Closed) => {
            lease.finished();
            End::Completed(false)
        }
        Err(PumpError::Sink(_)) => End::Cancelled,
        Err(PumpError::Lagging(waited)) => {
            let status = cut_off_lagging(ctx, waited);
            let _ = downstream.send_trailers(status.to_trailers());
            End::Failed(status)
        }
        Err(PumpError::Frame(error)) => {
            ctx.stats.incr(|s| &s.oversized_messages_total);
            let status = Status::resource_exhausted(format!("upstream response rejected: {error}"));
            let _ = downstream.send_trailers(status.to_trailers());
            End::Failed(status)
        }
        Err(PumpError::Source(error)) => {
            lease.failed(FailureKind::Reset);
            ctx.stats.incr(|s| &s.upstream_failures_total);
            let status = upstream_failure(&error);
            let _ = downstream.send_trailers(status.to_trailers());
            End::Failed(status)
        }
    }
}

/// Interprets the end of the request side; `Some` when the call must stop now.
fn request_side_failure(ctx: &Context, result: Result<(), PumpError>) -> Option<End> {
    match result {
        Ok(()) => None,
        // The monitor reset its stream: cancel.
        Err(PumpError::Source(_)) => Some(End::Cancelled),
        // The upstream stopped reading; its response (or reset) tells the monitor why.
        Err(PumpError::Sink(_) | PumpError::Lagging(_)) => None,
        Err(PumpError::Frame(error)) => {
            ctx.stats.incr(|s| &s.oversized_messages_total);
            Some(End::Failed(Status::resource_exhausted(format!(
                "request rejected: {error}"
            ))))
        }
    }
}
