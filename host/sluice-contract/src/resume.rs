//! The resume seam: how the request of a broken stream is rewritten before it is replayed on
//! another upstream.
//!
//! The host knows only the configured mode (`replay-last`, `replay-all`); protocol knowledge,
//! such as the feed's `from_seq` or a `from_slot` taken from the last message seen, lives in a
//! [`Resumer`] (the `resumer` policy plugin). A resumer sees plain message payloads, never
//! streams or connections, and must be fast: it runs once per resume, on the failover path,
//! and for shared bidirectional subscriptions once per request message and once per batch of
//! response messages (twice when they are packed).

use bytes::Bytes;

use crate::route::MonitorProfile;

/// What a resumer is told about a broken stream.
#[derive(Debug)]
pub struct ResumeRequest<'a> {
    /// Whose stream it is.
    pub monitor: &'a MonitorProfile,
    /// The method, `/package.Service/Method`.
    pub method: &'a str,
    /// The request message payloads the host would replay (without the 5-byte gRPC prefix),
    /// oldest first: the last one for `replay-last`, all of them for `replay-all`. Always the
    /// monitor's own messages as it sent them, never an earlier resume's rewrite.
    pub requests: &'a [Bytes],
    /// The payload of the last response message delivered to the monitor, if any.
    pub last_response: Option<&'a Bytes>,
    /// Response messages delivered to the monitor so far.
    pub responses_delivered: u64,
    /// Which resume of this stream this is, from 1.
    pub attempt: u32,
}

/// A resumer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeAnswer {
    /// Send these request payloads, in order, on the new upstream stream.
    Replay(Vec<Bytes>),
    /// No resumer is loaded for this method: replay the requests unchanged.
    Unchanged,
    /// The resumer failed (trap, deadline, error; the policy engine counts it); the reason is
    /// logged and the requests are replayed unchanged.
    Failed(String),
}

/// What one request message of a shared bidirectional subscription is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Not known (no resumer knows the method, or it failed): the stream is forwarded on an
    /// upstream stream of its own, every request message sent upstream.
    Unknown,
    /// Opens or changes the subscription.
    Subscribe(Subscription),
    /// A keep-alive answered by the host with this response payload (or with nothing).
    Ping(Option<Bytes>),
}

/// A subscription request as the resumer describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Equal keys (and key metadata) share one upstream stream; `None`: never shared.
    pub share_key: Option<Bytes>,
    /// How it may be packed with others; `None`: never packed.
    pub packing: Option<Packing>,
}

/// What packing needs to know of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// Only subscriptions of equal groups pack together.
    pub group: Bytes,
    /// Its named filters, counted against an endpoint's filters per subscription.
    pub filters: u32,
}

/// Where one update of a packed subscription goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// To every member as it is.
    Everyone,
    /// To these members (by tag), each with its own version.
    Members(Vec<(u32, Bytes)>),
}

/// Where one response message stands in its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateMark {
    /// Its position (e.g. a slot), if it has one.
    pub position: Option<u64>,
    /// Its identity: equal keys are the same update. `None`: never a duplicate.
    pub key: Option<Bytes>,
}

/// The protocol knowledge of long-lived streams: rewriting the request(s) of a broken stream
/// before they are replayed, and, for shared bidirectional subscriptions, what each request
/// message is and where each response message stands.
pub trait Resumer: Send + Sync {
    /// Decides what to send on the new upstream stream.
    fn resume(&self, request: &ResumeRequest<'_>) -> ResumeAnswer;

    /// What request `message` (a payload, without the gRPC prefix) of `method` is.
    fn classify(&self, _method: &str, _message: &Bytes) -> RequestKind {
        RequestKind::Unknown
    }

    /// One mark per response payload of `method`, in order; `None` when the messages cannot be
    /// marked (no resumer knows the method, or it failed).
    fn mark(&self, _method: &str, _messages: &[Bytes]) -> Option<Vec<UpdateMark>> {
        None
    }

    /// One request merging the subscriptions of `members` (tag, payload); `None` when they
    /// cannot be packed.
    fn pack(&self, _method: &str, _members: &[(u32, Bytes)]) -> Option<Bytes> {
        None
    }

    /// One routing per response payload of a packed subscription, in order; `None` when the
    /// messages cannot be routed.
    fn unpack(&self, _method: &str, _messages: &[Bytes]) -> Option<Vec<Routing>> {
        None
    }
}

/// Replays requests unchanged (no plugin).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayUnchanged;

impl Resumer for ReplayUnchanged {
    fn resume(&self, _request: &ResumeRequest<'_>) -> ResumeAnswer {
        ResumeAnswer::Unchanged
    }
}
