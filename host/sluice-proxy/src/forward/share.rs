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
//! Like the other relays, this one opens its upstream stream through `upstream` and never uses
//! `call` or `resumable`.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use parking_lot::Mutex;
use sluice_config::MethodConfig;
use tokio::sync::{Notify, broadcast, watch};

use super::answers::{SHARED_WITNESS, record_final_status};
use super::attribution::Attribution;
use super::pump::{self, OnFull, PumpError};
use super::request::{BoundedRequest, request_timed_out};
use super::upstream::{
    CallSetup, Caller, End, FirstMessage, cut_off_lagging, let_go, must_end, open_upstream,
    response_head, upstream_failure,
};
use crate::Context;
use crate::grpc::{self, Code, MessageSplitter, Status};
use crate::pool::{FailureKind, Lease};
use crate::route::MonitorProfile;
use crate::stats::GaugeGuard;

/// The sharing options of a method.
#[derive(Debug, Clone)]
pub(super) struct ShareOptions {
    key_metadata: Vec<HeaderName>,
    buffer: usize,
}

/// Request metadata that always keys a shared stream: the credentials a provider sees. Two
/// subscribers that would authenticate differently upstream never ride one stream.
const CREDENTIAL_METADATA: [HeaderName; 2] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-token"),
];

impl ShareOptions {
    pub(super) fn from_config(method: &MethodConfig) -> Self {
        let mut key_metadata = CREDENTIAL_METADATA.to_vec();
        for name in &method.share_key_metadata {
            if let Ok(name) = HeaderName::try_from(name.as_str())
                && !key_metadata.contains(&name)
            {
                key_metadata.push(name);
            }
        }
        Self {
            key_metadata,
            buffer: method.share_buffer_messages,
        }
    }
}

/// What makes two requests the same subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ShareKey {
    path: Arc<str>,
    request: Bytes,
    metadata: Vec<Option<HeaderValue>>,
}

/// How the upstream answered, as every subscriber must see it.
#[derive(Debug, Clone)]
enum Head {
    /// Response headers; messages follow.
    Headers(StatusCode, HeaderMap),
    /// The stream ended before any message: a trailers-only response.
    Ended(Response<()>),
}

#[derive(Debug, Clone)]
enum Event {
    /// A whole framed message and its position in the stream (1-based).
    Message(u64, Bytes),
    End(Arc<HeaderMap>),
}

/// One upstream stream and its subscribers.
struct SharedStream {
    key: ShareKey,
    events: broadcast::Sender<Event>,
    head: watch::Sender<Option<Head>>,
    subscribers: AtomicUsize,
    cancel: Notify,
    /// The position of the last message published to subscribers.
    published: AtomicU64,
    /// The highest position any subscriber has handed to its monitor.
    delivered: AtomicU64,
    /// Signalled when `delivered` moves.
    progress: Notify,
    /// How far the upstream may run ahead of the fastest subscriber, in messages.
    lead: u64,
}

impl SharedStream {
    /// Records that a subscriber is at `position`, waking the publisher if that is a new best.
    fn mark_delivered(&self, position: u64) {
        if self.delivered.fetch_max(position, Relaxed) < position {
            self.progress.notify_one();
        }
    }

    /// Waits until publishing message `position` keeps the fastest subscriber within `lead`.
    async fn wait_for_fastest(&self, position: u64) {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if position <= self.delivered.load(Relaxed) + self.lead {
                return;
            }
            progressed.await;
        }
    }
}

/// The shared streams currently running.
#[derive(Default)]
pub(crate) struct ShareRegistry {
    streams: Mutex<HashMap<ShareKey, Arc<SharedStream>>>,
}

/// A subscriber's membership; leaving last cancels the upstream stream.
struct Membership {
    ctx: Arc<Context>,
    stream: Arc<SharedStream>,
    _gauge: GaugeGuard,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut streams = self.ctx.shares.streams.lock();
        if self.stream.subscribers.fetch_sub(1, Relaxed) == 1 {
            let current = streams.get(&self.stream.key);
            if current.is_some_and(|s| Arc::ptr_eq(s, &self.stream)) {
                streams.remove(&self.stream.key);
            }
            self.stream.cancel.notify_one();
        }
    }
}

impl ShareRegistry {
    /// Joins the running stream for `key`, or registers a new one (`true` in the result means
    /// the caller must start it).
    fn join(
        &self,
        key: ShareKey,
        buffer: usize,
    ) -> (Arc<SharedStream>, broadcast::Receiver<Event>, bool) {
        let mut streams = self.streams.lock();
        if let Some(stream) = streams.get(&key) {
            stream.subscribers.fetch_add(1, Relaxed);
            // A joiner is caught up by definition: if the stream was waiting for a stalled
            // subscriber, the newcomer is now the fastest and lets it go on.
            stream.mark_delivered(stream.published.load(Relaxed));
            return (Arc::clone(stream), stream.events.subscribe(), false);
        }
        let (events, receiver) = broadcast::channel(buffer.max(1));
        let stream = Arc::new(SharedStream {
            key: key.clone(),
            events,
            head: watch::Sender::new(None),
            subscribers: AtomicUsize::new(1),
            cancel: Notify::new(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            progress: Notify::new(),
            lead: (buffer as u64 / 2).max(1),
        });
        streams.insert(key, Arc::clone(&stream));
        (stream, receiver, true)
    }

    /// Unregisters `stream` so that no one joins it any more.
    fn retire(&self, stream: &Arc<SharedStream>) {
        let mut streams = self.streams.lock();
        if streams
            .get(&stream.key)
            .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.key);
        }
    }

    /// Upstream streams being shared now.
    pub(crate) fn len(&self) -> usize {
        self.streams.lock().len()
    }
}

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
    let (stream, mut events, is_new) = ctx.shares.join(key, options.buffer);
    let membership = Membership {
        ctx: Arc::clone(&ctx),
        stream: Arc::clone(&stream),
        _gauge: ctx.stats.hold(|s| &s.shared_subscribers_active),
    };
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

    let mut head = stream.head.subscribe();
    let head = tokio::select! {
        head = head.wait_for(Option::is_some) => head.ok().and_then(|h| h.clone()),
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return End::Cancelled,
        status = must_end(&ctx, setup.deadline) => {
            let _ = respond.send_response(status.to_response(), true);
            return End::Failed(status);
        }
    };
    let (status, headers) = match head {
        Some(Head::Headers(status, headers)) => (status, headers),
        Some(Head::Ended(response)) => {
            let _ = respond.send_response(response, true);
            // A shared stream's status is every subscriber's: no one monitor caused it.
            return End::Completed(false);
        }
        None => {
            let status = Status::unavailable("shared upstream stream ended unexpectedly");
            let _ = respond.send_response(status.to_response(), true);
            return End::Failed(status);
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let Ok(mut downstream) = respond.send_response(response, false) else {
        return End::Cancelled;
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
    stream: Arc<SharedStream>,
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
    if let Some(Kept {
        lease,
        send,
        opened,
    }) = kept
    {
        if matches!(result, Some(Ok(_))) {
            drop((send, lease));
        } else {
            let_go(&ctx, opened, move || drop((send, lease)));
        }
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

/// The shared upstream stream's send half and lease, owned by [`run_upstream`] rather than by
/// the future feeding subscribers, so that however that ends, the stream goes through
/// [`let_go`].
struct Kept {
    lease: Lease,
    send: SendStream<Bytes>,
    opened: std::time::Instant,
}

#[allow(clippy::too_many_arguments)] // One call site; the arguments are the stream's set-up.
async fn feed_subscribers(
    ctx: &Arc<Context>,
    stream: &SharedStream,
    caller: Caller<'_>,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    request: Bytes,
    max_message_bytes: usize,
    kept: &mut Option<Kept>,
) -> Result<HeaderMap, Status> {
    let open = Box::pin(open_upstream(ctx, caller, path, headers, false, None, None)).await?;
    // Every subscriber is told the shared stream's endpoint and its opener's call id.
    let attribution = Attribution::new(caller.stream, &open.lease);
    let response = open.response;
    let Kept { lease, send, .. } = kept.insert(Kept {
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
            stream.wait_for_fastest(published).await;
            stream.published.store(published, Relaxed);
            // No receiver only means every subscriber is between leaving and the cancel.
            let _ = stream.events.send(Event::Message(published, message));
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
