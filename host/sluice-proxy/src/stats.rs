//! Counters and gauges of the data path, shared by every stream.
//!
//! Plain atomics updated with relaxed ordering: they are observations, never used to make
//! decisions that need synchronisation. Exporting them (admin API, Prometheus) is someone
//! else's job; this module only counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! stats {
    ($( #[doc = $doc:literal] $name:ident ),* $(,)?) => {
        /// Live counters. `*_total` fields only grow; the others are gauges.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $( #[doc = $doc] pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of the proxy's live counters and gauges.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot {
            $( #[doc = $doc] pub $name: u64, )*
        }

        impl Stats {
            /// Copies every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl StatsSnapshot {
            /// Every field as `(name, description, value)`, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$( (stringify!($name), $doc.trim(), self.$name), )*]
            }
        }
    };
}

stats! {
    /// Calls accepted from monitors.
    downstream_streams_total,
    /// Calls from monitors currently open.
    downstream_streams_active,
    /// Streams opened on upstream connections.
    upstream_streams_total,
    /// Upstream streams currently open.
    upstream_streams_active,
    /// Upstream streams currently fanned out to several monitors.
    shared_upstreams_active,
    /// Monitors currently attached to a shared upstream stream.
    shared_subscribers_active,
    /// Monitors that joined an upstream stream that was already running.
    shared_joins_total,
    /// Upstream connections opened.
    connections_opened_total,
    /// Upstream connection attempts that failed.
    connection_errors_total,
    /// New streams currently waiting for a slot.
    queue_waiting,
    /// Streams refused because the wait queue was full.
    queue_rejected_total,
    /// Streams refused after waiting too long for a slot.
    queue_timeouts_total,
    /// Monitors cut off as lagging.
    lagging_disconnects_total,
    /// Calls that hit their deadline inside the proxy.
    deadline_exceeded_total,
    /// Calls cancelled by their monitor.
    cancelled_total,
    /// Calls that failed because the upstream failed or reset them.
    upstream_failures_total,
    /// Calls refused because a message exceeded the size limit.
    oversized_messages_total,
    /// Calls refused because the monitor was unknown or its token wrong.
    unauthenticated_total,
    /// Payload bytes sent from monitors to upstreams.
    bytes_to_upstream_total,
    /// Payload bytes sent from upstreams to monitors.
    bytes_to_monitors_total,
    /// Calls refused because their monitor's circuit breaker was open.
    breaker_rejected_total,
    /// Streams refused because an endpoint's stream-creation queue was full.
    rate_limited_total,
    /// Broken or migrated upstream streams that were resumed on another upstream stream.
    resumes_total,
    /// Resumes that gave up (attempts or time exhausted); the monitor got `UNAVAILABLE`.
    resume_failures_total,
    /// Streams moved off a draining connection (GOAWAY, removal, operator drain).
    migrations_total,
    /// Response messages dropped as duplicates after a resume.
    duplicates_dropped_total,
    /// Subscription pings (shared `bidi` methods) Sluice answered itself.
    subscription_pings_answered_total,
    /// Subscribers that changed their subscription and moved to a stream of their own.
    subscription_moves_total,
    /// Subscriptions ended with `DATA_LOSS`: no endpoint could replay from where they were.
    subscription_gaps_total,
    /// Monitor connections open now.
    monitor_connections_active,
    /// Monitor connections refused (GOAWAY) by `server.max_connections` or its per-peer cap.
    monitor_connections_refused_total,
    /// Calls refused because their monitor had `server.max_streams_per_monitor` open.
    monitor_streams_refused_total,
    /// Calls that sent no complete request message within `server.request_timeout`.
    request_timeouts_total,
    /// Calls refused because the request bytes held reached `server.max_buffered_request_bytes`.
    request_buffer_refused_total,
    /// Request bytes held now while whole request messages are read before admission.
    request_buffered_bytes,
    /// Calls ended early within 100 ms of opening, their upstream stream kept until then.
    upstream_resets_deferred_total,
}

/// Which gauge a [`GaugeGuard`] holds up.
pub(crate) type GaugeField = fn(&Stats) -> &AtomicU64;

/// Increments a gauge now and decrements it when dropped, so early returns cannot leak counts.
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    stats: Arc<Stats>,
    field: GaugeField,
}

impl Stats {
    /// Increments `field` until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, field: GaugeField) -> GaugeGuard {
        field(self).fetch_add(1, Relaxed);
        GaugeGuard {
            stats: Arc::clone(self),
            field,
        }
    }

    /// Adds one to a counter.
    pub fn incr(&self, field: GaugeField) {
        field(self).fetch_add(1, Relaxed);
    }

    /// Adds `amount` to a counter.
    pub fn add(&self, field: GaugeField, amount: u64) {
        field(self).fetch_add(amount, Relaxed);
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.field)(&self.stats).fetch_sub(1, Relaxed);
    }
}
