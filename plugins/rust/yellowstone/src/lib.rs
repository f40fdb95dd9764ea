//! The resumer for Yellowstone (Solana Geyser, "Dragon's Mouth") subscriptions: what Sluice
//! needs to know of `/geyser.Geyser/Subscribe` to share, keep alive and move subscriptions with
//! no gap and no duplicate. Sluice itself knows none of it.
//!
//! - `classify`: a `SubscribeRequest` with `ping` set and no filters is a ping, answered with a
//!   `SubscribeUpdate` carrying a pong with the same id (the two messages' `id` fields encode
//!   alike, so the ping's bytes are the pong's). One with `from_slot` is a subscription that is
//!   never shared (it starts in the past). Any other is a subscription whose share key is its
//!   fields without `ping`, sorted: two requests asking for the same filters share a key
//!   whatever the order of their map entries (protobuf encoders write maps in any order).
//! - `mark`: each `SubscribeUpdate`'s slot is its position, and its key says what it is,
//!   whatever its bytes (`created_at` differs between providers and sends):
//!   - account: key and write version;
//!   - slot: slot and status;
//!   - transaction and transaction status: signature;
//!   - block and block meta: block hash;
//!   - entry: slot and index;
//!   - block footer: slot; entry parent update: slot and parent slot.
//!
//!   Pings and pongs have neither: they are never duplicates.
//! - `resume`: the subscription (the last request that is not a ping) with `from_slot` set to
//!   the slot of the last update delivered, minus `from_slot_back` slots (config, default 2,
//!   for providers whose slots interleave), and `ping` dropped. The host drops what the monitor
//!   already has by key. With no update delivered yet, or none with a slot, the subscription
//!   is sent as it was.
//!
//! - `classify` also says how a subscription packs: its group is every field that is not a
//!   named filter (commitment, data slices, ...), and its weight its number of named filters.
//!   `pack` merges members' subscriptions into one request, each filter renamed
//!   `<tag>:<name>`; `unpack` routes each update to the members its `filters` name, each with
//!   its own names restored, and pings and pongs (which name none) to everyone.
//!
//! Other methods are not known: `classify` answers `unknown`, `mark` marks nothing, `resume`
//! hands the requests back unchanged. Messages are read with `sluice_plugin::wire`; one that
//! is not a well-formed protobuf message is an `error` from `classify` and `resume`, and an
//! unmarked update (with a warning) from `mark`, so that an upstream sending garbage never
//! counts against the plugin.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_plugin::text::push_u64;
use sluice_plugin::wire::{Fields, LENGTH_DELIMITED, VARINT, WireError, push_tag, push_varint};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "resumer",
});

use sluice::policy::types::{Packing, Subscription};
use sluice::policy::{config, log};

/// The method this plugin knows.
pub const SUBSCRIBE: &str = "/geyser.Geyser/Subscribe";

/// `SubscribeRequest`'s filter maps: accounts, slots, transactions, blocks, blocks_meta, entry,
/// transactions_status, block_footer.
const FILTER_FIELDS: [u32; 8] = [1, 2, 3, 4, 5, 8, 10, 12];
/// `SubscribeRequest.ping` and `.from_slot`.
const REQUEST_PING: u32 = 9;
const REQUEST_FROM_SLOT: u32 = 11;
/// `SubscribeUpdate.filters` and `.pong`.
const UPDATE_FILTERS: u32 = 1;
const UPDATE_PONG: u32 = 9;
/// Slots back from the last delivered one a resume starts at, unless configured.
const DEFAULT_FROM_SLOT_BACK: u64 = 2;

struct Yellowstone;

impl Guest for Yellowstone {
    fn resume(request: ResumeRequest) -> Result<Vec<Vec<u8>>, String> {
        if request.method != SUBSCRIBE {
            return Ok(request.requests);
        }
        let mut subscription = None;
        for message in request.requests.iter().rev() {
            if !is_ping_only(message).map_err(|e| wire_error("a request", e))? {
                subscription = Some(message);
                break;
            }
        }
        let Some(subscription) = subscription else {
            // Pings only: nothing says what to subscribe to.
            return Ok(request.requests);
        };
        let slot = match &request.last_response {
            Some(update) => {
                mark_update(update)
                    .map_err(|e| wire_error("the last update", e))?
                    .position
            }
            None => None,
        };
        let Some(slot) = slot else {
            return Ok(vec![without(subscription, &[REQUEST_PING])?]);
        };
        let back = config::get("from_slot_back")
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_FROM_SLOT_BACK);
        let from = slot.saturating_sub(back);
        let mut rewritten = Vec::with_capacity(subscription.len() + 12);
        push_tag(&mut rewritten, REQUEST_FROM_SLOT, VARINT);
        push_varint(&mut rewritten, from);
        rewritten.extend(without(subscription, &[REQUEST_PING, REQUEST_FROM_SLOT])?);

        let mut line = String::from("yellowstone: Subscribe from_slot ");
        push_u64(&mut line, from);
        line.push_str(" (last update at slot ");
        push_u64(&mut line, slot);
        line.push_str(", resume #");
        push_u64(&mut line, u64::from(request.attempt));
        line.push(')');
        log::log(log::Level::Debug, &line);
        Ok(vec![rewritten])
    }

    fn classify(method: String, message: Vec<u8>) -> Result<RequestKind, String> {
        if method != SUBSCRIBE {
            return Ok(RequestKind::Unknown);
        }
        let mut fields = Fields::new(&message);
        let (mut ping, mut filters, mut from_slot) = (None, false, false);
        let mut kept: Vec<&[u8]> = Vec::new();
        while let Some(field) = fields
            .next_field()
            .map_err(|e| wire_error("the request", e))?
        {
            match field.number {
                REQUEST_PING => {
                    ping = field.bytes;
                    continue;
                }
                REQUEST_FROM_SLOT => from_slot = true,
                number if FILTER_FIELDS.contains(&number) => filters = true,
                _ => {}
            }
            kept.push(&message[field.start..field.end]);
        }
        if let Some(ping) = ping
            && !filters
        {
            let mut pong = Vec::with_capacity(ping.len() + 4);
            push_tag(&mut pong, UPDATE_PONG, LENGTH_DELIMITED);
            push_varint(&mut pong, ping.len() as u64);
            pong.extend_from_slice(ping);
            return Ok(RequestKind::Ping(Some(pong)));
        }
        if from_slot {
            return Ok(RequestKind::Subscribe(Subscription {
                share_key: None,
                packing: None,
            }));
        }
        kept.sort_unstable();
        let mut key = Vec::with_capacity(message.len() + kept.len() * 2);
        let mut group = Vec::new();
        let mut filters = 0;
        for field in kept {
            push_varint(&mut key, field.len() as u64);
            key.extend_from_slice(field);
            let mut fields = Fields::new(field);
            let number = match fields.next_field() {
                Ok(Some(field)) => field.number,
                _ => 0,
            };
            if FILTER_FIELDS.contains(&number) {
                filters += 1;
            } else {
                push_varint(&mut group, field.len() as u64);
                group.extend_from_slice(field);
            }
        }
        Ok(RequestKind::Subscribe(Subscription {
            share_key: Some(key),
            packing: Some(Packing { group, filters }),
        }))
    }

    fn pack(method: String, members: Vec<PackMember>) -> Result<Vec<u8>, String> {
        if method != SUBSCRIBE {
            return Err(String::from("yellowstone: only Subscribe is packed"));
        }
        let mut out = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let message = &member.subscription;
            let mut fields = Fields::new(message);
            while let Some(field) = fields
                .next_field()
                .map_err(|e| wire_error("a member's subscription", e))?
            {
                match field.number {
                    number if FILTER_FIELDS.contains(&number) => {
                        let entry = field.bytes.unwrap_or(&[]);
                        let renamed = renamed_entry(entry, member.tag)
                            .map_err(|e| wire_error("a filter entry", e))?;
                        push_tag(&mut out, number, LENGTH_DELIMITED);
                        push_varint(&mut out, renamed.len() as u64);
                        out.extend_from_slice(&renamed);
                    }
                    REQUEST_PING | REQUEST_FROM_SLOT => {}
                    // What is not a filter is the packing group's, the same for every member:
                    // written once.
                    _ if index == 0 => out.extend_from_slice(&message[field.start..field.end]),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    fn unpack(method: String, messages: Vec<Vec<u8>>) -> Result<Vec<Routing>, String> {
        if method != SUBSCRIBE {
            return Ok(messages.iter().map(|_| Routing::Everyone).collect());
        }
        Ok(messages
            .iter()
            .map(|message| {
                route(message).unwrap_or_else(|error| {
                    log::log(log::Level::Warn, &wire_error("an update", error));
                    Routing::Members(Vec::new())
                })
            })
            .collect())
    }

    fn mark(method: String, messages: Vec<Vec<u8>>) -> Result<Vec<UpdateMark>, String> {
        let unmarked = || UpdateMark {
            position: None,
            key: None,
        };
        if method != SUBSCRIBE {
            return Ok(messages.iter().map(|_| unmarked()).collect());
        }
        Ok(messages
            .iter()
            .map(|message| {
                mark_update(message).unwrap_or_else(|error| {
                    log::log(log::Level::Warn, &wire_error("an update", error));
                    unmarked()
                })
            })
            .collect())
    }
}

export!(Yellowstone);

/// The varint and bytes values of fields 1..=15 of one message (the last of each, as protobuf
/// decoders take them); fields beyond 15 are skipped.
#[derive(Default)]
struct Values<'a> {
    varints: [Option<u64>; 16],
    bytes: [Option<&'a [u8]>; 16],
}

impl<'a> Values<'a> {
    fn read(message: &'a [u8]) -> Result<Self, WireError> {
        let mut values = Values::default();
        let mut fields = Fields::new(message);
        while let Some(field) = fields.next_field()? {
            let Some(index) = usize::try_from(field.number).ok().filter(|&n| n < 16) else {
                continue;
            };
            if let Some(value) = field.varint {
                values.varints[index] = Some(value);
            }
            if let Some(value) = field.bytes {
                values.bytes[index] = Some(value);
            }
        }
        Ok(values)
    }

    fn varint(&self, number: usize) -> u64 {
        self.varints[number].unwrap_or(0)
    }

    fn bytes(&self, number: usize) -> &'a [u8] {
        self.bytes[number].unwrap_or(&[])
    }
}

/// Builds a key: a kind letter, then each part length-prefixed, so that no two different
/// updates share one.
struct Key(Vec<u8>);

impl Key {
    fn new(kind: u8) -> Self {
        Key(vec![kind])
    }

    fn number(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn bytes(mut self, value: &[u8]) -> Self {
        push_varint(&mut self.0, value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }
}

/// The position and key of one `SubscribeUpdate`.
fn mark_update(message: &[u8]) -> Result<UpdateMark, WireError> {
    let update = Values::read(message)?;
    // `update_oneof`: the variant present (the last one written, as decoders take it).
    let mut variant = None;
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next_field()? {
        if (2..=13).contains(&field.number) && field.number != 11 {
            variant = Some(field.number);
        }
    }
    let Some(number) = variant else {
        return Ok(UpdateMark {
            position: None,
            key: None,
        });
    };
    let inner = Values::read(update.bytes(number as usize))?;
    let (position, key) = match number {
        // account: { account: { pubkey = 1, write_version = 7 }, slot = 2 }
        2 => {
            let info = Values::read(inner.bytes(1))?;
            let key = Key::new(b'a').bytes(info.bytes(1)).number(info.varint(7));
            (Some(inner.varint(2)), Some(key))
        }
        // slot: { slot = 1, status = 3 }
        3 => {
            let slot = inner.varint(1);
            (
                Some(slot),
                Some(Key::new(b's').number(slot).number(inner.varint(3))),
            )
        }
        // transaction: { transaction: { signature = 1 }, slot = 2 }
        4 => {
            let info = Values::read(inner.bytes(1))?;
            (
                Some(inner.varint(2)),
                Some(Key::new(b't').bytes(info.bytes(1))),
            )
        }
        // transaction_status: { slot = 1, signature = 2 }
        10 => (
            Some(inner.varint(1)),
            Some(Key::new(b'x').bytes(inner.bytes(2))),
        ),
        // block and block_meta: { slot = 1, blockhash = 2 }
        5 | 7 => {
            let kind = if number == 5 { b'b' } else { b'm' };
            (
                Some(inner.varint(1)),
                Some(Key::new(kind).bytes(inner.bytes(2))),
            )
        }
        // entry: { slot = 1, index = 2 }
        8 => {
            let slot = inner.varint(1);
            (
                Some(slot),
                Some(Key::new(b'e').number(slot).number(inner.varint(2))),
            )
        }
        // block_footer: { slot = 1 }
        12 => {
            let slot = inner.varint(1);
            (Some(slot), Some(Key::new(b'f').number(slot)))
        }
        // entry_update_parent: { slot = 1, parent_slot = 3 }
        13 => {
            let slot = inner.varint(1);
            (
                Some(slot),
                Some(Key::new(b'p').number(slot).number(inner.varint(3))),
            )
        }
        // ping (6), pong (9).
        _ => (None, None),
    };
    Ok(UpdateMark {
        position,
        key: key.map(|k| k.0),
    })
}

/// Separates a member's tag from its own filter name in a packed subscription: `7:accounts`.
const TAG_SEPARATOR: u8 = b':';

/// A filter map entry (`key = 1` the filter's name, `value = 2` the filter) with its name
/// prefixed by `tag`.
fn renamed_entry(entry: &[u8], tag: u32) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(entry.len() + 12);
    let mut fields = Fields::new(entry);
    while let Some(field) = fields.next_field()? {
        if field.number == 1 {
            let mut name = String::new();
            push_u64(&mut name, u64::from(tag));
            let mut renamed = name.into_bytes();
            renamed.push(TAG_SEPARATOR);
            renamed.extend_from_slice(field.bytes.unwrap_or(&[]));
            push_tag(&mut out, 1, LENGTH_DELIMITED);
            push_varint(&mut out, renamed.len() as u64);
            out.extend_from_slice(&renamed);
        } else {
            out.extend_from_slice(&entry[field.start..field.end]);
        }
    }
    Ok(out)
}

/// The member tag and own name of a packed filter name, `None` when it has no tag.
fn split_tag(name: &[u8]) -> Option<(u32, &[u8])> {
    let at = name.iter().position(|&b| b == TAG_SEPARATOR)?;
    let digits = core::str::from_utf8(&name[..at]).ok()?;
    Some((digits.parse().ok()?, &name[at + 1..]))
}

/// Where one update of a packed subscription goes: each member named in its `filters`, with
/// only its own filter names, restored; everyone when it names no filter.
fn route(message: &[u8]) -> Result<Routing, WireError> {
    let mut names: Vec<(u32, &[u8])> = Vec::new();
    let mut named = false;
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next_field()? {
        if field.number == UPDATE_FILTERS {
            named = true;
            if let Some(tagged) = field.bytes.and_then(split_tag) {
                names.push(tagged);
            }
        }
    }
    if !named {
        return Ok(Routing::Everyone);
    }
    let mut tags: Vec<u32> = names.iter().map(|(tag, _)| *tag).collect();
    tags.sort_unstable();
    tags.dedup();
    let mut routed = Vec::with_capacity(tags.len());
    for tag in tags {
        let mut out = Vec::with_capacity(message.len());
        let mut written = false;
        let mut fields = Fields::new(message);
        while let Some(field) = fields.next_field()? {
            if field.number != UPDATE_FILTERS {
                out.extend_from_slice(&message[field.start..field.end]);
                continue;
            }
            // The member's names, where the first name was.
            if !written {
                written = true;
                for (_, name) in names.iter().filter(|(t, _)| *t == tag) {
                    push_tag(&mut out, UPDATE_FILTERS, LENGTH_DELIMITED);
                    push_varint(&mut out, name.len() as u64);
                    out.extend_from_slice(name);
                }
            }
        }
        routed.push((tag, out));
    }
    Ok(Routing::Members(routed))
}

/// Whether a `SubscribeRequest` is a ping with no filters.
fn is_ping_only(message: &[u8]) -> Result<bool, WireError> {
    let mut fields = Fields::new(message);
    let (mut ping, mut filters) = (false, false);
    while let Some(field) = fields.next_field()? {
        ping |= field.number == REQUEST_PING;
        filters |= FILTER_FIELDS.contains(&field.number);
    }
    Ok(ping && !filters)
}

/// `message` without the fields `dropped`, every other field byte for byte in its order.
fn without(message: &[u8], dropped: &[u32]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(message.len());
    let mut fields = Fields::new(message);
    while let Some(field) = fields
        .next_field()
        .map_err(|e| wire_error("the subscription", e))?
    {
        if !dropped.contains(&field.number) {
            out.extend_from_slice(&message[field.start..field.end]);
        }
    }
    Ok(out)
}

/// `yellowstone: the request is not a protobuf message (byte 12)`.
fn wire_error(which: &str, error: WireError) -> String {
    let mut text = String::from("yellowstone: ");
    text.push_str(which);
    text.push_str(" is not a well-formed protobuf message (at byte ");
    push_u64(&mut text, error.at as u64);
    text.push(')');
    text
}
