//! What a resume replays and what it must not deliver twice: the monitor's requests kept for
//! replay, and the recently delivered responses a resumed upstream may send again.
//!
//! Plain bookkeeping of framed messages: nothing here sends, receives or decides to resume.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use sluice_config::ResumeMode;

use super::ResumeOptions;

/// The request messages a resume replays.
pub(super) struct ReplayBuffer {
    mode: ResumeMode,
    /// Framed messages (prefix included), oldest first.
    pub(super) messages: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
    /// More than `limit` bytes were needed: the stream can no longer be resumed faithfully.
    pub(super) overflowed: bool,
}

impl ReplayBuffer {
    pub(super) fn new(options: &ResumeOptions) -> Self {
        Self {
            mode: options.mode,
            messages: VecDeque::new(),
            bytes: 0,
            limit: options.replay_buffer_bytes,
            overflowed: false,
        }
    }

    pub(super) fn record(&mut self, framed: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.mode == ResumeMode::ReplayLast {
            self.messages.clear();
            self.bytes = 0;
        }
        self.bytes += framed.len();
        if self.bytes > self.limit {
            self.overflowed = true;
            self.messages.clear();
            return;
        }
        self.messages.push_back(framed.clone());
    }

    /// Whether any message is compressed (a resumer sees raw protobuf only).
    pub(super) fn any_compressed(&self) -> bool {
        self.messages.iter().any(|m| m.first() != Some(&0))
    }
}

/// Hashes of recently delivered response messages, to drop what a resumed upstream delivers
/// again. Only the first `window` messages after a switch are checked, and only against what
/// was delivered before it, so a message that legitimately repeats later (a heartbeat, an
/// unchanged snapshot) is never dropped.
pub(super) struct Dedup {
    window: usize,
    order: VecDeque<u64>,
    seen: HashSet<u64>,
    /// Hashes delivered before the last switch, while checking after it.
    before_switch: HashSet<u64>,
    checks_left: usize,
}

impl Dedup {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window,
            order: VecDeque::with_capacity(window.min(4096)),
            seen: HashSet::with_capacity(window.min(4096)),
            before_switch: HashSet::new(),
            checks_left: 0,
        }
    }

    /// The upstream stream changed: check the next `window` messages.
    pub(super) fn switched(&mut self) {
        if self.window > 0 {
            self.before_switch = self.seen.clone();
            self.checks_left = self.window;
        }
    }

    /// Remembers `message`; `true` when it was delivered before the last switch and is among
    /// the first `window` messages after it.
    pub(super) fn is_duplicate(&mut self, message: &[u8]) -> bool {
        if self.window == 0 {
            return false;
        }
        // SipHash with fixed keys: deterministic within the process, collisions negligible
        // for a window of recent messages.
        let mut hasher = std::hash::DefaultHasher::new();
        message.hash(&mut hasher);
        let hash = hasher.finish();
        if self.checks_left > 0 {
            self.checks_left -= 1;
            let duplicate = self.before_switch.contains(&hash);
            if self.checks_left == 0 {
                self.before_switch = HashSet::new();
            }
            if duplicate {
                return true;
            }
        }
        if self.seen.insert(hash) {
            self.order.push_back(hash);
            if self.order.len() > self.window
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::grpc::{PREFIX_LEN, frame};
    use std::time::Duration;

    use super::*;

    fn options(mode: ResumeMode, limit: usize) -> ResumeOptions {
        ResumeOptions {
            mode,
            attempts: 3,
            timeout: Duration::from_secs(1),
            on_unavailable: true,
            dedup_window: 0,
            replay_buffer_bytes: limit,
        }
    }

    #[test]
    fn replay_last_keeps_one_message_and_replay_all_keeps_them_up_to_the_limit() {
        let mut last = ReplayBuffer::new(&options(ResumeMode::ReplayLast, 1024));
        last.record(&frame(b"a"));
        last.record(&frame(b"b"));
        assert_eq!(last.messages.len(), 1);
        assert_eq!(&last.messages[0][PREFIX_LEN..], b"b");

        let mut all = ReplayBuffer::new(&options(ResumeMode::ReplayAll, 14));
        all.record(&frame(b"aa"));
        all.record(&frame(b"bb"));
        assert_eq!(all.messages.len(), 2);
        assert!(!all.overflowed);
        all.record(&frame(b"cc"));
        assert!(all.overflowed, "21 bytes exceed the 14-byte buffer");
        assert!(all.messages.is_empty());
    }

    #[test]
    fn dedup_checks_only_the_first_messages_after_a_switch_against_earlier_ones() {
        let mut dedup = Dedup::new(2);
        assert!(!dedup.is_duplicate(b"x"));
        assert!(!dedup.is_duplicate(b"x"), "no check before a switch");
        dedup.switched();
        assert!(dedup.is_duplicate(b"x"), "delivered before the switch");
        assert!(!dedup.is_duplicate(b"y"));
        assert!(
            !dedup.is_duplicate(b"x"),
            "only the first 2 messages after a switch are checked"
        );
        dedup.switched();
        assert!(!dedup.is_duplicate(b"z"));
        assert!(
            !dedup.is_duplicate(b"z"),
            "repeats after the switch are not duplicates of what came before"
        );
        let mut off = Dedup::new(0);
        off.is_duplicate(b"x");
        off.switched();
        assert!(!off.is_duplicate(b"x"));
    }
}
