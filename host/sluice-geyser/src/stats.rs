//! Counters of one mock provider, printed as a `sluice-geyser stats name=value ...` line.
//!
//! Peaks are what a test of a provider's limits compares against them: the most subscriptions
//! and connections any account held at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counters; every method is one or two atomic operations.
#[derive(Debug, Default)]
pub struct GeyserStats {
    subscriptions_total: AtomicU64,
    subscriptions_active: AtomicU64,
    peak_subscriptions: AtomicU64,
    peak_connections: AtomicU64,
    refused: AtomicU64,
    pings_answered: AtomicU64,
    updates_sent: AtomicU64,
    replays: AtomicU64,
    replays_refused: AtomicU64,
}

impl GeyserStats {
    /// A subscription was admitted; its account now holds subscriptions on `connections` peers.
    pub(crate) fn subscription_started(&self, connections: usize) {
        self.subscriptions_total.fetch_add(1, Relaxed);
        let active = self.subscriptions_active.fetch_add(1, Relaxed) + 1;
        self.peak_subscriptions.fetch_max(active, Relaxed);
        self.peak_connections.fetch_max(connections as u64, Relaxed);
    }

    pub(crate) fn subscription_ended(&self) {
        self.subscriptions_active.fetch_sub(1, Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn ping_answered(&self) {
        self.pings_answered.fetch_add(1, Relaxed);
    }

    pub(crate) fn update_sent(&self) {
        self.updates_sent.fetch_add(1, Relaxed);
    }

    pub(crate) fn replayed(&self) {
        self.replays.fetch_add(1, Relaxed);
    }

    pub(crate) fn replay_refused(&self) {
        self.replays_refused.fetch_add(1, Relaxed);
    }

    /// The counters by name, in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("subscriptions_total", &self.subscriptions_total),
            ("subscriptions_active", &self.subscriptions_active),
            ("peak_subscriptions", &self.peak_subscriptions),
            ("peak_connections", &self.peak_connections),
            ("refused", &self.refused),
            ("pings_answered", &self.pings_answered),
            ("updates_sent", &self.updates_sent),
            ("replays", &self.replays),
            ("replays_refused", &self.replays_refused),
        ]
        .into_iter()
        .map(|(name, value)| (name, value.load(Relaxed)))
        .collect()
    }
}

impl fmt::Display for GeyserStats {
    /// `sluice-geyser stats name=value ...`, the line test harnesses parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sluice-geyser stats")?;
        for (name, value) in self.snapshot() {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}
