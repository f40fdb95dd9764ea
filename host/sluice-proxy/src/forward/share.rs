//! Subscription sharing: identical server-streaming requests ride one upstream stream.
//!
//! The first monitor's request opens the upstream stream; later monitors with the same method,
//! request bytes and key metadata join it and receive messages from the point they joined. The
//! key metadata always holds the credentials a provider sees (`authorization`, `x-token`), so a
//! subscriber never rides a stream opened with someone else's credentials. The upstream stream
//! is cancelled when its last subscriber leaves.
//!
//! A shared stream runs at the pace of its fastest subscriber: the upstream is read (and its
//! flow-control window released) only while the fastest subscriber is less than half a ring
//! behind. It cannot be held back for the slowest without stalling the others, so each
//! subscriber reads from a bounded ring (`tokio::sync::broadcast`, whose capacity is
//! `share_buffer_messages` rounded up to a power of two), and one that falls a full ring behind
//! is cut off with `RESOURCE_EXHAUSTED "lagging"`, whatever its class's lag policy.
//!
//! Like the other relays, this one opens its upstream stream through `upstream`, fans it out
//! through `fanout`, and never uses `call`, `subscription` or `resumable`.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Request};
use tokio::sync::broadcast;

use super::answers::{SHARED_WITNESS, record_final_status};
use super::attribution::Attribution;
use super::fanout::{Event, Head, Joined, ShareKey, ShareOptions, SharedStream};
use super::pump::{self, OnFull, PumpError};
use super::request::{BoundedRequest, request_timed_out};
use super::upstream::{
    CallSetup, Caller, End, FirstMessage, KeptStream, cut_off_lagging, must_end, open_upstream,
    response_head, upstream_failure,
};
use crate::Context;
use crate::grpc::{self, Code, MessageSplitter, Status};
use crate::pool::FailureKind;
use crate::route::MonitorProfile;

/// Reads the request of a server-streaming call: exactly one message, then end of stream.
/// The bytes it holds meanwhile are bounded ([`BoundedRequest`]); every error but a full
/// budget (which other calls filled) is the monitor's.
async fn read_request(
    ctx: &Arc<Context>,
    body: &mut RecvStream,
    max_message_bytes: usize,
) -> Result<Bytes, End> {
    let fault = |code, message: String| End::MonitorFault(Status::new(code, message));
    let mut splitter = BoundedRequest::new(ctx, max_message_bytes);
    let mut request = None;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return Err(End::Cancelled);
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        splitter.push(chunk).map_err(End::Failed)?;
        while let Some(message) = splitter
            .next_message()
            .map_err(|e| fault(Code::ResourceExhausted, format!("request rejected: {e}")))?
        {
            if request.replace(message).is_some() {
                return Err(fault(
                    Code::InvalidArgument,
                    "shared methods take exactly one request message (server streaming)".into(),
                ));
            }
        }
    }
    splitter
        .finish()
        .map_err(|e| fault(Code::InvalidArgument, format!("request rejected: {e}")))?;
    request.ok_or_else(|| {
        fault(
            Code::InvalidArgument,
            "shared methods need a request message".into(),
        )
    })
}

/// Serves one subscriber of a shared method.
pub(super) async fn serve(
    ctx: Arc<Context>,
    setup: CallSetup,
    options: ShareOptions,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> End {
    let (parts, mut body) = request.into_parts();
    let request_timeout = ctx.config.server.request_timeout;
    let read = tokio::select! {
        read = read_request(&ctx, &mut body, setup.max_message_bytes) => read,
        status = must_end(&ctx, setup.deadline) => Err(End::Failed(status)),
        () = tokio::time::sleep(request_timeout) => {
            Err(End::Failed(request_timed_out(&ctx, request_timeout)))
        }
    };
    let request_bytes = match read {
        Ok(bytes) => bytes,
        Err(end) => {
            if let End::Failed(status) | End::MonitorFault(status) = &end {
                let _ = respond.send_response(status.to_response(), true);
            }
            return end;
        }
    };
    let key = ShareKey {
        path: Arc::clone(&setup.path),
        request: request_bytes.clone(),
        metadata: options
            .key_metadata
            .iter()
            .map(|name| parts.headers.get(name).cloned())
            .collect(),
    };
    let Joined {
        membership,
        mut events,
        is_new,
    } = ctx.shares.join(&ctx.stats, key, options.buffer, || ());
    let stream = Arc::clone(&membership.stream);
    if is_new {
        let mut headers = grpc::headers::request_headers(&parts.headers, 4);
        // Each subscriber's deadline is enforced here; the shared upstream stream has none.
        headers.remove("grpc-timeout");
        let Some(path) = parts.uri.path_and_query().cloned() else {
            // Unreachable for HTTP/2 (`:path` is mandatory), but joiners must never wait on
            // a stream that will not start.
            let status = Status::new(Code::InvalidArgument, "request has no path");
            stream
                .head
                .send_replace(Some(Head::Ended(status.to_response())));
            ctx.shares.retire(&stream);
            let _ = respond.send_response(status.to_response(), true);
            return End::Failed(status);
        };
        let upstream = run_upstream(
            Arc::clone(&ctx),
            Arc::clone(&stream),
            setup.profile.clone(),
            setup.stream,
            path,
            headers,
            request_bytes,
            setup.max_message_bytes,
        );
        tokio::spawn(upstream);
    } else {
        ctx.stats.incr(|s| &s.shared_joins_total);
        tracing::debug!("joined a shared upstream stream");
        drop(request_bytes);
    }
    // Long-lived subscriptions must not keep their request alive.
    drop((parts, body));

    let mut downstream = match stream.answer(&ctx, &mut respond, setup.deadline).await {
        Ok(downstream) => downstream,
        Err(end) => return end,
    };
    setup.monitor.answered();

    let ending_early = must_end(&ctx, setup.deadline);
    tokio::pin!(ending_early);
    let ending = loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = poll_fn(|cx| downstream.poll_reset(cx)) => break None,
            status = &mut ending_early => break Some((status.to_trailers(), false)),
        };
        // The trailers the subscriber ends with, and whether it ends by its own fault.
        match event {
            // Only packed subscriptions route messages; a shared stream never does.
            Ok(Event::Routed(position, _)) => stream.mark_delivered(position),
            Ok(Event::Message(position, message)) => {
                let len = message.len() as u64;
                let sent = tokio::select! {
                    sent = pump::send_all(&mut downstream, message, setup.on_full, false) => sent,
                    status = &mut ending_early => break Some((status.to_trailers(), false)),
                };
                match sent {
                    Ok(()) => {
                        ctx.stats.bytes_to_monitors_total.fetch_add(len, Relaxed);
                        setup.profile.traffic.record(len, 1);
                        stream.mark_delivered(position);
                    }
                    Err(PumpError::Lagging(waited)) => {
                        break Some((cut_off_lagging(&ctx, waited).to_trailers(), true));
                    }
                    Err(_) => break None,
                }
            }
            Ok(Event::End(trailers)) => break Some(((*trailers).clone(), false)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                ctx.stats.incr(|s| &s.lagging_disconnects_total);
                tracing::debug!(
                    missed,
                    "subscriber cut off: lagging behind the shared stream"
                );
                break Some((
                    Status::resource_exhausted(format!(
                        "lagging: fell {missed} messages behind the shared stream"
                    ))
                    .to_trailers(),
                    true,
                ));
            }
            Err(broadcast::error::RecvError::Closed) => {
                break Some((
                    Status::unavailable("shared upstream stream ended without a status")
                        .to_trailers(),
                    false,
                ));
            }
        }
    };
    drop(membership);
    match ending {
        Some((trailers, false)) => {
            let _ = downstream.send_trailers(trailers);
            End::Completed(false)
        }
        Some((trailers, true)) => {
            let _ = downstream.send_trailers(trailers);
            End::MonitorFault(Status::resource_exhausted(
                "lagging behind the shared stream",
            ))
        }
        None => End::Cancelled,
    }
}

/// Runs the upstream side of a shared stream until it ends or its last subscriber leaves;
/// `opener` is the call that started it, under which its placement is logged.
#[allow(clippy::too_many_arguments)] // One call site; the arguments are the stream's set-up.
async fn run_upstream(
    ctx: Arc<Context>,
    stream: Arc<SharedStream<()>>,
    profile: MonitorProfile,
    opener: u64,
    path: http::uri::PathAndQuery,
    headers: HeaderMap,
    request: Bytes,
    max_message_bytes: usize,
) {
    let _gauge = ctx.stats.hold(|s| &s.shared_upstreams_active);
    let mut kept = None;
    let result = tokio::select! {
        result = feed_subscribers(&ctx, &stream, Caller { profile: &profile, stream: opener }, &path, &headers, request, max_message_bytes, &mut kept) => Some(result),
        _ = stream.cancel.notified() => None,
    };
    ctx.shares.retire(&stream);
    // A stream that ended was taken up by the provider: letting it go now is safe. One given up
    // on is let go, but not too young.
    if let Some(kept) = kept {
        kept.release(&ctx, matches!(result, Some(Ok(_))));
    }
    let Some(result) = result else {
        tracing::debug!("shared upstream stream cancelled: no subscribers left");
        return;
    };
    let trailers = match result {
        Ok(trailers) => trailers,
        Err(status) => {
            tracing::info!(%status, "shared upstream stream failed");
            if stream.head.borrow().is_none() {
                stream
                    .head
                    .send_replace(Some(Head::Ended(status.to_response())));
                return;
            }
            status.to_trailers()
        }
    };
    let _ = stream.events.send(Event::End(Arc::new(trailers)));
}

#[allow(clippy::too_many_arguments)] // One call site; the arguments are the stream's set-up.
async fn feed_subscribers(
    ctx: &Arc<Context>,
    stream: &SharedStream<()>,
    caller: Caller<'_>,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    request: Bytes,
    max_message_bytes: usize,
    kept: &mut Option<KeptStream>,
) -> Result<HeaderMap, Status> {
    let open = Box::pin(open_upstream(ctx, caller, path, headers, false, None, None)).await?;
    // Every subscriber is told the shared stream's endpoint and its opener's call id.
    let attribution = Attribution::new(caller.stream, &open.lease);
    let response = open.response;
    let KeptStream { lease, send, .. } = kept.insert(KeptStream {
        lease: open.lease,
        send: open.send,
        opened: open.opened,
    });
    let lease = &*lease;
    let sent_at = std::time::Instant::now();
    pump::send_all(send, request, OnFull::Wait, true)
        .await
        .map_err(|e| Status::unavailable(format!("sending the request upstream failed: {e}")))?;
    // Breakers hear how the shared stream went, as for any other upstream stream.
    let broke = |e: h2::Error| {
        lease.failed(FailureKind::Reset);
        ctx.stats.incr(|s| &s.upstream_failures_total);
        upstream_failure(&e)
    };
    // No start of the response (or first message, when the method asks) within the timeout
    // counts against the breakers once.
    let rule = FirstMessage::for_method(&ctx.config, ctx.config.method(path.path()));
    let first_due = tokio::time::sleep(rule.timeout);
    tokio::pin!(first_due);
    let mut first_checked = false;
    let mut response = response;
    let response = tokio::select! {
        answer = &mut response => answer,
        () = &mut first_due => {
            first_checked = true;
            lease.failed(FailureKind::NoFirstMessage);
            response.await
        }
    }
    .map_err(broke)?;
    lease.observe_response(sent_at.elapsed());
    let (parts, mut body) = response.into_parts();
    if body.is_end_stream() {
        record_final_status(lease, &parts.headers, &Arc::from(SHARED_WITNESS));
        let mut ended = response_head(parts.status, &parts.headers);
        attribution.stamp_response(ended.headers_mut(), true);
        stream.head.send_replace(Some(Head::Ended(ended)));
        return Ok(HeaderMap::new());
    }
    if !rule.strict {
        // The response started: however long its first message then takes, the stream is not
        // failed for it (it still is if it breaks before the deadline).
        lease.response_started(sent_at.elapsed());
    }
    let mut head = grpc::headers::response_headers(&parts.headers);
    attribution.stamp_response(&mut head, false);
    stream
        .head
        .send_replace(Some(Head::Headers(parts.status, head)));
    let mut splitter = MessageSplitter::new(max_message_bytes);
    let mut published: u64 = 0;
    loop {
        let next = if published == 0 && !first_checked {
            tokio::select! {
                next = body.data() => next,
                () = &mut first_due => {
                    first_checked = true;
                    if rule.strict {
                        lease.failed(FailureKind::NoFirstMessage);
                    } else {
                        lease.quiet_but_working();
                    }
                    body.data().await
                }
            }
        } else {
            body.data().await
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(broke)?;
        if published == 0 {
            lease.first_message(sent_at.elapsed());
        }
        let len = chunk.len();
        splitter.push(chunk);
        while let Some(message) = splitter
            .next_message()
            .map_err(|e| Status::resource_exhausted(format!("upstream response rejected: {e}")))?
        {
            published += 1;
            lease.delivered(1);
            stream.publish(published, message).await;
        }
        let _ = body.flow_control().release_capacity(len);
    }
    splitter
        .finish()
        .map_err(|e| Status::internal(format!("upstream response rejected: {e}")))?;
    let trailers = body.trailers().await.map_err(broke)?;
    match &trailers {
        Some(trailers) => {
            record_final_status(lease, trailers, &Arc::from(SHARED_WITNESS));
        }
        None => lease.finished(),
    }
    let trailers = trailers
        .map(|t| grpc::headers::response_headers(&t))
        .unwrap_or_default();
    Ok(attribution.stamped_trailers(trailers))
}
