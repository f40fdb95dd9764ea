//! Packing: different subscriptions of one packing group (same method, key metadata and
//! resumer group, e.g. Yellowstone's commitment) merged into the fewest upstream
//! subscriptions that fit the endpoints' filters per subscription.
//!
//! A pack is a feed whose subscription the resumer merged from its members' (`pack`), each
//! member's filters renamed under its tag. Members are distinct subscriptions; monitors with
//! equal ones share a member. Whoever changes the membership (a monitor joining, a [`Seat`]
//! dropped) asks the resumer for the new merged request and wakes the feed, which sends it up
//! the open upstream stream: the provider applies it in place, so members that stay lose and
//! repeat nothing, and no second upstream subscription is opened for a change. What is routed
//! to whom is the feed's (`unpack`); this module only keeps the membership.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::feed::{Feed, FeedState};
use super::marks::Marks;
use super::{FORWARD_QUEUE, SubscriptionOptions};
use crate::Context;
use crate::forward::fanout::{Joined, ShareKey};

/// One distinct subscription in a pack.
#[derive(Debug)]
struct Member {
    tag: u32,
    share_key: Bytes,
    /// The subscription request's payload (no gRPC prefix).
    subscription: Bytes,
    filters: u32,
    /// Monitors holding it.
    seats: usize,
}

/// A pack's membership and the request that merges it.
#[derive(Debug)]
pub(crate) struct PackState {
    members: Mutex<Vec<Member>>,
    next_tag: Mutex<u32>,
    /// Filters the pack may hold in all.
    capacity: u32,
    /// The latest merged request (payload), for the feed to send.
    request: Mutex<Bytes>,
    /// Woken when `request` changes.
    pub(super) changed: Notify,
}

impl PackState {
    /// The latest merged request's payload.
    pub(super) fn request(&self) -> Bytes {
        self.request.lock().clone()
    }
}

/// What a monitor brings to a pack.
pub(super) struct Joining {
    pub group: ShareKey,
    pub share_key: Bytes,
    pub subscription: Bytes,
    pub filters: u32,
    /// The smallest `max_filters_per_subscription` over the endpoints (`u32::MAX`: none).
    pub capacity: u32,
}

/// A monitor's place in a pack; dropping it leaves (and repacks when its member goes).
pub(super) struct Seat {
    ctx: Arc<Context>,
    feed: Arc<Feed>,
    path: Arc<str>,
    /// Its member's tag.
    pub tag: u32,
    /// Already given back by a re-seat that took its member out with the new one in.
    released: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let Some(pack) = &self.feed.extra.pack else {
            return;
        };
        if self.released {
            return;
        }
        let mut members = pack.members.lock();
        let Some(at) = members.iter().position(|m| m.tag == self.tag) else {
            return;
        };
        members[at].seats -= 1;
        if members[at].seats > 0 {
            return;
        }
        members.remove(at);
        if members.is_empty() {
            // The feed ends with its last subscriber.
            return;
        }
        match merge(&self.ctx, &self.path, &members) {
            Some(request) => {
                *pack.request.lock() = request;
                pack.changed.notify_one();
            }
            // The old request asks for more than the members need: harmless, kept.
            None => {
                tracing::warn!("repacking after a member left failed; the pack keeps its request")
            }
        }
    }
}

/// The request merging `members`, from the resumer.
fn merge(ctx: &Context, path: &str, members: &[Member]) -> Option<Bytes> {
    let members: Vec<(u32, Bytes)> = members
        .iter()
        .map(|m| (m.tag, m.subscription.clone()))
        .collect();
    ctx.resumer.pack(path, &members)
}

/// The running packs, by packing group.
#[derive(Default)]
pub(crate) struct PackRegistry {
    groups: Mutex<HashMap<ShareKey, Vec<Arc<Feed>>>>,
}

/// A monitor's place in a pack, and, when it must start the pack's feed, the request payload
/// and forwarding queue to start it with.
pub(super) struct Packed {
    pub joined: Joined<FeedState>,
    pub seat: Seat,
    pub start: Option<(Bytes, mpsc::Receiver<(Bytes, bool)>)>,
}

/// Seats `joining` in `feed`'s pack when it has room (or holds the same subscription): the
/// member is counted and the merged request updated. `None` when there is no room or the
/// resumer cannot merge it. `leaving` is a seat its caller gives up for this one (a re-seat):
/// when it is its member's last, that member goes out in the same merge as the new one comes
/// in, so the provider never gets a request holding both.
pub(super) fn seat_in(
    ctx: &Arc<Context>,
    feed: &Arc<Feed>,
    joining: &Joining,
    leaving: Option<&mut Seat>,
) -> Option<Seat> {
    let pack = feed.extra.pack.as_ref()?;
    let path = &joining.group.path;
    let mut members = pack.members.lock();
    let tag = match members
        .iter_mut()
        .find(|m| m.share_key == joining.share_key)
    {
        Some(member) => {
            member.seats += 1;
            member.tag
        }
        None => {
            let leaving_tag = leaving.as_ref().map(|seat| seat.tag);
            let replaced = members
                .iter()
                .position(|m| Some(m.tag) == leaving_tag && m.seats == 1);
            let used: u32 = members
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != replaced)
                .map(|(_, m)| m.filters)
                .sum();
            if used.saturating_add(joining.filters) > pack.capacity {
                return None;
            }
            let tag = {
                let mut next = pack.next_tag.lock();
                *next += 1;
                *next
            };
            let removed = replaced.map(|at| (at, members.remove(at)));
            members.push(Member {
                tag,
                share_key: joining.share_key.clone(),
                subscription: joining.subscription.clone(),
                filters: joining.filters,
                seats: 1,
            });
            let Some(request) = merge(ctx, path, &members) else {
                members.pop();
                if let Some((at, member)) = removed {
                    members.insert(at, member);
                }
                return None;
            };
            if removed.is_some()
                && let Some(seat) = leaving
            {
                seat.released = true;
            }
            *pack.request.lock() = request;
            pack.changed.notify_one();
            tag
        }
    };
    Some(Seat {
        ctx: Arc::clone(ctx),
        feed: Arc::clone(feed),
        path: Arc::clone(path),
        tag,
        released: false,
    })
}

impl PackRegistry {
    /// Seats a monitor in a pack with room for its subscription, or in a new one; `None` when
    /// the resumer cannot merge it (the monitor then gets a stream of its own).
    pub(super) fn join(
        &self,
        ctx: &Arc<Context>,
        options: &SubscriptionOptions,
        joining: Joining,
    ) -> Option<Packed> {
        let mut groups = self.groups.lock();
        let packs = groups.entry(joining.group.clone()).or_default();
        for feed in packs.iter() {
            let Some(seat) = seat_in(ctx, feed, &joining, None) else {
                continue;
            };
            match ctx.subscriptions.rejoin(&ctx.stats, feed) {
                Some(joined) => {
                    return Some(Packed {
                        joined,
                        seat,
                        start: None,
                    });
                }
                // Ending: the seat's drop takes the member out again; try the next pack.
                None => drop(seat),
            }
        }
        let path = Arc::clone(&joining.group.path);
        let member = Member {
            tag: 0,
            share_key: joining.share_key,
            subscription: joining.subscription,
            filters: joining.filters,
            seats: 1,
        };
        let request = merge(ctx, &path, std::slice::from_ref(&member))?;
        let (sender, receiver) = mpsc::channel(FORWARD_QUEUE);
        let state = FeedState {
            marks: Mutex::new(Marks::new(options.dedup_window)),
            requests: sender,
            known: true,
            pack: Some(PackState {
                members: Mutex::new(vec![member]),
                next_tag: Mutex::new(0),
                capacity: joining.capacity,
                request: Mutex::new(request.clone()),
                changed: Notify::new(),
            }),
        };
        let joined = ctx
            .subscriptions
            .private(&ctx.stats, options.share.buffer, state);
        packs.push(Arc::clone(&joined.membership.stream));
        let seat = Seat {
            ctx: Arc::clone(ctx),
            feed: Arc::clone(&joined.membership.stream),
            path,
            tag: 0,
            released: false,
        };
        Some(Packed {
            joined,
            seat,
            start: Some((request, receiver)),
        })
    }

    /// Forgets `feed`, which ended.
    pub(super) fn retire(&self, feed: &Arc<Feed>) {
        let mut groups = self.groups.lock();
        groups.retain(|_, packs| {
            packs.retain(|p| !Arc::ptr_eq(p, feed));
            !packs.is_empty()
        });
    }

    /// Packs running now, and the monitor subscriptions (members) they carry.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let groups = self.groups.lock();
        let packs = groups.values().map(Vec::len).sum();
        let members = groups
            .values()
            .flatten()
            .filter_map(|feed| feed.extra.pack.as_ref())
            .map(|pack| pack.members.lock().len())
            .sum();
        (packs, members)
    }
}
