//! Bidirectional subscriptions: methods configured with `share` and `bidi`, whose request
//! stream stays open for pings and subscription changes (Yellowstone's `Subscribe`).
//!
//! The resumer plugin knows the protocol; the host only asks it. The monitor's first request
//! message is the subscription: the resumer gives its share key, and monitors with equal keys
//! (and equal key metadata, credentials included) ride one upstream stream, a feed. A
//! subscription the resumer says must not be shared, or does not know, gets a private feed
//! that forwards every later request message upstream.
//!
//! While subscribed, each request message is classified again:
//! - a ping is answered by Sluice with the resumer's reply, never sent upstream;
//! - the same subscription again changes nothing;
//! - a different one moves the monitor off a shared feed, make-before-break: a private feed
//!   starts from the last position the monitor has (the resumer rewrites the subscription, e.g.
//!   Yellowstone's `from_slot`) and drops what the monitor already has by key, then the
//!   monitor leaves the shared feed.
//!
//! A feed that breaks resumes by itself (`feed`), so its subscribers see one stream. Like
//! `share`, this relay opens upstream streams through `upstream` and fans out through
//! `fanout`; it never uses `call`, `share` or `resumable`.

mod feed;
mod marks;
mod pack;

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Request;
use parking_lot::Mutex;
use sluice_config::{EndpointConfig, MethodConfig};
use sluice_contract::resume::{RequestKind, Subscription};
use tokio::sync::{broadcast, mpsc};

use super::fanout::{Event, Joined, Membership, ShareKey, ShareOptions};
use super::pump::{self, PumpError};
use super::request::request_timed_out;
use super::upstream::{CallSetup, End, cut_off_lagging, must_end};
use crate::Context;
use crate::grpc::{self, Code, MessageSplitter, PREFIX_LEN, Status, frame};
use feed::FeedStart;
pub(crate) use feed::FeedState;
use marks::Marks;
pub(crate) use pack::PackRegistry;
use pack::{Joining, Packed, Seat};

/// Keys of published messages a feed remembers at least, whatever `dedup_window` says: enough
/// for a resumer's look-back of a few slots.
const MIN_DEDUP_WINDOW: usize = 4096;

/// Request messages a private feed's subscriber may have on their way upstream.
pub(super) const FORWARD_QUEUE: usize = 16;

/// The registry of running feeds.
pub(crate) type SubscriptionRegistry = super::fanout::ShareRegistry<FeedState>;

/// A subscription method's options.
#[derive(Debug, Clone)]
pub(super) struct SubscriptionOptions {
    share: ShareOptions,
    resume_attempts: u32,
    resume_timeout: Duration,
    resume_on_unavailable: bool,
    dedup_window: usize,
    /// Pack different subscriptions (`pack`), up to `capacity` filters each.
    pack: bool,
    capacity: u32,
}

impl SubscriptionOptions {
    /// The options of `method`; packs hold at most the smallest
    /// `max_filters_per_subscription` of `endpoints`.
    pub(super) fn from_config(method: &MethodConfig, endpoints: &[EndpointConfig]) -> Self {
        Self {
            share: ShareOptions::from_config(method),
            resume_attempts: method.resume_attempts,
            resume_timeout: method.resume_timeout,
            resume_on_unavailable: method.resume_on_unavailable,
            dedup_window: method.dedup_window.max(MIN_DEDUP_WINDOW),
            pack: method.pack,
            capacity: endpoints
                .iter()
                .filter_map(|e| e.limits.max_filters_per_subscription)
                .min()
                .unwrap_or(u32::MAX),
        }
    }

    /// What a monitor with `subscription` (request payload `payload`) brings to a pack, when
    /// this method packs and the resumer says it may be packed.
    fn joining(
        &self,
        group: ShareKey,
        subscription: &Subscription,
        payload: Bytes,
    ) -> Option<Joining> {
        let (Some(share_key), Some(packing)) = (&subscription.share_key, &subscription.packing)
        else {
            return None;
        };
        self.pack.then(|| Joining {
            group: ShareKey {
                request: packing.group.clone(),
                ..group
            },
            share_key: share_key.clone(),
            subscription: payload,
            filters: packing.filters,
            capacity: self.capacity,
        })
    }
}

/// Reads a monitor's request messages one by one, releasing flow control as it goes.
struct Requests {
    splitter: MessageSplitter,
}

impl Requests {
    /// The next whole message; `None` when the monitor ended its request stream. Cancel-safe.
    async fn next(&mut self, body: &mut RecvStream) -> Result<Option<Bytes>, End> {
        loop {
            let message = self.splitter.next_message().map_err(|e| {
                End::MonitorFault(Status::resource_exhausted(format!("request rejected: {e}")))
            })?;
            if let Some(message) = message {
                return Ok(Some(message));
            }
            match body.data().await {
                None => {
                    self.splitter.finish().map_err(|e| {
                        End::MonitorFault(Status::new(
                            Code::InvalidArgument,
                            format!("request rejected: {e}"),
                        ))
                    })?;
                    return Ok(None);
                }
                Some(Err(_)) => return Err(End::Cancelled),
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.splitter.push(chunk);
                }
            }
        }
    }
}

/// What the resumer says a framed request message is (`Unknown` when compressed: the resumer
/// reads plain protobuf only).
fn classify(ctx: &Context, path: &str, message: &Bytes) -> RequestKind {
    if message.first() != Some(&0) {
        return RequestKind::Unknown;
    }
    ctx.resumer.classify(path, &message.slice(PREFIX_LEN..))
}

/// One subscriber's place: the feed it rides and what it has delivered from it.
struct Place {
    membership: Membership<FeedState>,
    events: broadcast::Receiver<Event>,
    /// The share key of its subscription on a shared or packed feed; `None` on a private one.
    key: Option<Bytes>,
    /// The number of the last message handed to the monitor.
    delivered: u64,
    /// On a packed feed: its seat, its packing group, and the tag of the subscription it had
    /// before a change, whose updates it takes until the first one for its new tag arrives
    /// (the provider applies a change when it gets to it, as for a direct subscriber).
    seat: Option<Seat>,
    group: Option<ShareKey>,
    previous_tag: Option<u32>,
}

/// Serves one subscriber.
pub(super) async fn serve(
    ctx: Arc<Context>,
    setup: CallSetup,
    options: SubscriptionOptions,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> End {
    let (parts, mut body) = request.into_parts();
    let Some(path) = parts.uri.path_and_query().cloned() else {
        // Unreachable for HTTP/2 (`:path` is mandatory).
        let status = Status::new(Code::InvalidArgument, "request has no path");
        let _ = respond.send_response(status.to_response(), true);
        return End::Failed(status);
    };
    let mut requests = Requests {
        splitter: MessageSplitter::new(setup.max_message_bytes),
    };
    let request_timeout = ctx.config.server.request_timeout;
    let first = tokio::select! {
        first = requests.next(&mut body) => first,
        status = must_end(&ctx, setup.deadline) => Err(End::Failed(status)),
        () = tokio::time::sleep(request_timeout) => {
            Err(End::Failed(request_timed_out(&ctx, request_timeout)))
        }
    };
    let first = match first {
        Ok(Some(first)) => first,
        Ok(None) => {
            let status = Status::new(
                Code::InvalidArgument,
                "a subscription needs a request message",
            );
            let _ = respond.send_response(status.to_response(), true);
            return End::MonitorFault(status);
        }
        Err(end) => {
            if let End::Failed(status) | End::MonitorFault(status) = &end {
                let _ = respond.send_response(status.to_response(), true);
            }
            return end;
        }
    };
    let mut headers = grpc::headers::request_headers(&parts.headers, 4);
    // Each subscriber's deadline is enforced here; the upstream stream has none.
    headers.remove("grpc-timeout");
    let metadata = options
        .share
        .key_metadata
        .iter()
        .map(|name| parts.headers.get(name).cloned())
        .collect();
    drop(parts);

    let subscription = match classify(&ctx, &setup.path, &first) {
        RequestKind::Subscribe(subscription) => Some(subscription),
        RequestKind::Ping(_) | RequestKind::Unknown => None,
    };
    let group = ShareKey {
        path: Arc::clone(&setup.path),
        request: Bytes::new(),
        metadata,
    };
    let joining = subscription
        .as_ref()
        .and_then(|s| options.joining(group.clone(), s, first.slice(PREFIX_LEN..)));
    let packed = joining.and_then(|joining| {
        let group = joining.group.clone();
        ctx.packs
            .join(&ctx, &options, joining)
            .map(|packed| (packed, group))
    });
    let key = subscription.as_ref().and_then(|s| s.share_key.clone());
    let (joined, seat, pack_group, start) = match packed {
        Some((
            Packed {
                joined,
                seat,
                start,
            },
            group,
        )) => {
            let start = start.map(|(request, receiver)| (frame(&request), receiver));
            (joined, Some(seat), Some(group), start)
        }
        None => {
            let known = subscription.is_some();
            let mut forward_to = None;
            let mut state = |known: bool| {
                let (sender, receiver) = mpsc::channel(FORWARD_QUEUE);
                forward_to = Some(receiver);
                FeedState {
                    marks: Mutex::new(Marks::new(options.dedup_window)),
                    requests: sender,
                    known,
                    pack: None,
                }
            };
            let joined = match &key {
                Some(key) => ctx.subscriptions.join(
                    &ctx.stats,
                    ShareKey {
                        request: key.clone(),
                        ..group
                    },
                    options.share.buffer,
                    || state(true),
                ),
                None => ctx
                    .subscriptions
                    .private(&ctx.stats, options.share.buffer, state(known)),
            };
            let start = joined
                .is_new
                .then(|| forward_to.take().map(|receiver| (first, receiver)))
                .flatten();
            (joined, None, None, start)
        }
    };
    let Joined {
        membership, events, ..
    } = joined;
    match start {
        Some((subscription, receiver)) => {
            let start = FeedStart {
                profile: setup.profile.clone(),
                opener: setup.stream,
                path: path.clone(),
                headers: headers.clone(),
                subscription,
                catchup: None,
                max_message_bytes: setup.max_message_bytes,
                options: options.clone(),
            };
            tokio::spawn(feed::run(
                Arc::clone(&ctx),
                Arc::clone(&membership.stream),
                start,
                receiver,
            ));
        }
        None => {
            ctx.stats.incr(|s| &s.shared_joins_total);
            tracing::debug!(packed = seat.is_some(), "joined a running subscription");
        }
    }

    let downstream = match membership
        .stream
        .answer(&ctx, &mut respond, setup.deadline)
        .await
    {
        Ok(downstream) => downstream,
        Err(end) => return end,
    };
    setup.monitor.answered();
    let place = Place {
        membership,
        events,
        key,
        delivered: 0,
        seat,
        group: pack_group,
        previous_tag: None,
    };
    let mut relay = Relay {
        ctx: &ctx,
        setup: &setup,
        options: &options,
        path,
        headers,
        downstream,
        place,
    };
    relay.run(&mut body, &mut requests).await
}

/// A subscriber with its response headers sent: relaying until it ends.
struct Relay<'a> {
    ctx: &'a Arc<Context>,
    setup: &'a CallSetup,
    options: &'a SubscriptionOptions,
    path: http::uri::PathAndQuery,
    headers: http::HeaderMap,
    downstream: SendStream<Bytes>,
    place: Place,
}

/// How a subscriber ends: the trailers it gets and whether it is at fault, or `None` when it
/// left.
type Ending = Option<(http::HeaderMap, bool)>;

impl Relay<'_> {
    async fn run(&mut self, body: &mut RecvStream, requests: &mut Requests) -> End {
        let ending_early = must_end(self.ctx, self.setup.deadline);
        tokio::pin!(ending_early);
        let mut request_open = true;
        let ending: Ending = loop {
            tokio::select! {
                event = self.place.events.recv() => {
                    if let Some(ending) = self.deliver(event).await {
                        break ending;
                    }
                }
                request = requests.next(body), if request_open => match request {
                    Ok(Some(message)) => {
                        if let Err(status) = self.on_request(message).await {
                            break Some((status.to_trailers(), false));
                        }
                    }
                    // A monitor that half-closes keeps its subscription.
                    Ok(None) => request_open = false,
                    Err(End::Cancelled) => break None,
                    Err(End::MonitorFault(status)) => break Some((status.to_trailers(), true)),
                    Err(_) => break None,
                },
                _ = poll_fn(|cx| self.downstream.poll_reset(cx)) => break None,
                status = &mut ending_early => break Some((status.to_trailers(), false)),
            }
        };
        match ending {
            Some((trailers, at_fault)) => {
                let _ = self.downstream.send_trailers(trailers);
                if at_fault {
                    End::MonitorFault(Status::resource_exhausted("the subscriber broke a rule"))
                } else {
                    End::Completed(false)
                }
            }
            None => End::Cancelled,
        }
    }

    /// Hands one event to the monitor; `Some` when the subscriber ends.
    async fn deliver(
        &mut self,
        event: Result<Event, broadcast::error::RecvError>,
    ) -> Option<Ending> {
        match event {
            Ok(Event::Message(number, message)) => self.hand_over(number, message).await,
            Ok(Event::Routed(number, routes)) => {
                let tag = self.place.seat.as_ref().map(|seat| seat.tag);
                let mine = routes.iter().find(|(t, _)| Some(*t) == tag);
                if mine.is_some() {
                    self.place.previous_tag = None;
                }
                let mine = mine.or_else(|| {
                    let previous = self.place.previous_tag?;
                    routes.iter().find(|(t, _)| *t == previous)
                });
                match mine {
                    Some((_, message)) => {
                        let message = message.clone();
                        self.hand_over(number, message).await
                    }
                    None => {
                        self.place.delivered = number;
                        self.place.membership.stream.mark_delivered(number);
                        None
                    }
                }
            }
            Ok(Event::End(trailers)) => Some(Some(((*trailers).clone(), false))),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.ctx.stats.incr(|s| &s.lagging_disconnects_total);
                Some(Some((
                    Status::resource_exhausted(format!(
                        "lagging: fell {missed} messages behind the shared subscription"
                    ))
                    .to_trailers(),
                    true,
                )))
            }
            Err(broadcast::error::RecvError::Closed) => Some(Some((
                Status::unavailable("upstream subscription ended without a status").to_trailers(),
                false,
            ))),
        }
    }

    /// Hands message `number` to the monitor; `Some` when the subscriber ends.
    async fn hand_over(&mut self, number: u64, message: Bytes) -> Option<Ending> {
        let len = message.len() as u64;
        match self.send(message).await {
            Ok(()) => {
                self.ctx
                    .stats
                    .bytes_to_monitors_total
                    .fetch_add(len, Relaxed);
                self.setup.profile.traffic.record(len, 1);
                self.place.delivered = number;
                self.place.membership.stream.mark_delivered(number);
                None
            }
            Err(PumpError::Lagging(waited)) => Some(Some((
                cut_off_lagging(self.ctx, waited).to_trailers(),
                true,
            ))),
            Err(_) => Some(None),
        }
    }

    async fn send(&mut self, framed: Bytes) -> Result<(), PumpError> {
        pump::send_all(&mut self.downstream, framed, self.setup.on_full, false).await
    }

    /// Handles one request message of a subscribed monitor.
    async fn on_request(&mut self, message: Bytes) -> Result<(), Status> {
        let kind = classify(self.ctx, &self.setup.path, &message);
        let private = self.place.key.is_none();
        match kind {
            RequestKind::Ping(reply) => {
                self.ctx
                    .stats
                    .incr(|s| &s.subscription_pings_answered_total);
                if let Some(reply) = reply
                    && let Err(e) = self.send(frame(&reply)).await
                {
                    return Err(Status::unavailable(format!("answering a ping failed: {e}")));
                }
                Ok(())
            }
            RequestKind::Subscribe(subscription)
                if subscription.share_key.is_some() && subscription.share_key == self.place.key =>
            {
                Ok(())
            }
            RequestKind::Subscribe(subscription)
                if self.place.seat.is_some() && self.reseat(&subscription, &message) =>
            {
                Ok(())
            }
            RequestKind::Subscribe(_) if private => {
                self.forward(message, true).await;
                Ok(())
            }
            RequestKind::Unknown if private => {
                self.forward(message, false).await;
                Ok(())
            }
            RequestKind::Subscribe(_) => {
                self.move_to_own_feed(message);
                Ok(())
            }
            RequestKind::Unknown => Err(Status::unavailable(
                "a request message of this shared subscription could not be read by the \
                 resumer; subscribe again",
            )),
        }
    }

    /// Moves a packed subscriber's seat to its new `subscription` within its pack, when that
    /// has room; whether it did. The old seat goes only once the new one is in.
    fn reseat(&mut self, subscription: &Subscription, message: &Bytes) -> bool {
        let Some(group) = self.place.group.clone() else {
            return false;
        };
        let Some(joining) =
            self.options
                .joining(group.clone(), subscription, message.slice(PREFIX_LEN..))
        else {
            return false;
        };
        if joining.group != group {
            return false;
        }
        let Some(seat) = pack::seat_in(
            self.ctx,
            &self.place.membership.stream,
            &joining,
            self.place.seat.as_mut(),
        ) else {
            return false;
        };
        let old = self.place.seat.replace(seat);
        self.place.previous_tag = old.as_ref().map(|seat| seat.tag);
        self.place.key = Some(joining.share_key);
        drop(old);
        tracing::debug!("packed subscription changed in place");
        true
    }

    /// Sends a request message up a private feed's stream.
    async fn forward(&self, message: Bytes, is_subscription: bool) {
        let len = message.len() as u64;
        if self
            .place
            .membership
            .stream
            .extra
            .requests
            .send((message, is_subscription))
            .await
            .is_ok()
        {
            self.ctx
                .stats
                .bytes_to_upstream_total
                .fetch_add(len, Relaxed);
        }
    }

    /// Moves the subscriber off its shared feed onto a private one that starts where it was.
    fn move_to_own_feed(&mut self, subscription: Bytes) {
        let (catchup, last) = self
            .place
            .membership
            .stream
            .extra
            .marks
            .lock()
            .catchup(self.place.delivered);
        let (sender, receiver) = mpsc::channel(FORWARD_QUEUE);
        let state = FeedState {
            marks: Mutex::new(Marks::new(self.options.dedup_window)),
            requests: sender,
            known: true,
            pack: None,
        };
        let joined =
            self.ctx
                .subscriptions
                .private(&self.ctx.stats, self.options.share.buffer, state);
        let start = FeedStart {
            profile: self.setup.profile.clone(),
            opener: self.setup.stream,
            path: self.path.clone(),
            headers: self.headers.clone(),
            subscription,
            catchup: Some((catchup, last)),
            max_message_bytes: self.setup.max_message_bytes,
            options: self.options.clone(),
        };
        tokio::spawn(feed::run(
            Arc::clone(self.ctx),
            Arc::clone(&joined.membership.stream),
            start,
            receiver,
        ));
        self.ctx.stats.incr(|s| &s.subscription_moves_total);
        tracing::debug!(
            delivered = self.place.delivered,
            "subscription changed: moved to a stream of its own"
        );
        // Make before break: the old membership goes only now that the new feed runs.
        self.place = Place {
            membership: joined.membership,
            events: joined.events,
            key: None,
            delivered: 0,
            seat: None,
            group: None,
            previous_tag: None,
        };
    }
}
