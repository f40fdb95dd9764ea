//! The plain relay: one monitor call on one upstream stream, bytes moved in both directions
//! under flow control, from the monitor's HEADERS to the upstream's trailers.
//!
//! On `open_on_request` methods the upstream stream is opened only once the request has begun
//! ([`RequestStart`]). It relays DATA frames without splitting messages (it only
//! scans their lengths against the size limit). It must not use the other relays (`share`,
//! `resumable`): what they all need is in `upstream`.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Request;
use tokio::sync::Notify;

use super::answers::record_final_status;
use super::attribution::Attribution;
use super::pump::{self, Ending, OnFull, PumpError};
use super::request::{RequestStart, StartError, request_timed_out};
use super::upstream::{
    CallSetup, End, OpenStream, cut_off_lagging, let_go, monitor_blamed, must_end, open_upstream,
    reply, response_head, upstream_failure,
};
use crate::Context;
use crate::grpc::{self, Code, FrameError, MessageScanner, Status};
use crate::pool::{FailureKind, Lease};

/// A timer that has not started yet: it is reset to its real deadline when it starts.
const NOT_YET: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Serves one plain call to its end.
pub(super) async fn serve(
    ctx: &Arc<Context>,
    setup: CallSetup,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> End {
    let (parts, mut body) = request.into_parts();
    let Some(path) = parts.uri.path_and_query().cloned() else {
        let status = Status::new(Code::Unimplemented, "request has no path");
        reply(&mut respond, &status);
        return End::Failed(status);
    };
    let request_due = tokio::time::Instant::now() + ctx.config.server.request_timeout;
    let mut scanner = MessageScanner::new(setup.max_message_bytes);
    // On `open_on_request` methods the provider sees the call only once its request began.
    let start = if !setup.open_on_request || body.is_end_stream() {
        None
    } else {
        match read_start(
            ctx,
            &setup,
            &mut body,
            &mut scanner,
            &mut respond,
            request_due,
        )
        .await
        {
            Ok(start) => Some(start),
            Err(end) => return log_end(ctx, end),
        }
    };
    let request_in = RequestStart::complete(&scanner, &body);
    let headers_end = body.is_end_stream() && start.is_none();
    let headers = grpc::headers::request_headers(&parts.headers, 4);
    let opened = tokio::select! {
        // Boxed: opening is short, and keeping its state out of the call's future keeps every
        // long-lived stream's task small.
        opened = Box::pin(open_upstream(ctx, setup.caller(), &path, &headers, headers_end, setup.deadline, None)) => opened,
        status = must_end(ctx, setup.deadline) => Err(status),
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return log_end(ctx, End::Cancelled),
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
    let request = MonitorSide {
        body,
        start,
        scanner,
        arrived: request_in,
        due: request_due,
    };
    let OpenStream {
        lease,
        response,
        mut send,
        opened,
    } = open;
    let upstream = Upstream {
        lease: &lease,
        response,
        send: &mut send,
    };
    let end = relay(ctx, &setup, request, respond, upstream).await;
    // A completed call had its upstream's answer, so the provider took the stream up: letting
    // it go now is safe. One cut short is let go, but not too young.
    if matches!(end, End::Completed(_)) {
        drop((send, lease));
    } else {
        let_go(ctx, opened, move || drop((send, lease)));
    }
    log_end(ctx, end)
}

/// Logs how a call ended, counting cancellations.
fn log_end(ctx: &Context, end: End) -> End {
    match &end {
        End::Completed(_) => {}
        End::Cancelled => {
            ctx.stats.incr(|s| &s.cancelled_total);
            tracing::debug!("cancelled by the monitor");
        }
        End::Failed(status) => tracing::debug!(%status, "call failed"),
        End::MonitorFault(status) => tracing::debug!(%status, "call refused: the monitor's fault"),
    }
    end
}

/// Reads the start of the request ([`RequestStart`]) before the upstream stream is opened,
/// answering the monitor when the call ends meanwhile.
async fn read_start(
    ctx: &Arc<Context>,
    setup: &CallSetup,
    body: &mut RecvStream,
    scanner: &mut MessageScanner,
    respond: &mut SendResponse<Bytes>,
    request_due: tokio::time::Instant,
) -> Result<RequestStart, End> {
    let read = tokio::select! {
        read = RequestStart::read(ctx, body, scanner) => read,
        () = tokio::time::sleep_until(request_due) => {
            let status = request_timed_out(ctx, ctx.config.server.request_timeout);
            reply(respond, &status);
            return Err(End::Failed(status));
        }
        status = must_end(ctx, setup.deadline) => {
            reply(respond, &status);
            return Err(End::Failed(status));
        }
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(End::Cancelled),
    };
    read.map_err(|error| {
        let end = match error {
            StartError::Cancelled => return End::Cancelled,
            // Other calls filled the budget: not this monitor's fault.
            StartError::Refused(status) => End::Failed(status),
            StartError::Frame(error) => rejected_request(ctx, &error),
        };
        if let End::Failed(status) | End::MonitorFault(status) = &end {
            reply(respond, status);
        }
        end
    })
}

/// The upstream side of a call being relayed. The call's serving task owns the stream's send
/// half and lease, so that whatever ends the relay, it decides when the stream goes.
struct Upstream<'a> {
    lease: &'a Lease,
    response: ResponseFuture,
    send: &'a mut SendStream<Bytes>,
}

/// The monitor's side of a call being relayed.
struct MonitorSide {
    body: RecvStream,
    /// What was read before the upstream stream was opened; sent on first.
    start: Option<RequestStart>,
    /// Fed with every request byte so far.
    scanner: MessageScanner,
    /// Whether a whole request message (or the request's end) is in already.
    arrived: bool,
    /// When the request must be in (`server.request_timeout` from the call's HEADERS).
    due: tokio::time::Instant,
}

/// Relays an opened call: the request side and the response side until the upstream's final
/// status, the monitor leaving, the deadline or a broken rule ends it.
async fn relay(
    ctx: &Arc<Context>,
    setup: &CallSetup,
    request: MonitorSide,
    mut respond: SendResponse<Bytes>,
    upstream: Upstream<'_>,
) -> End {
    let MonitorSide {
        body,
        start,
        scanner,
        arrived,
        due,
    } = request;
    let Upstream {
        lease,
        response,
        send,
    } = upstream;
    let sent_at = std::time::Instant::now();
    // Set once the monitor's first request message has gone upstream whole (or its request
    // ended). Until then a silent call is the monitor's doing, bounded by `request_timeout`;
    // from then on the upstream owes an answer, and the first-message timer runs for it.
    let request_arrived = Notify::new();
    let on_request_data = |_bytes: u64, completed: u64| {
        if completed > 0 {
            request_arrived.notify_one();
        }
    };
    let mut request_in = arrived;
    let request_pump = async {
        if body.is_end_stream() && start.is_none() {
            // The whole request went out with the HEADERS frame.
            return Ok(());
        }
        forward_request(
            start,
            body,
            send,
            scanner,
            Arc::clone(ctx),
            &on_request_data,
        )
        .await
    };
    tokio::pin!(request_pump);
    let mut request_done = false;
    let must_end = must_end(ctx, setup.deadline);
    tokio::pin!(must_end);
    tokio::pin!(response);
    let request_timeout = ctx.config.server.request_timeout;
    let request_due = tokio::time::sleep_until(due);
    tokio::pin!(request_due);
    // Servers may hold their response headers back until the first message: the timer covers
    // both phases, from the moment the request is in, unless the response started and the
    // method only asks for that.
    let first_message_due = tokio::time::sleep(if request_in {
        setup.first_message.timeout
    } else {
        NOT_YET
    });
    tokio::pin!(first_message_due);
    let mut first_message_checked = false;
    let arm_first_message = |due: std::pin::Pin<&mut tokio::time::Sleep>| {
        due.reset(tokio::time::Instant::now() + setup.first_message.timeout);
    };

    // Phase 1: until the upstream answers with headers.
    let response = loop {
        tokio::select! {
            response = &mut response => break response,
            () = &mut first_message_due, if !first_message_checked && request_in => {
                first_message_checked = true;
                lease.failed(FailureKind::NoFirstMessage);
            }
            () = request_arrived.notified(), if !request_in => {
                request_in = true;
                arm_first_message(first_message_due.as_mut());
            }
            () = &mut request_due, if !request_in => {
                // Dropping the upstream stream cancels it; the endpoint did nothing wrong.
                let status = request_timed_out(ctx, request_timeout);
                reply(&mut respond, &status);
                return End::Failed(status);
            }
            result = &mut request_pump, if !request_done => {
                request_done = true;
                if result.is_ok() && !request_in {
                    request_in = true;
                    arm_first_message(first_message_due.as_mut());
                }
                if let Some(end) = request_side_failure(ctx, result) {
                    if let End::Failed(status) | End::MonitorFault(status) = &end {
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
    let blamed = end_of_stream && monitor_blamed(lease, &parts.headers);
    if end_of_stream {
        record_final_status(lease, &parts.headers, &setup.monitor.name());
    } else if !setup.first_message.strict {
        // The response started: however long its first message then takes, the stream is not
        // failed for it (it still is if it breaks before the deadline).
        lease.response_started(sent_at.elapsed());
    }
    let mut head = response_head(parts.status, &parts.headers);
    drop(parts);
    let attribution = Attribution::new(setup.stream, lease);
    attribution.stamp_response(head.headers_mut(), end_of_stream);
    let mut downstream = match respond.send_response(head, end_of_stream) {
        Ok(downstream) => downstream,
        Err(_) => return End::Cancelled,
    };
    if end_of_stream {
        return End::Completed(blamed);
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
                () = &mut first_message_due, if !first_message_checked && request_in => {
                    first_message_checked = true;
                    if first_seen.load(std::sync::atomic::Ordering::Relaxed) {
                    } else if setup.first_message.strict {
                        lease.failed(FailureKind::NoFirstMessage);
                    } else {
                        lease.quiet_but_working();
                    }
                }
                () = request_arrived.notified(), if !request_in => {
                    request_in = true;
                    arm_first_message(first_message_due.as_mut());
                }
                result = &mut request_pump, if !request_done => {
                    request_done = true;
                    if result.is_ok() && !request_in {
                        request_in = true;
                        arm_first_message(first_message_due.as_mut());
                    }
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
            let _ = downstream.send_trailers(attribution.stamped_trailers(status.to_trailers()));
            return End::Failed(status);
        }
        Err(End::MonitorFault(status)) => {
            let _ = downstream.send_trailers(attribution.stamped_trailers(status.to_trailers()));
            return End::MonitorFault(status);
        }
        Err(end) => return end,
    };
    match result {
        Ok(Ending::Trailers(trailers)) => {
            record_final_status(lease, &trailers, &setup.monitor.name());
            let _ = downstream.send_trailers(
                attribution.stamped_trailers(grpc::headers::response_headers(&trailers)),
            );
            End::Completed(monitor_blamed(lease, &trailers))
        }
        Ok(Ending::Closed) => {
            lease.finished();
            End::Completed(false)
        }
        Err(PumpError::Sink(_)) => End::Cancelled,
        Err(PumpError::Lagging(waited)) => {
            let status = cut_off_lagging(ctx, waited);
            let _ = downstream.send_trailers(attribution.stamped_trailers(status.to_trailers()));
            End::MonitorFault(status)
        }
        Err(PumpError::Frame(error)) => {
            ctx.stats.incr(|s| &s.oversized_messages_total);
            let status = Status::resource_exhausted(format!("upstream response rejected: {error}"));
            let _ = downstream.send_trailers(attribution.stamped_trailers(status.to_trailers()));
            End::Failed(status)
        }
        Err(PumpError::Source(error)) => {
            lease.failed(FailureKind::Reset);
            ctx.stats.incr(|s| &s.upstream_failures_total);
            let status = upstream_failure(&error);
            let _ = downstream.send_trailers(attribution.stamped_trailers(status.to_trailers()));
            End::Failed(status)
        }
    }
}

/// Forwards the request to the upstream, what was read before it opened first, and ends it the
/// way the monitor ended it; `on_data` hears of each chunk handed on and the messages it
/// completed.
async fn forward_request(
    start: Option<RequestStart>,
    mut body: RecvStream,
    upstream: &mut SendStream<Bytes>,
    mut scanner: MessageScanner,
    ctx: Arc<Context>,
    on_data: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), PumpError> {
    let counter = &ctx.stats.bytes_to_upstream_total;
    if let Some(mut start) = start {
        // The start's messages were counted as it was read: the request is in if they matter.
        // However the request ended (with the last chunk, with trailers, or with nothing
        // more), the pump below sees that end and passes it on.
        for chunk in start.take_chunks() {
            let len = chunk.len();
            pump::send_all(upstream, chunk, OnFull::Wait, false).await?;
            counter.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            on_data(len as u64, 0);
            let _ = body.flow_control().release_capacity(len);
        }
    }
    let result = pump::pump(
        &mut body,
        upstream,
        &mut scanner,
        OnFull::Wait,
        counter,
        None,
        Some(on_data),
    )
    .await;
    match result {
        Ok(Ending::Trailers(trailers)) => upstream
            .send_trailers(grpc::headers::request_headers(&trailers, 0))
            .map_err(PumpError::Sink),
        Ok(Ending::Closed) => Ok(()),
        // The monitor went away or sent garbage: the call ends, and with it the upstream
        // stream (see `let_go`).
        Err(error) => Err(error),
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
        Err(PumpError::Frame(error)) => Some(rejected_request(ctx, &error)),
    }
}

/// A request that broke the framing rules or the size limit: counted, and the monitor's fault.
fn rejected_request(ctx: &Context, error: &FrameError) -> End {
    ctx.stats.incr(|s| &s.oversized_messages_total);
    End::MonitorFault(Status::resource_exhausted(format!(
        "request rejected: {error}"
    )))
}
