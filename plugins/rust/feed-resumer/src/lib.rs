//! An example resumer (`resumer` world) for the feed service's `Subscribe`
//! (`proto/feed.proto`): a broken subscription continues after the last event the monitor saw
//! instead of starting over.
//!
//! Why a plugin: when an upstream stream breaks, Sluice reopens it on another upstream and
//! replays the monitor's request. Replayed as it was, a `SubscribeRequest` asks for the events
//! from its original `from_seq` again, so the monitor would see duplicates. Only the protocol
//! knows which field says where to start; the host knows none, so it asks this plugin.
//!
//! What it does, for `/sluice.feed.v1.Feed/Subscribe`:
//!
//! - With a last response (an `Event`), it reads the event's `seq` (field 1, varint; absent
//!   means 0, as in proto3) and answers the single request rewritten so that `from_seq`
//!   (field 1, varint) is `seq + 1` (and `count` what is left, below). Every other field is
//!   kept byte for byte, in its order, unknown fields included; the rewritten fields are
//!   written first and their earlier entries dropped.
//! - With no last response (the stream broke before its first event), it answers the request
//!   unchanged: nothing was delivered, so the original `from_seq` is still right.
//! - Bytes that are not a well-formed message of the expected type - a truncated or overlong
//!   varint, a field running past the end, field number 0, a group, a known field with the
//!   wrong wire type (`from_seq` must be a varint, `rate` a fixed64, ...) - and a `seq` of
//!   `u64::MAX` (no next event) give an `error`. So do several requests: `Subscribe` is server
//!   streaming and takes exactly one. The host then replays the request unchanged and counts a
//!   plugin failure, which is what should happen when the payloads are not what this plugin
//!   was written for.
//!
//! Any other method is answered with its requests unchanged: this plugin knows only the feed.
//!
//! The wire format is read and written by hand (`sluice_plugin::wire`; no `prost`), so the
//! component stays small and `no_std` like the other plugins, and the bytes it does not
//! understand pass through untouched.
//!
//! `count` (field 4, "stop after this many events", 0 for never) counts from the original
//! `from_seq`; the host always passes the monitor's own request, never an earlier resume's
//! rewrite. So with a `count`, the rewritten request asks for what is left: `count - (next -
//! from_seq)`, at least 1 (a stream that broke after its last event but before its status gets
//! one event more rather than starting over).
//!
//! It logs each rewrite at debug level (`from_seq 0 -> 42`). It reads no configuration. It
//! classifies no request and marks no response: the feed's `Subscribe` is not a bidirectional
//! subscription.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_plugin::text::push_u64;
use sluice_plugin::wire::{
    FIXED64, Field, Fields, LENGTH_DELIMITED, VARINT, WireError, WireErrorKind, push_tag,
    push_varint,
};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "resumer",
});

use sluice::policy::log;

/// The method this plugin resumes.
pub const SUBSCRIBE: &str = "/sluice.feed.v1.Feed/Subscribe";

/// `from_seq`'s and `count`'s field numbers in `SubscribeRequest`, and `seq`'s in `Event`.
const FROM_SEQ: u32 = 1;
const COUNT: u32 = 4;
const SEQ: u32 = 1;

/// The fields of one message type and the wire type each must have.
struct Schema {
    name: &'static str,
    fields: &'static [(u32, u8)],
}

/// `sluice.feed.v1.SubscribeRequest`: from_seq, rate, payload_bytes, count, topic.
const SUBSCRIBE_REQUEST: Schema = Schema {
    name: "sluice.feed.v1.SubscribeRequest",
    fields: &[
        (1, VARINT),
        (2, FIXED64),
        (3, VARINT),
        (4, VARINT),
        (5, LENGTH_DELIMITED),
    ],
};

/// `sluice.feed.v1.Event`: seq, sent_at_ns, payload, topic.
const EVENT: Schema = Schema {
    name: "sluice.feed.v1.Event",
    fields: &[
        (1, VARINT),
        (2, VARINT),
        (3, LENGTH_DELIMITED),
        (4, LENGTH_DELIMITED),
    ],
};

struct FeedResumer;

impl Guest for FeedResumer {
    fn resume(request: ResumeRequest) -> Result<Vec<Vec<u8>>, String> {
        if request.method != SUBSCRIBE {
            return Ok(request.requests);
        }
        let ResumeRequest {
            requests,
            last_response,
            responses_delivered,
            attempt,
            ..
        } = request;
        let [subscribe] = <[Vec<u8>; 1]>::try_from(requests).map_err(|requests| {
            let mut message = String::from(
                "feed-resumer: Subscribe is server streaming and takes one request; got ",
            );
            push_u64(&mut message, requests.len() as u64);
            message
        })?;
        let from_seq = last_varint(&subscribe, &SUBSCRIBE_REQUEST, FROM_SEQ)
            .map_err(|p| p.describe("the request", &SUBSCRIBE_REQUEST))?;
        let Some(event) = last_response else {
            return Ok(vec![subscribe]);
        };
        let seq = last_varint(&event, &EVENT, SEQ)
            .map_err(|p| p.describe("the last response", &EVENT))?;
        let next = seq.checked_add(1).ok_or_else(|| {
            String::from("feed-resumer: the last event's seq is the largest u64; no event follows")
        })?;
        let count = last_varint(&subscribe, &SUBSCRIBE_REQUEST, COUNT)
            .map_err(|p| p.describe("the request", &SUBSCRIBE_REQUEST))?;
        let mut set = vec![(FROM_SEQ, next)];
        if count > 0 {
            let remaining = count.saturating_sub(next.saturating_sub(from_seq)).max(1);
            set.push((COUNT, remaining));
        }
        let rewritten = with_varints_first(&subscribe, &SUBSCRIBE_REQUEST, &set)
            .map_err(|p| p.describe("the request", &SUBSCRIBE_REQUEST))?;

        let mut line = String::from("feed-resumer: Subscribe from_seq ");
        push_u64(&mut line, from_seq);
        line.push_str(" -> ");
        push_u64(&mut line, next);
        line.push_str(" (resume #");
        push_u64(&mut line, u64::from(attempt));
        line.push_str(", ");
        push_u64(&mut line, responses_delivered);
        line.push_str(" events delivered)");
        log::log(log::Level::Debug, &line);
        Ok(vec![rewritten])
    }

    /// The feed's `Subscribe` is server streaming: nothing to classify for sharing.
    fn classify(_method: String, _message: Vec<u8>) -> Result<RequestKind, String> {
        Ok(RequestKind::Unknown)
    }

    /// Feed subscriptions are never packed.
    fn pack(_method: String, _members: Vec<PackMember>) -> Result<Vec<u8>, String> {
        Err(String::from(
            "feed-resumer: the feed's Subscribe is not packed",
        ))
    }

    /// Feed events are never packed: each goes to everyone as it is.
    fn unpack(_method: String, messages: Vec<Vec<u8>>) -> Result<Vec<Routing>, String> {
        Ok(messages.iter().map(|_| Routing::Everyone).collect())
    }

    /// Feed events are not marked: the feed resumes by `from_seq`, without dedup keys.
    fn mark(_method: String, messages: Vec<Vec<u8>>) -> Result<Vec<UpdateMark>, String> {
        Ok(messages
            .iter()
            .map(|_| UpdateMark {
                position: None,
                key: None,
            })
            .collect())
    }
}

export!(FeedResumer);

/// Why bytes are not a well-formed message of the expected type, and where.
#[derive(Debug)]
struct Problem {
    what: Issue,
    at: usize,
}

#[derive(Debug)]
enum Issue {
    /// The framing is broken (see [`WireErrorKind`]).
    Wire(WireErrorKind),
    /// A known field with another wire type than its declaration's.
    WrongWireType { field: u32, found: u8, expected: u8 },
}

impl From<WireError> for Problem {
    fn from(error: WireError) -> Self {
        Problem {
            what: Issue::Wire(error.kind),
            at: error.at,
        }
    }
}

impl Problem {
    fn describe(&self, which: &str, schema: &Schema) -> String {
        let mut text = String::from("feed-resumer: ");
        text.push_str(which);
        text.push_str(" is not a ");
        text.push_str(schema.name);
        text.push_str(": ");
        match self.what {
            Issue::Wire(WireErrorKind::TruncatedVarint) => {
                text.push_str("it ends inside a varint");
            }
            Issue::Wire(WireErrorKind::VarintOverflow) => {
                text.push_str("a varint is longer than 64 bits");
            }
            Issue::Wire(WireErrorKind::PastTheEnd) => text.push_str("a field runs past the end"),
            Issue::Wire(WireErrorKind::BadFieldNumber(number)) => {
                text.push_str("invalid field number ");
                push_u64(&mut text, number);
            }
            Issue::Wire(WireErrorKind::BadWireType(wire)) => {
                text.push_str("invalid wire type ");
                push_u64(&mut text, u64::from(wire));
            }
            Issue::WrongWireType {
                field,
                found,
                expected,
            } => {
                text.push_str("field ");
                push_u64(&mut text, u64::from(field));
                text.push_str(" has wire type ");
                push_u64(&mut text, u64::from(found));
                text.push_str(", expected ");
                push_u64(&mut text, u64::from(expected));
            }
        }
        text.push_str(" (at byte ");
        push_u64(&mut text, self.at as u64);
        text.push(')');
        text
    }
}

/// Reads the fields of one message, checking known fields against `schema`.
struct Checked<'a> {
    fields: Fields<'a>,
    schema: &'a Schema,
}

impl<'a> Checked<'a> {
    fn new(bytes: &'a [u8], schema: &'a Schema) -> Self {
        Self {
            fields: Fields::new(bytes),
            schema,
        }
    }

    /// The next field, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<Field<'a>>, Problem> {
        let Some(field) = self.fields.next_field()? else {
            return Ok(None);
        };
        if let Some(&(_, expected)) = self.schema.fields.iter().find(|(n, _)| *n == field.number)
            && expected != field.wire
        {
            return Err(Problem {
                what: Issue::WrongWireType {
                    field: field.number,
                    found: field.wire,
                    expected,
                },
                at: field.start,
            });
        }
        Ok(Some(field))
    }
}

/// Checks the whole message and returns the varint field `number` (its last occurrence, as
/// protobuf decoders do; 0 when absent, the proto3 default).
fn last_varint(bytes: &[u8], schema: &Schema, number: u32) -> Result<u64, Problem> {
    let mut fields = Checked::new(bytes, schema);
    let mut value = 0;
    while let Some(field) = fields.next_field()? {
        if field.number == number {
            value = field.varint.unwrap_or(value);
        }
    }
    Ok(value)
}

/// The message with each varint field of `set` given its value: written first, in `set`'s
/// order, every earlier entry of those fields dropped, every other field copied byte for byte
/// in its order.
fn with_varints_first(
    bytes: &[u8],
    schema: &Schema,
    set: &[(u32, u64)],
) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::with_capacity(bytes.len() + 12 * set.len());
    for &(number, value) in set {
        push_tag(&mut out, number, VARINT);
        push_varint(&mut out, value);
    }
    let mut fields = Checked::new(bytes, schema);
    while let Some(field) = fields.next_field()? {
        if !set.iter().any(|&(number, _)| number == field.number) {
            // In bounds: the reader checked every field's end.
            out.extend_from_slice(&bytes[field.start..field.end]);
        }
    }
    Ok(out)
}
