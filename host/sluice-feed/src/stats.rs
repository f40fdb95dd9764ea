//! Live counters of a feed server, read by tests and logs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one feed server. All are updated with relaxed atomics: each is exact, but two of
/// them read one after the other may come from slightly different moments.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// TCP connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// TCP connections currently open.
    pub connections_open: AtomicU64,
    /// The most TCP connections open at once.
    pub connections_peak: AtomicU64,
    /// Connections accepted over [`crate::ProviderLimits::max_connections`] (and closed).
    pub connection_violations: AtomicU64,
    /// Feed calls started over [`crate::ProviderLimits::streams_per_second`] (and refused).
    pub rate_violations: AtomicU64,
    /// Calls received, of every method, including failed ones.
    pub calls_total: AtomicU64,
    /// Calls failed on purpose (`x-feed-fail-code` or `error_rate`).
    pub calls_failed_injected: AtomicU64,
    /// Calls answered with the server's [`crate::Refusal`].
    pub calls_refused: AtomicU64,
    /// Subscribe streams currently sending (a gauge).
    pub subscribe_active: AtomicU64,
    /// The most Subscribe streams sending at once.
    pub subscribe_peak: AtomicU64,
    /// Subscribe streams started since start.
    pub subscribe_started: AtomicU64,
    /// Subscribe streams whose client went away (cancelled, reset, connection lost) before the
    /// server ended the stream.
    pub subscribe_cancelled: AtomicU64,
    /// Subscribe streams ended by an injected disconnect.
    pub disconnects_injected: AtomicU64,
    /// Subscribe events handed to the transport.
    pub events_sent: AtomicU64,
    /// Chat messages answered.
    pub chat_messages: AtomicU64,
    /// Messages received by Collect.
    pub collect_messages: AtomicU64,
    /// ASCII request metadata of the most recent call, as (lowercase name, value) pairs in the
    /// order received; lets tests check what a proxy added or removed.
    pub last_metadata: Mutex<Vec<(String, String)>>,
}

/// A plain copy of the [`FeedStats`] counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // Same meaning as the FeedStats field of the same name.
pub struct FeedStatsSnapshot {
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub connections_peak: u64,
    pub connection_violations: u64,
    pub rate_violations: u64,
    pub calls_total: u64,
    pub calls_failed_injected: u64,
    pub calls_refused: u64,
    pub subscribe_active: u64,
    pub subscribe_peak: u64,
    pub subscribe_started: u64,
    pub subscribe_cancelled: u64,
    pub disconnects_injected: u64,
    pub events_sent: u64,
    pub chat_messages: u64,
    pub collect_messages: u64,
}

impl FeedStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> FeedStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FeedStatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_open: get(&self.connections_open),
            connections_peak: get(&self.connections_peak),
            connection_violations: get(&self.connection_violations),
            rate_violations: get(&self.rate_violations),
            calls_total: get(&self.calls_total),
            calls_failed_injected: get(&self.calls_failed_injected),
            calls_refused: get(&self.calls_refused),
            subscribe_active: get(&self.subscribe_active),
            subscribe_peak: get(&self.subscribe_peak),
            subscribe_started: get(&self.subscribe_started),
            subscribe_cancelled: get(&self.subscribe_cancelled),
            disconnects_injected: get(&self.disconnects_injected),
            events_sent: get(&self.events_sent),
            chat_messages: get(&self.chat_messages),
            collect_messages: get(&self.collect_messages),
        }
    }

    /// A copy of [`FeedStats::last_metadata`].
    pub fn last_metadata(&self) -> Vec<(String, String)> {
        self.last_metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The value of `name` (lowercase) in the most recent call's metadata, if it was there.
    pub fn last_metadata_value(&self, name: &str) -> Option<String> {
        self.last_metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn set_last_metadata(&self, metadata: Vec<(String, String)>) {
        *self.last_metadata.lock().unwrap_or_else(|e| e.into_inner()) = metadata;
    }
}
