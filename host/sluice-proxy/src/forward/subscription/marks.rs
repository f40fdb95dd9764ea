//! What a subscription's upstream stream has published, by mark, so that a new upstream stream
//! for it (after a break, or for a subscriber that changed its filters) delivers nothing twice.
//!
//! [`Marks`] remembers the position and key of the last `window` published messages, and the
//! first message of each of the last few positions (what a resumer reads the position from).
//! [`Catchup`] is taken from it at a switch: the new stream's messages whose keys were already
//! published are dropped until one lands past the last position published. Plain bookkeeping:
//! nothing here sends, receives or asks the resumer.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use sluice_contract::resume::UpdateMark;

/// First messages of positions kept for resumes: a resumer needs the latest one only, the rest
/// serve subscribers that are a little behind.
const POSITIONS_KEPT: usize = 64;

/// One published message's mark.
#[derive(Debug)]
struct Entry {
    seq: u64,
    position: Option<u64>,
    key: Option<Bytes>,
}

/// The marks of recently published messages.
#[derive(Debug)]
pub(super) struct Marks {
    window: usize,
    entries: VecDeque<Entry>,
    /// `(seq, payload)` of the first message published at each recent position.
    positions: VecDeque<(u64, Bytes)>,
    last_position: Option<u64>,
}

impl Marks {
    /// Remembers the last `window` messages (at least one).
    pub(super) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            entries: VecDeque::new(),
            positions: VecDeque::new(),
            last_position: None,
        }
    }

    /// Records message `seq` (its payload, without the gRPC prefix, and its mark).
    pub(super) fn record(&mut self, seq: u64, payload: &Bytes, mark: &UpdateMark) {
        if self.entries.len() == self.window {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            seq,
            position: mark.position,
            key: mark.key.clone(),
        });
        if let Some(position) = mark.position
            && self.last_position != Some(position)
        {
            self.last_position = Some(position);
            if self.positions.len() == POSITIONS_KEPT {
                self.positions.pop_front();
            }
            self.positions.push_back((seq, payload.clone()));
        }
    }

    /// What a switch after message `upto` must not deliver again, and the payload the resumer
    /// reads the position to start from (`None` when nothing positioned was published by then).
    pub(super) fn catchup(&self, upto: u64) -> (Catchup, Option<Bytes>) {
        let mut catchup = Catchup::default();
        for entry in self.entries.iter().take_while(|e| e.seq <= upto) {
            if let Some(key) = &entry.key {
                catchup.keys.insert(key.clone());
            }
            catchup.until = catchup.until.max(entry.position);
        }
        let last = self
            .positions
            .iter()
            .rev()
            .find(|(seq, _)| *seq <= upto)
            .map(|(_, payload)| payload.clone());
        (catchup, last)
    }
}

/// Keys already delivered before a switch, checked until the new stream passes `until`.
#[derive(Debug, Default)]
pub(super) struct Catchup {
    keys: HashSet<Bytes>,
    until: Option<u64>,
}

impl Catchup {
    /// Whether a message with `mark` was delivered before the switch (and must be dropped).
    /// A message past the last position delivered ends the check: nothing after it can have
    /// been delivered.
    pub(super) fn is_duplicate(&mut self, mark: &UpdateMark) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        if let (Some(position), Some(until)) = (mark.position, self.until)
            && position > until
        {
            self.keys = HashSet::new();
            return false;
        }
        mark.key.as_ref().is_some_and(|key| self.keys.contains(key))
    }

    /// Whether there is nothing left to check.
    pub(super) fn is_done(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(position: u64, key: &str) -> UpdateMark {
        UpdateMark {
            position: Some(position),
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
        }
    }

    #[test]
    fn a_switch_drops_what_was_delivered_and_nothing_past_it() {
        let mut marks = Marks::new(100);
        let published = [(10, "a"), (10, "b"), (11, "c"), (11, "d"), (12, "e")];
        for (seq, (position, key)) in (1..).zip(published) {
            marks.record(seq, &Bytes::from(key), &mark(position, key));
        }
        // A subscriber that had delivered up to "d" (seq 4) moves: the new stream replays
        // from position 10.
        let (mut catchup, last) = marks.catchup(4);
        assert_eq!(
            last.as_deref(),
            Some(&b"c"[..]),
            "the first message of position 11"
        );
        let replayed = [
            (10, "a"),
            (10, "b"),
            (11, "c"),
            (11, "new"),
            (11, "d"),
            (12, "e"),
        ];
        let kept: Vec<&str> = replayed
            .into_iter()
            .filter(|(p, k)| !catchup.is_duplicate(&mark(*p, k)))
            .map(|(_, k)| k)
            .collect();
        // "new" (matched only by the new filters) is delivered; "e" was never delivered to
        // this subscriber, and position 12 ends the check.
        assert_eq!(kept, ["new", "e"]);
        assert!(catchup.is_done());
    }

    #[test]
    fn unmarked_messages_are_never_duplicates_and_the_window_is_bounded() {
        let mut marks = Marks::new(2);
        for seq in 1..=5 {
            marks.record(seq, &Bytes::new(), &mark(seq, &seq.to_string()));
        }
        let (mut catchup, _) = marks.catchup(5);
        assert!(
            !catchup.is_duplicate(&mark(3, "3")),
            "fell out of the window"
        );
        assert!(catchup.is_duplicate(&mark(4, "4")));
        assert!(!catchup.is_duplicate(&UpdateMark::default()));
        assert!(catchup.is_duplicate(&mark(5, "5")));
    }
}
