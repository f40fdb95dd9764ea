//! The `sluice.feed.v1.Feed` service: its four methods and the faults injected into them.

use crate::quota::StreamQuota;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_stream::Stream;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::pb::feed_server::Feed;
use crate::pb::{ChatMessage, CollectReply, EchoReply, EchoRequest, Event, SubscribeRequest};
use crate::{FeedConfig, FeedStats, headers};

/// Longest pacing period; keeps `Duration` arithmetic far from overflow for tiny rates (idle
/// streams use 0.0001/s).
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// Implements the Feed service for one server.
pub(crate) struct FeedService {
    config: FeedConfig,
    stats: Arc<FeedStats>,
    /// Counts calls for the deterministic `error_rate` decision.
    fault_counter: AtomicU64,
    /// Becomes true when the server shuts down gracefully; Subscribe streams then end.
    drain: watch::Receiver<bool>,
    /// The status every call gets now, if the server refuses them ([`crate::Refusal`]).
    refusal: watch::Receiver<Option<crate::Refusal>>,
    /// The stream-creation rate of [`crate::ProviderLimits`], when set.
    quota: Option<StreamQuota>,
}

/// What the request metadata asked for.
#[derive(Debug, Default)]
struct Controls {
    delay: Option<Duration>,
    disconnect_after: Option<u64>,
}

impl FeedService {
    pub(crate) fn new(
        config: FeedConfig,
        stats: Arc<FeedStats>,
        drain: watch::Receiver<bool>,
        refusal: watch::Receiver<Option<crate::Refusal>>,
    ) -> Self {
        FeedService {
            quota: StreamQuota::new(&config.limits),
            config,
            stats,
            fault_counter: AtomicU64::new(0),
            drain,
            refusal,
        }
    }

    /// Common start of every call: counts it, records its metadata, applies the injected
    /// failures and the configured latency. Returns the ASCII metadata and the per-call controls.
    async fn begin(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Vec<(String, String)>, Controls), Status> {
        self.stats.calls_total.fetch_add(1, Ordering::Relaxed);
        let ascii = ascii_metadata(metadata);
        self.stats.set_last_metadata(ascii.clone());

        if let Some(quota) = &self.quota
            && !quota.admit()
        {
            self.stats.rate_violations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("call over the stream-creation rate limit refused");
            return Err(Status::resource_exhausted(
                "stream creation rate limit exceeded (provider limit)",
            ));
        }
        let refusal = *self.refusal.borrow();
        if let Some(refusal) = refusal {
            self.stats.calls_refused.fetch_add(1, Ordering::Relaxed);
            let mut status = Status::new(refusal.code, "refused by the server (injected)");
            if let Some(Ok(value)) = refusal.pushback_ms.map(|ms| ms.to_string().parse()) {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
            return Err(status);
        }
        if let Some(status) = injected_failure(metadata)? {
            self.stats
                .calls_failed_injected
                .fetch_add(1, Ordering::Relaxed);
            return Err(status);
        }
        if self.rate_says_fail() {
            self.stats
                .calls_failed_injected
                .fetch_add(1, Ordering::Relaxed);
            return Err(Status::unavailable("injected error (error_rate)"));
        }
        let controls = Controls {
            delay: parse_header::<u64>(metadata, headers::DELAY_MS)?.map(Duration::from_millis),
            disconnect_after: parse_header::<u64>(metadata, headers::DISCONNECT_AFTER)?,
        };
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        Ok((ascii, controls))
    }

    /// Call n (from 0) fails when floor((n+1)·rate) > floor(n·rate): exactly `rate` of the calls
    /// over any long run, evenly spread, and reproducible from one run to the next.
    fn rate_says_fail(&self) -> bool {
        let rate = self.config.error_rate;
        if rate <= 0.0 {
            return false;
        }
        let n = self.fault_counter.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * rate).floor() > (n * rate).floor()
    }
}

#[tonic::async_trait]
impl Feed for FeedService {
    type SubscribeStream = SubscribeStream;
    type WatchStream = SubscribeStream;
    type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (_, controls) = self.begin(request.metadata()).await?;
        let req = request.into_inner();

        let ticker = if req.rate > 0.0 && req.rate.is_finite() {
            let period = Duration::try_from_secs_f64(1.0 / req.rate)
                .unwrap_or(MAX_PERIOD)
                .clamp(Duration::from_nanos(1), MAX_PERIOD);
            let mut ticker = tokio::time::interval(period);
            // Burst keeps the average rate right when the timer wheel (1 ms granularity) is
            // coarser than the period: events due in the same millisecond go out together.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            Some(ticker)
        } else if req.rate == 0.0 {
            None
        } else {
            return Err(Status::invalid_argument(format!(
                "rate must be a finite number >= 0, got {}",
                req.rate
            )));
        };

        // A per-call header overrides the server setting; 0 there means "never".
        let disconnect_after = match controls.disconnect_after {
            Some(0) => None,
            Some(n) => Some(n),
            None => self.config.disconnect_after.filter(|n| *n > 0),
        };

        let mut drain = self.drain.clone();
        let stream = SubscribeStream {
            stats: self.stats.clone(),
            next_seq: req.from_seq,
            sent: 0,
            count: (req.count > 0).then_some(req.count),
            disconnect_after,
            payload: Bytes::from(vec![0x5a_u8; req.payload_bytes as usize]),
            topic: req.topic,
            ticker,
            delay: controls.delay.map(|period| Delay {
                period,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                state: DelayState::Idle,
            }),
            drain: Box::pin(async move {
                // Either the value turns true or the handle (the sender) is gone: both mean stop.
                let _ = drain.wait_for(|draining| *draining).await;
            }),
            done: false,
        };
        self.stats.subscribe_started.fetch_add(1, Ordering::Relaxed);
        let active = self.stats.subscribe_active.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats
            .subscribe_peak
            .fetch_max(active, Ordering::Relaxed);
        Ok(Response::new(stream))
    }

    async fn watch(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.subscribe(request).await
    }

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let (_, controls) = self.begin(request.metadata()).await?;
        let stats = self.stats.clone();
        let delay = controls.delay;
        // The reply stream ends when the inbound one does (client half-close), or with the
        // inbound error.
        let replies = request.into_inner().then(move |message| {
            let stats = stats.clone();
            async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let message = message?;
                stats.chat_messages.fetch_add(1, Ordering::Relaxed);
                Ok(ChatMessage {
                    sent_at_ns: now_ns(),
                    ..message
                })
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let (metadata, controls) = self.begin(request.metadata()).await?;
        if let Some(delay) = controls.delay {
            tokio::time::sleep(delay).await;
        }
        let req = request.into_inner();
        Ok(Response::new(EchoReply {
            payload: req.payload,
            text: req.text,
            metadata: metadata.into_iter().collect::<HashMap<_, _>>(),
        }))
    }

    async fn collect(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<CollectReply>, Status> {
        let (_, controls) = self.begin(request.metadata()).await?;
        let mut inbound = request.into_inner();
        let mut reply = CollectReply::default();
        while let Some(message) = inbound.message().await? {
            reply.messages += 1;
            reply.bytes += (message.payload.len() + message.text.len()) as u64;
            self.stats.collect_messages.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(delay) = controls.delay {
            tokio::time::sleep(delay).await;
        }
        Ok(Response::new(reply))
    }
}

/// The ASCII entries of `metadata` as (name, value) pairs; binary entries and values that are
/// not visible ASCII are left out.
fn ascii_metadata(metadata: &MetadataMap) -> Vec<(String, String)> {
    metadata
        .iter()
        .filter_map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => value
                .to_str()
                .ok()
                .map(|value| (key.as_str().to_owned(), value.to_owned())),
            KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

/// Parses an optional numeric request header; a malformed value fails the call, since a test
/// that sent it expects it to take effect.
fn parse_header<T: std::str::FromStr>(
    metadata: &MetadataMap,
    name: &str,
) -> Result<Option<T>, Status> {
    let Some(value) = metadata.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("{name}: expected a number")))
}

/// The status asked for by `x-feed-fail-code`, if any, with its message, details and trailer.
fn injected_failure(metadata: &MetadataMap) -> Result<Option<Status>, Status> {
    let Some(code) = parse_header::<i32>(metadata, headers::FAIL_CODE)? else {
        return Ok(None);
    };
    let message = metadata
        .get(headers::FAIL_MESSAGE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("injected failure")
        .to_owned();
    let mut trailers = MetadataMap::new();
    trailers.insert(headers::DETAIL, MetadataValue::from_static("injected"));
    Ok(Some(Status::with_details_and_metadata(
        Code::from_i32(code),
        message,
        Bytes::from_static(headers::INJECTED_DETAILS),
        trailers,
    )))
}

/// Wall-clock nanoseconds since the Unix epoch; 0 if the clock is before 1970.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The per-event delay of a Subscribe stream (`x-feed-delay-ms`).
struct Delay {
    period: Duration,
    sleep: Pin<Box<Sleep>>,
    state: DelayState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DelayState {
    /// No sleep started for the next event.
    Idle,
    /// Sleeping before the next event.
    Sleeping,
    /// Slept; the next event may go once the pacing allows.
    Elapsed,
}

/// The events of one Subscribe call.
///
/// A hand-written stream rather than a task feeding a channel: events are made only when the
/// transport asks for the next one, so `sent_at_ns` is taken right before encoding, nothing is
/// produced for a client that stopped reading, and a cancelled call simply drops the stream
/// (counted as a cancellation when it had not ended by itself).
pub(crate) struct SubscribeStream {
    stats: Arc<FeedStats>,
    next_seq: u64,
    sent: u64,
    count: Option<u64>,
    disconnect_after: Option<u64>,
    /// Shared by every event: cloning `Bytes` is a reference count, not a copy.
    payload: Bytes,
    topic: String,
    ticker: Option<Interval>,
    delay: Option<Delay>,
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Stream for SubscribeStream {
    type Item = Result<Event, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.drain.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(Status::unavailable("server shutting down"))));
        }
        if this.count.is_some_and(|count| this.sent >= count) {
            this.done = true;
            return Poll::Ready(None);
        }
        if this.disconnect_after.is_some_and(|n| this.sent >= n) {
            this.done = true;
            this.stats
                .disconnects_injected
                .fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Status::unavailable("injected disconnect"))));
        }
        if let Some(delay) = &mut this.delay {
            if delay.state == DelayState::Idle {
                let deadline = Instant::now() + delay.period;
                delay.sleep.as_mut().reset(deadline);
                delay.state = DelayState::Sleeping;
            }
            if delay.state == DelayState::Sleeping {
                ready!(delay.sleep.as_mut().poll(cx));
                delay.state = DelayState::Elapsed;
            }
        }
        if let Some(ticker) = &mut this.ticker {
            ready!(ticker.poll_tick(cx));
        }
        if let Some(delay) = &mut this.delay {
            delay.state = DelayState::Idle;
        }

        let event = Event {
            seq: this.next_seq,
            sent_at_ns: now_ns(),
            payload: this.payload.clone(),
            topic: this.topic.clone(),
        };
        this.next_seq = this.next_seq.wrapping_add(1);
        this.sent += 1;
        this.stats.events_sent.fetch_add(1, Ordering::Relaxed);
        // Ending as soon as the last event is out means a client that hangs up right after it
        // is not counted as a cancellation.
        if this.count.is_some_and(|count| this.sent >= count) {
            this.done = true;
        }
        Poll::Ready(Some(Ok(event)))
    }
}

impl Drop for SubscribeStream {
    fn drop(&mut self) {
        self.stats.subscribe_active.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            self.stats
                .subscribe_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
