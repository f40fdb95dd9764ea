//! Fan-out: one upstream stream's messages delivered to many subscribers, and the registry
//! that finds the running stream a new subscriber may join.
//!
//! A [`SharedStream`] carries the upstream's answer ([`Head`]) and its messages ([`Event`]s,
//! numbered from 1) on a bounded broadcast ring, and paces the upstream to its fastest
//! subscriber: the publisher waits while the fastest is more than half a ring behind. The
//! stream is cancelled when its last [`Membership`] is dropped. `X` is what the relay using it
//! keeps per stream (nothing for plain sharing; marks and a request channel for
//! subscriptions).
//!
//! It also holds what keys a shared stream ([`ShareOptions`], [`ShareKey`]). This module only
//! fans out: opening and reading the upstream stream, and serving a subscriber, are the
//! relays' (`share`, `subscription`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use h2::SendStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use parking_lot::Mutex;
use sluice_config::MethodConfig;
use tokio::sync::{Notify, broadcast, watch};

use super::upstream::{End, must_end};
use crate::Context;
use crate::grpc::Status;
use crate::stats::{GaugeGuard, Stats};

/// The sharing options of a method.
#[derive(Debug, Clone)]
pub(super) struct ShareOptions {
    pub key_metadata: Vec<HeaderName>,
    pub buffer: usize,
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

/// What makes two requests the same subscription: the method, the request (or a share key
/// standing for it) and the key metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ShareKey {
    pub path: Arc<str>,
    pub request: Bytes,
    pub metadata: Vec<Option<HeaderValue>>,
}

/// How the upstream answered, as every subscriber must see it.
#[derive(Debug, Clone)]
pub(super) enum Head {
    /// Response headers; messages follow.
    Headers(StatusCode, HeaderMap),
    /// The stream ended before any message: a trailers-only response.
    Ended(Response<()>),
}

#[derive(Debug, Clone)]
pub(super) enum Event {
    /// A whole framed message for every subscriber, and its number in the stream (from 1).
    Message(u64, Bytes),
    /// A message for some subscribers only, each group (by tag) with its own version: the
    /// members of a packed subscription. Numbered like `Message`.
    Routed(u64, Arc<[(u32, Bytes)]>),
    End(Arc<HeaderMap>),
}

/// One upstream stream and its subscribers.
pub(super) struct SharedStream<X> {
    /// `None` for a stream no one else may join.
    key: Option<ShareKey>,
    pub events: broadcast::Sender<Event>,
    pub head: watch::Sender<Option<Head>>,
    subscribers: AtomicUsize,
    pub cancel: Notify,
    /// The number of the last message published to subscribers.
    pub published: AtomicU64,
    /// The highest number any subscriber has handed to its monitor.
    delivered: AtomicU64,
    /// Signalled when `delivered` moves.
    progress: Notify,
    /// How far the upstream may run ahead of the fastest subscriber, in messages.
    lead: u64,
    /// The relay's own state of this stream.
    pub extra: X,
}

impl<X> SharedStream<X> {
    fn new(
        key: Option<ShareKey>,
        buffer: usize,
        extra: X,
    ) -> (Arc<Self>, broadcast::Receiver<Event>) {
        let (events, receiver) = broadcast::channel(buffer.max(1));
        let stream = Arc::new(Self {
            key,
            events,
            head: watch::Sender::new(None),
            subscribers: AtomicUsize::new(1),
            cancel: Notify::new(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            progress: Notify::new(),
            lead: (buffer as u64 / 2).max(1),
            extra,
        });
        (stream, receiver)
    }

    /// Records that a subscriber is at message `number`, waking the publisher if that is a new
    /// best.
    pub fn mark_delivered(&self, number: u64) {
        if self.delivered.fetch_max(number, Relaxed) < number {
            self.progress.notify_one();
        }
    }

    /// Waits until publishing message `number` keeps the fastest subscriber within `lead`.
    pub async fn wait_for_fastest(&self, number: u64) {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if number <= self.delivered.load(Relaxed) + self.lead {
                return;
            }
            progressed.await;
        }
    }

    /// Waits for the upstream's answer and hands it to a subscriber: its response headers
    /// (then `Ok` with the stream to send messages on), or the status the call ends with.
    pub async fn answer(
        &self,
        ctx: &Context,
        respond: &mut SendResponse<Bytes>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<SendStream<Bytes>, End> {
        let mut head = self.head.subscribe();
        let head = tokio::select! {
            head = head.wait_for(Option::is_some) => head.ok().and_then(|h| h.clone()),
            _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(End::Cancelled),
            status = must_end(ctx, deadline) => {
                let _ = respond.send_response(status.to_response(), true);
                return Err(End::Failed(status));
            }
        };
        let (status, headers) = match head {
            Some(Head::Headers(status, headers)) => (status, headers),
            Some(Head::Ended(response)) => {
                let _ = respond.send_response(response, true);
                // A shared stream's status is every subscriber's: no one monitor caused it.
                return Err(End::Completed(false));
            }
            None => {
                let status = Status::unavailable("shared upstream stream ended unexpectedly");
                let _ = respond.send_response(status.to_response(), true);
                return Err(End::Failed(status));
            }
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        respond
            .send_response(response, false)
            .map_err(|_| End::Cancelled)
    }

    /// Publishes message `number` once the fastest subscriber is close enough.
    pub async fn publish(&self, number: u64, message: Bytes) {
        self.publish_event(number, Event::Message(number, message))
            .await;
    }

    /// Publishes `event`, message `number`, once the fastest subscriber is close enough.
    pub async fn publish_event(&self, number: u64, event: Event) {
        self.wait_for_fastest(number).await;
        self.published.store(number, Relaxed);
        // No receiver only means every subscriber is between leaving and the cancel.
        let _ = self.events.send(event);
    }
}

/// The shared streams currently running.
pub(crate) struct ShareRegistry<X> {
    streams: Mutex<HashMap<ShareKey, Arc<SharedStream<X>>>>,
}

impl<X> Default for ShareRegistry<X> {
    fn default() -> Self {
        Self {
            streams: Mutex::default(),
        }
    }
}

/// A subscriber's membership; leaving last cancels the upstream stream.
pub(super) struct Membership<X> {
    registry: Arc<ShareRegistry<X>>,
    pub stream: Arc<SharedStream<X>>,
    _gauge: GaugeGuard,
}

impl<X> Drop for Membership<X> {
    fn drop(&mut self) {
        let mut streams = self.registry.streams.lock();
        if self.stream.subscribers.fetch_sub(1, Relaxed) == 1 {
            if let Some(key) = &self.stream.key
                && streams
                    .get(key)
                    .is_some_and(|s| Arc::ptr_eq(s, &self.stream))
            {
                streams.remove(key);
            }
            self.stream.cancel.notify_one();
        }
    }
}

/// A subscriber's place on a stream: its membership, its receiver, and whether it must start
/// the stream.
pub(super) struct Joined<X> {
    pub membership: Membership<X>,
    pub events: broadcast::Receiver<Event>,
    pub is_new: bool,
}

impl<X> ShareRegistry<X> {
    /// Joins the running stream for `key`, or registers a new one with `extra` (`is_new`: the
    /// caller must start it).
    pub(super) fn join(
        self: &Arc<Self>,
        stats: &Arc<Stats>,
        key: ShareKey,
        buffer: usize,
        extra: impl FnOnce() -> X,
    ) -> Joined<X> {
        let mut streams = self.streams.lock();
        let (stream, events, is_new) = match streams.get(&key) {
            Some(stream) => {
                stream.subscribers.fetch_add(1, Relaxed);
                // A joiner is caught up by definition: if the stream was waiting for a stalled
                // subscriber, the newcomer is now the fastest and lets it go on.
                stream.mark_delivered(stream.published.load(Relaxed));
                (Arc::clone(stream), stream.events.subscribe(), false)
            }
            None => {
                let (stream, receiver) = SharedStream::new(Some(key.clone()), buffer, extra());
                streams.insert(key, Arc::clone(&stream));
                (stream, receiver, true)
            }
        };
        drop(streams);
        self.member(stats, stream, events, is_new)
    }

    /// Joins `stream`, found by the caller elsewhere than in this registry (a pack); `None`
    /// when it is ending (its last subscriber left).
    pub(super) fn rejoin(
        self: &Arc<Self>,
        stats: &Arc<Stats>,
        stream: &Arc<SharedStream<X>>,
    ) -> Option<Joined<X>> {
        stream
            .subscribers
            .fetch_update(Relaxed, Relaxed, |n| (n > 0).then_some(n + 1))
            .ok()?;
        stream.mark_delivered(stream.published.load(Relaxed));
        let events = stream.events.subscribe();
        Some(self.member(stats, Arc::clone(stream), events, false))
    }

    /// A stream no one else may join, with `extra`; its caller must start it.
    pub(super) fn private(
        self: &Arc<Self>,
        stats: &Arc<Stats>,
        buffer: usize,
        extra: X,
    ) -> Joined<X> {
        let (stream, events) = SharedStream::new(None, buffer, extra);
        self.member(stats, stream, events, true)
    }

    fn member(
        self: &Arc<Self>,
        stats: &Arc<Stats>,
        stream: Arc<SharedStream<X>>,
        events: broadcast::Receiver<Event>,
        is_new: bool,
    ) -> Joined<X> {
        Joined {
            membership: Membership {
                registry: Arc::clone(self),
                stream,
                _gauge: stats.hold(|s| &s.shared_subscribers_active),
            },
            events,
            is_new,
        }
    }

    /// Unregisters `stream` so that no one joins it any more.
    pub(super) fn retire(&self, stream: &Arc<SharedStream<X>>) {
        let Some(key) = &stream.key else { return };
        let mut streams = self.streams.lock();
        if streams.get(key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(key);
        }
    }

    /// Upstream streams open to joiners now.
    pub(crate) fn len(&self) -> usize {
        self.streams.lock().len()
    }
}
