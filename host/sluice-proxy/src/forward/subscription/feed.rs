//! The upstream side of a bidirectional subscription: one upstream stream at a time, fanned
//! out to the subscribers, and replaced when it breaks.
//!
//! A feed opens its upstream stream with the subscription request and keeps the request
//! stream open: a private feed forwards its subscriber's later request messages, a shared one
//! sends nothing more (its subscribers' pings are answered by them, and a subscriber that
//! changes its subscription leaves). Every batch of response messages is marked by the
//! resumer, and the marks are kept ([`Marks`]).
//!
//! When the upstream stream breaks (reset, connection lost, `UNAVAILABLE`, or an answer that
//! sends streams elsewhere), a feed whose subscription the resumer knows opens a new one on
//! another connection, with the subscription rewritten by the resumer to start from the last
//! published position (Yellowstone's `from_slot`), and drops what it already published by key
//! ([`Catchup`]). A new stream that ends before its first message, as a provider does when it
//! cannot replay from there, is tried on another endpoint. When no endpoint can, within the
//! method's `resume_attempts` and `resume_timeout`, every subscriber ends with `DATA_LOSS` and
//! `x-sluice-gap-after` naming the last position they have: a gap is never silent.
//!
//! This module never serves a subscriber: that is the subscription's `serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;
use sluice_config::Answer;
use sluice_contract::resume::{ResumeAnswer, ResumeRequest, Routing};
use tokio::sync::mpsc;

use super::SubscriptionOptions;
use super::marks::{Catchup, Marks};
use super::pack::PackState;
use crate::Context;
use crate::forward::answers::{SHARED_WITNESS, record_final_status, status_code};
use crate::forward::attribution::Attribution;
use crate::forward::fanout::{Event, Head, SharedStream};
use crate::forward::pump::{self, OnFull};
use crate::forward::upstream::{
    Caller, KeptStream, open_upstream, response_head, upstream_failure,
};
use crate::grpc::{self, Code, MessageSplitter, PREFIX_LEN, Status, frame};
use crate::pool::{FailureKind, Lease, Resume};
use crate::route::MonitorProfile;

/// The trailer of a `DATA_LOSS` end that names the last position the subscriber has.
pub(crate) const GAP_AFTER: &str = "x-sluice-gap-after";

/// Marks per batch handed to the resumer at most, so that one call stays short.
const MARK_BATCH: usize = 256;

/// What a subscription relay keeps per upstream subscription.
pub(crate) struct FeedState {
    /// Marks of the published messages.
    pub(super) marks: Mutex<Marks>,
    /// Request messages a private feed's subscriber sends upstream (framed), and whether each
    /// is a subscription (what a resume must send again).
    pub(super) requests: mpsc::Sender<(Bytes, bool)>,
    /// Whether the resumer knows the subscription: only then are messages marked and the feed
    /// resumed.
    pub(super) known: bool,
    /// The membership of a packed subscription; `None` for a shared or private one.
    pub(super) pack: Option<PackState>,
}

/// An upstream subscription and its subscribers.
pub(super) type Feed = SharedStream<FeedState>;

/// How a feed starts.
pub(super) struct FeedStart {
    pub profile: MonitorProfile,
    /// The call that opened it, under which its placements are logged.
    pub opener: u64,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    /// The framed subscription request.
    pub subscription: Bytes,
    /// For a subscriber that moved here: what it already has, and the payload of its last
    /// positioned message (the resumer starts the subscription there).
    pub catchup: Option<(Catchup, Option<Bytes>)>,
    pub max_message_bytes: usize,
    pub options: SubscriptionOptions,
}

/// Runs a feed until its upstream subscription ends for good or its last subscriber leaves.
/// `requests` carries a private feed's forwarded request messages.
pub(super) async fn run(
    ctx: Arc<Context>,
    feed: Arc<Feed>,
    mut start: FeedStart,
    mut requests: mpsc::Receiver<(Bytes, bool)>,
) {
    let _gauge = ctx.stats.hold(|s| &s.shared_upstreams_active);
    let mut kept = None;
    let ended = tokio::select! {
        ended = feed_subscribers(&ctx, &feed, &mut start, &mut requests, &mut kept) => Some(ended),
        () = feed.cancel.notified() => None,
    };
    ctx.subscriptions.retire(&feed);
    if feed.extra.pack.is_some() {
        ctx.packs.retire(&feed);
    }
    if let Some(kept) = kept.take() {
        kept.release(&ctx, matches!(ended, Some(Ok(_))));
    }
    let Some(ended) = ended else {
        tracing::debug!("subscription cancelled: no subscribers left");
        return;
    };
    let trailers = match ended {
        Ok(trailers) => trailers,
        Err(status) => {
            tracing::info!(%status, "upstream subscription ended");
            if feed.head.borrow().is_none() {
                feed.head
                    .send_replace(Some(Head::Ended(status.to_response())));
            }
            status.to_trailers()
        }
    };
    // Subscribers that already have headers end with these trailers.
    let _ = feed.events.send(Event::End(Arc::new(trailers)));
}

/// Why an upstream stream stopped, when that is not the subscription's end.
struct Broken {
    /// The stream delivered nothing and its endpoint refused what it was asked (e.g. a replay
    /// from a position it no longer has): the next attempt avoids the endpoint.
    refused: bool,
    reason: String,
}

/// Opens, reads and replaces upstream streams until the subscription ends; the trailers every
/// subscriber ends with.
async fn feed_subscribers(
    ctx: &Arc<Context>,
    feed: &Feed,
    start: &mut FeedStart,
    requests: &mut mpsc::Receiver<(Bytes, bool)>,
    kept: &mut Option<KeptStream>,
) -> Result<HeaderMap, Status> {
    let (mut catchup, resume_from) = start.catchup.take().unzip();
    let start = &*start;
    let caller = Caller {
        profile: &start.profile,
        stream: start.opener,
    };
    let mut resume_from = resume_from.flatten();
    let mut subscription = start.subscription.clone();
    let mut attribution: Option<Attribution> = None;
    let mut published: u64 = 0;
    let mut retry: Option<Resume> = None;
    let mut resumes: u32 = 0;
    // Opens that delivered nothing, and when the current break began.
    let mut fruitless: u32 = 0;
    let mut broken_since: Option<Instant> = None;
    // Why the last resumed streams were refused (a replay the endpoint cannot serve), and why
    // the last open failed.
    let mut refusals: Vec<String> = Vec::new();
    let mut last_error = String::new();
    let mut requests_open = true;
    loop {
        if let Some(since) = broken_since
            && (fruitless >= start.options.resume_attempts
                || since.elapsed() >= start.options.resume_timeout)
        {
            let status = gave_up(ctx, &refusals, &last_error, resume_from.as_ref(), start);
            let mut trailers = status.to_trailers();
            if status.code == Code::DataLoss {
                let after = gap_after(ctx, resume_from.as_ref(), start);
                tracing::warn!(%after, published, "subscription gap: no endpoint could resume it");
                if let Ok(value) = HeaderValue::from_str(&after) {
                    trailers.insert(GAP_AFTER, value);
                }
            }
            if let Some(attribution) = &attribution {
                attribution.stamp_trailers(&mut trailers);
            }
            return Ok(trailers);
        }
        if let Some(pack) = &feed.extra.pack {
            // The membership may have changed while no stream was open.
            subscription = frame(&pack.request());
        }
        let request = opening_request(ctx, start, &subscription, resume_from.as_ref(), resumes);
        let remaining = broken_since.map_or(Duration::MAX, |since| {
            start.options.resume_timeout.saturating_sub(since.elapsed())
        });
        let opened = tokio::time::timeout(
            remaining,
            open_upstream(
                ctx,
                caller,
                &start.path,
                &start.headers,
                false,
                None,
                retry.as_ref(),
            ),
        )
        .await;
        let open = match opened {
            Ok(Ok(open)) => open,
            // Nothing can take the first stream: the subscribers get why.
            Ok(Err(status)) if broken_since.is_none() => return Err(status),
            Ok(Err(status)) => {
                fruitless += 1;
                last_error = status.message;
                tokio::time::sleep(pause(fruitless)).await;
                continue;
            }
            Err(_) => continue,
        };
        if let Some(previous) = kept.take() {
            previous.release(ctx, false);
        }
        match &mut attribution {
            None => attribution = Some(Attribution::new(caller.stream, &open.lease)),
            Some(attribution) => attribution.resumed_on(&open.lease),
        }
        let response = open.response;
        let current = kept.insert(KeptStream {
            lease: open.lease,
            send: open.send,
            opened: open.opened,
        });
        let resumed = resumes > 0 || resume_from.is_some();
        let mut read = Reading {
            ctx,
            feed,
            start,
            requests: &mut *requests,
            catchup: &mut catchup,
            resume_from: &mut resume_from,
            subscription: &mut subscription,
            published: &mut published,
            requests_open: &mut requests_open,
            attribution: attribution.as_ref(),
            resumed,
            delivered: false,
        };
        match read.stream(current, response, request).await {
            Ok(trailers) => return Ok(trailers),
            Err(Err(status)) => return Err(status),
            Err(Ok(broken)) => {
                if !feed.extra.known {
                    return Err(Status::unavailable(broken.reason));
                }
                let delivered = read.delivered;
                let lease = &current.lease;
                retry = Some(Resume {
                    broken: lease.connection().id,
                    alternatives: Vec::new(),
                    avoid_endpoint: broken
                        .refused
                        .then(|| Arc::clone(&lease.connection().endpoint.id)),
                });
                if delivered {
                    fruitless = 0;
                    refusals.clear();
                    broken_since = Some(Instant::now());
                } else {
                    fruitless += 1;
                    broken_since.get_or_insert_with(Instant::now);
                }
                if broken.refused {
                    refusals.push(broken.reason.clone());
                } else {
                    last_error.clone_from(&broken.reason);
                }
                resumes += 1;
                ctx.stats.incr(|s| &s.resumes_total);
                tracing::info!(reason = %broken.reason, resumes, "upstream subscription broke; resuming");
                catchup = Some(feed.extra.marks.lock().catchup(published).0);
                if delivered {
                    continue;
                }
                tokio::time::sleep(pause(fruitless)).await;
            }
        }
    }
}

/// The pause after the `n`th fruitless open: 40 ms doubling to 640 ms, with jitter.
fn pause(n: u32) -> Duration {
    Duration::from_millis(20 * (1 << n.clamp(1, 5))).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The request an upstream stream opens with: the subscription, rewritten by the resumer to
/// start from `resume_from` when there is one.
fn opening_request(
    ctx: &Context,
    start: &FeedStart,
    subscription: &Bytes,
    resume_from: Option<&Bytes>,
    resumes: u32,
) -> Vec<Bytes> {
    let Some(last) = resume_from else {
        return vec![subscription.clone()];
    };
    if subscription.first() != Some(&0) {
        // Compressed: the resumer reads plain protobuf only.
        return vec![subscription.clone()];
    }
    let requests = [subscription.slice(PREFIX_LEN..)];
    let request = ResumeRequest {
        monitor: &start.profile,
        method: start.path.path(),
        requests: &requests,
        last_response: Some(last),
        responses_delivered: 0,
        attempt: resumes.max(1),
    };
    match ctx.resumer.resume(&request) {
        ResumeAnswer::Replay(messages) => messages.iter().map(|m| frame(m)).collect(),
        ResumeAnswer::Unchanged => vec![subscription.clone()],
        ResumeAnswer::Failed(reason) => {
            tracing::warn!(%reason, "resumer failed; subscribing from the live tip");
            vec![subscription.clone()]
        }
    }
}

/// The end of a subscription no endpoint could resume: `DATA_LOSS` when endpoints refused the
/// replay (a gap), `UNAVAILABLE` otherwise.
fn gave_up(
    ctx: &Context,
    refusals: &[String],
    last_error: &str,
    resume_from: Option<&Bytes>,
    start: &FeedStart,
) -> Status {
    let Some(last) = refusals.last() else {
        let why = if last_error.is_empty() {
            "no endpoint could take it"
        } else {
            last_error
        };
        return Status::unavailable(format!(
            "upstream subscription broke and could not be resumed within {} attempts and {:?}: {why}",
            start.options.resume_attempts, start.options.resume_timeout
        ));
    };
    ctx.stats.incr(|s| &s.subscription_gaps_total);
    Status::new(
        Code::DataLoss,
        format!(
            "gap: no endpoint could resume the subscription after position {} ({last}); \
             subscribe again to continue from the live tip",
            gap_after(ctx, resume_from, start)
        ),
    )
}

/// The position of the last message the subscribers have, as the resumer reads it.
fn gap_after(ctx: &Context, resume_from: Option<&Bytes>, start: &FeedStart) -> String {
    resume_from
        .and_then(|payload| {
            let marks = ctx
                .resumer
                .mark(start.path.path(), std::slice::from_ref(payload))?;
            marks.first()?.position
        })
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// One upstream stream being read.
struct Reading<'a> {
    ctx: &'a Arc<Context>,
    feed: &'a Feed,
    start: &'a FeedStart,
    requests: &'a mut mpsc::Receiver<(Bytes, bool)>,
    catchup: &'a mut Option<Catchup>,
    resume_from: &'a mut Option<Bytes>,
    subscription: &'a mut Bytes,
    published: &'a mut u64,
    requests_open: &'a mut bool,
    attribution: Option<&'a Attribution>,
    /// Whether this stream was opened to continue from a position (a resume, or a subscriber
    /// that moved): an error before its first message is then a refusal to replay.
    resumed: bool,
    /// Whether this stream published a message.
    delivered: bool,
}

/// How a stream being read stopped: the subscription's end (`Ok` trailers, or `Err(Err)` a
/// status for every subscriber) or a break to resume from (`Err(Ok)`).
type Stopped = Result<HeaderMap, Result<Broken, Status>>;

impl Reading<'_> {
    async fn stream(
        &mut self,
        current: &mut KeptStream,
        response: h2::client::ResponseFuture,
        request: Vec<Bytes>,
    ) -> Stopped {
        let sent_at = Instant::now();
        for message in request {
            if let Err(e) = pump::send_all(&mut current.send, message, OnFull::Wait, false).await {
                return Err(Ok(Broken {
                    refused: false,
                    reason: format!("sending the subscription upstream failed: {e}"),
                }));
            }
        }
        let lease = &current.lease;
        let response = match response.await {
            Ok(response) => response,
            Err(e) => return broke(self.ctx, lease, &e),
        };
        lease.observe_response(sent_at.elapsed());
        let (parts, mut body) = response.into_parts();
        let first = self.feed.head.borrow().is_none();
        if body.is_end_stream() {
            return self.ended(lease, &parts.headers, first, Some(parts.status));
        }
        lease.response_started(sent_at.elapsed());
        if first {
            let mut head = grpc::headers::response_headers(&parts.headers);
            if let Some(attribution) = self.attribution {
                attribution.stamp_response(&mut head, false);
            }
            self.feed
                .head
                .send_replace(Some(Head::Headers(parts.status, head)));
        }
        let mut splitter = MessageSplitter::new(self.start.max_message_bytes);
        loop {
            tokio::select! {
                chunk = body.data() => {
                    let Some(chunk) = chunk else { break };
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => return broke(self.ctx, lease, &e),
                    };
                    let len = chunk.len();
                    splitter.push(chunk);
                    let mut batch = Vec::new();
                    while let Some(message) = splitter.next_message().map_err(|e| {
                        Err(Status::resource_exhausted(format!("upstream response rejected: {e}")))
                    })? {
                        batch.push(message);
                        if batch.len() == MARK_BATCH {
                            self.publish(lease, std::mem::take(&mut batch), sent_at).await.map_err(Err)?;
                        }
                    }
                    self.publish(lease, batch, sent_at).await.map_err(Err)?;
                    let _ = body.flow_control().release_capacity(len);
                }
                () = changed(self.feed) => {
                    if let Some(pack) = &self.feed.extra.pack {
                        let request = frame(&pack.request());
                        *self.subscription = request.clone();
                        if let Err(e) = pump::send_all(&mut current.send, request, OnFull::Wait, false).await {
                            return Err(Ok(Broken { refused: false, reason: format!("sending a repacked subscription upstream failed: {e}") }));
                        }
                    }
                }
                request = self.requests.recv(), if *self.requests_open => {
                    let Some((message, is_subscription)) = request else {
                        *self.requests_open = false;
                        continue;
                    };
                    if is_subscription {
                        *self.subscription = message.clone();
                    }
                    if let Err(e) = pump::send_all(&mut current.send, message, OnFull::Wait, false).await {
                        return Err(Ok(Broken { refused: false, reason: format!("sending a request upstream failed: {e}") }));
                    }
                }
            }
        }
        let trailers = match body.trailers().await {
            Ok(trailers) => trailers.unwrap_or_default(),
            Err(e) => return broke(self.ctx, lease, &e),
        };
        self.ended(lease, &trailers, false, None)
    }

    /// Marks and publishes `batch` (routed to their members when packed), dropping what a
    /// switch delivers again.
    async fn publish(
        &mut self,
        lease: &Lease,
        batch: Vec<Bytes>,
        sent_at: Instant,
    ) -> Result<(), Status> {
        if batch.is_empty() {
            return Ok(());
        }
        let known = self.feed.extra.known;
        let plain = batch.iter().all(|m| m.first() == Some(&0));
        let payloads: Vec<Bytes> = batch.iter().map(|m| m.slice(PREFIX_LEN..)).collect();
        let marks = if known && plain {
            self.ctx.resumer.mark(self.start.path.path(), &payloads)
        } else {
            None
        };
        let mut routes = match &self.feed.extra.pack {
            Some(_) => {
                let routes = plain
                    .then(|| self.ctx.resumer.unpack(self.start.path.path(), &payloads))
                    .flatten()
                    .ok_or_else(|| {
                        Status::unavailable(
                            "the resumer could not route an update of a packed subscription",
                        )
                    })?;
                Some(routes.into_iter())
            }
            None => None,
        };
        for (i, (message, payload)) in batch.into_iter().zip(payloads).enumerate() {
            let route = routes.as_mut().and_then(Iterator::next);
            let mark = marks
                .as_ref()
                .and_then(|marks| marks.get(i))
                .cloned()
                .unwrap_or_default();
            if let Some(catchup) = self.catchup.as_mut() {
                if catchup.is_duplicate(&mark) {
                    self.ctx.stats.incr(|s| &s.duplicates_dropped_total);
                    continue;
                }
                if catchup.is_done() {
                    *self.catchup = None;
                }
            }
            if !self.delivered {
                self.delivered = true;
                lease.first_message(sent_at.elapsed());
            }
            *self.published += 1;
            lease.delivered(1);
            if known {
                self.feed
                    .extra
                    .marks
                    .lock()
                    .record(*self.published, &payload, &mark);
                if mark.position.is_some() {
                    *self.resume_from = Some(payload);
                }
            }
            let number = *self.published;
            let event = match route {
                Some(Routing::Members(members)) => Event::Routed(
                    number,
                    members
                        .into_iter()
                        .map(|(tag, payload)| (tag, frame(&payload)))
                        .collect(),
                ),
                Some(Routing::Everyone) | None => Event::Message(number, message),
            };
            self.feed.publish_event(number, event).await;
        }
        Ok(())
    }

    /// The stream ended with final `headers` (trailers, or a trailers-only response when
    /// `status` is given): the subscription's end, or a break to resume from.
    fn ended(
        &mut self,
        lease: &Lease,
        headers: &HeaderMap,
        first: bool,
        status: Option<http::StatusCode>,
    ) -> Stopped {
        let answered = record_final_status(lease, headers, &Arc::from(SHARED_WITNESS));
        let code = status_code(headers).unwrap_or(0);
        let elsewhere = matches!(answered.answer, Answer::Pushback | Answer::Misconfigured);
        let unavailable =
            code == Code::Unavailable as u32 && self.start.options.resume_on_unavailable;
        // A resumed stream refused before its first message: this endpoint cannot replay.
        let refused = self.resumed && !self.delivered && code != 0;
        if self.feed.extra.known && (elsewhere || unavailable || refused) {
            return Err(Ok(Broken {
                refused: refused || elsewhere,
                reason: answered.status,
            }));
        }
        let mut trailers = grpc::headers::response_headers(headers);
        if let Some(attribution) = self.attribution {
            attribution.stamp_trailers(&mut trailers);
        }
        if let Some(status) = status
            && first
        {
            // A trailers-only answer to the first stream: every subscriber gets it as such.
            let mut ended = response_head(status, headers);
            if let Some(attribution) = self.attribution {
                attribution.stamp_response(ended.headers_mut(), true);
            }
            self.feed.head.send_replace(Some(Head::Ended(ended)));
        }
        Ok(trailers)
    }
}

/// Resolves when a pack's merged request changes; never for other feeds.
async fn changed(feed: &Feed) {
    match &feed.extra.pack {
        Some(pack) => pack.changed.notified().await,
        None => std::future::pending().await,
    }
}

/// A stream that broke: a failure of its connection or stream, counted against them.
fn broke(ctx: &Context, lease: &Lease, error: &h2::Error) -> Stopped {
    lease.failed(FailureKind::Reset);
    ctx.stats.incr(|s| &s.upstream_failures_total);
    Err(Ok(Broken {
        refused: false,
        reason: upstream_failure(error).message,
    }))
}
