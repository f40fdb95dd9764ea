//! One endpoint's own caps (`[endpoints.limits]`, a provider's per-account limits) and the use
//! held against them: open streams over every connection, connections (the health check's
//! included) and the connection-open rate. Each cap is taken with a compare-and-swap, so
//! concurrent placements never overshoot it. In a cluster, this instance may use only its
//! share of `max_connections` and `max_streams`, which the cluster sets while Sluice runs.
//!
//! This module counts and refuses; it never decides where a stream goes instead (`place`
//! spills to other endpoints) and never opens a connection (`life` and `checks` ask it first).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use sluice_config::{EndpointLimits, RateLimitConfig};
use tokio::sync::Notify;

use super::rate::TokenBucket;

/// The caps of one endpoint and the use against them.
pub(crate) struct Limits {
    config: EndpointLimits,
    /// Connections the pool's classes may hold: `max_connections`, less the one the health
    /// check keeps for itself when active checks run.
    pool_connections: Option<usize>,
    /// Connections kept for the health check (0 or 1).
    reserved: usize,
    /// Streams open over every connection to the endpoint.
    streams: AtomicUsize,
    /// Health-check connections open (0 or 1).
    check_connections: Arc<AtomicUsize>,
    connect_rate: Option<TokenBucket>,
    /// Woken when a stream slot under `max_streams` frees up: streams of every class may be
    /// waiting for it.
    released: Arc<Notify>,
    /// This instance's share of `max_connections` (health check included) and `max_streams`
    /// in a cluster; `u32::MAX` when it runs alone.
    share_connections: AtomicU32,
    share_streams: AtomicU32,
}

/// No cluster share: the whole configured cap.
const WHOLE: u32 = u32::MAX;

/// Which cap refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitReached {
    /// `max_connections`.
    Connections,
    /// `connections_per_second`; a token comes after the duration.
    ConnectionRate(Duration),
}

/// Use against each cap of one endpoint, for the admin API, `/metrics` and the dashboard.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitsSnapshot {
    /// Connections open (including ones being opened and the health check's).
    pub connections: usize,
    /// `max_connections`, when set.
    pub max_connections: Option<u32>,
    /// Streams open over every connection.
    pub streams: usize,
    /// `max_streams`, when set.
    pub max_streams: Option<u32>,
    /// `max_streams_per_connection`, when set.
    pub max_streams_per_connection: Option<u32>,
    /// `connections_per_second`, when set.
    pub connections_per_second: Option<f64>,
    /// `rate_limit.streams_per_second`, when set.
    pub streams_per_second: Option<f64>,
    /// In a cluster: this instance's share of `max_connections`.
    pub share_connections: Option<u32>,
    /// In a cluster: this instance's share of `max_streams`.
    pub share_streams: Option<u32>,
    /// The caps reached now, by config key (`max_connections`, `max_streams`,
    /// `connections_per_second`).
    pub reached: Vec<&'static str>,
}

impl Limits {
    /// The caps of `config`; `health_checks` reserves one connection for the active checks.
    /// In a `cluster`, nothing of a cap may be used before the cluster grants a share.
    pub(super) fn new(
        config: EndpointLimits,
        health_checks: bool,
        cluster: bool,
        released: Arc<Notify>,
    ) -> Self {
        let unshared = if cluster { 0 } else { WHOLE };
        let reserved = usize::from(health_checks);
        Self {
            config,
            reserved,
            pool_connections: config
                .max_connections
                .map(|max| (max as usize).saturating_sub(reserved)),
            streams: AtomicUsize::new(0),
            check_connections: Arc::new(AtomicUsize::new(0)),
            connect_rate: config.connections_per_second.map(|rate| {
                TokenBucket::new(&RateLimitConfig {
                    streams_per_second: rate,
                    burst: None,
                    queue: 0,
                })
            }),
            released,
            share_connections: AtomicU32::new(if config.max_connections.is_some() {
                unshared
            } else {
                WHOLE
            }),
            share_streams: AtomicU32::new(if config.max_streams.is_some() {
                unshared
            } else {
                WHOLE
            }),
        }
    }

    /// Sets this instance's share of `max_connections` and `max_streams` (`None`: the whole
    /// cap). Only lowers what the config allows; use above it is not cut, it just takes
    /// nothing new until it is below.
    pub(super) fn set_share(&self, connections: Option<u32>, streams: Option<u32>) {
        self.share_connections
            .store(connections.unwrap_or(WHOLE), Relaxed);
        self.share_streams.store(streams.unwrap_or(WHOLE), Relaxed);
        // A larger share may let waiting streams through.
        self.released.notify_waiters();
    }

    /// The configured caps, for a cluster to split: `max_connections` and `max_streams`.
    pub(super) fn shared_caps(&self) -> (Option<u32>, Option<u32>) {
        (self.config.max_connections, self.config.max_streams)
    }

    /// The pool's connections cap: `max_connections` less the health check's, within this
    /// instance's share.
    pub(super) fn connection_cap(&self) -> usize {
        let share = self.share_connections.load(Relaxed);
        let configured = self.pool_connections.unwrap_or(usize::MAX);
        if share == WHOLE {
            return configured;
        }
        configured.min((share as usize).saturating_sub(self.reserved))
    }

    /// The open streams cap: `max_streams` within this instance's share.
    fn stream_cap(&self) -> usize {
        let configured = self.config.max_streams.map_or(usize::MAX, |m| m as usize);
        match self.share_streams.load(Relaxed) {
            WHOLE => configured,
            share => configured.min(share as usize),
        }
    }

    /// Streams one connection may carry, given its class's `max_streams_per_connection`.
    pub(super) fn per_connection(&self, class_max: u32) -> u32 {
        self.config
            .max_streams_per_connection
            .map_or(class_max, |cap| cap.min(class_max))
    }

    /// Takes a slot under `max_streams`; whether it did.
    pub(super) fn try_open_stream(&self) -> bool {
        let cap = self.stream_cap();
        self.streams
            .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            .is_ok()
    }

    /// Gives a slot under `max_streams` back.
    pub(super) fn close_stream(&self) {
        self.streams.fetch_sub(1, Relaxed);
        if self.stream_cap() != usize::MAX {
            self.released.notify_waiters();
        }
    }

    /// Whether `max_streams` (or this instance's share of it) streams are open.
    pub(super) fn streams_full(&self) -> bool {
        self.streams.load(Relaxed) >= self.stream_cap()
    }

    /// Takes one of the pool's connections under `max_connections` from `held` (the
    /// endpoint's connection count) and a token of `connections_per_second`, or says which cap
    /// refused. Nothing is taken when it refuses.
    pub(super) fn try_open_connection(&self, held: &AtomicUsize) -> Result<(), LimitReached> {
        let cap = self.connection_cap();
        held.fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            .map_err(|_| LimitReached::Connections)?;
        if let Some(bucket) = &self.connect_rate
            && let Err(wait) = bucket.try_take()
        {
            held.fetch_sub(1, Relaxed);
            return Err(LimitReached::ConnectionRate(wait));
        }
        Ok(())
    }

    /// Whether the pool could open a connection now, `held` being open: below
    /// `max_connections` with a connection-open token at hand (nothing is taken).
    pub(super) fn may_open_connection(&self, held: usize) -> bool {
        held < self.connection_cap()
            && self
                .connect_rate
                .as_ref()
                .is_none_or(|bucket| bucket.ready_in().is_zero())
    }

    /// How long until a connection-open token is at hand, when one is missing now.
    pub(super) fn connect_token_in(&self) -> Option<Duration> {
        self.connect_rate
            .as_ref()
            .map(TokenBucket::ready_in)
            .filter(|wait| !wait.is_zero())
    }

    /// Waits for a connection-open token (and, in a cluster, a share) for the health check,
    /// and counts its connection until the returned guard drops.
    pub(super) async fn open_check_connection(&self) -> CheckConnection {
        // In a cluster the check's connection counts against this instance's share: none
        // before the cluster grants one.
        while self.share_connections.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(bucket) = &self.connect_rate {
            while let Err(wait) = bucket.try_take() {
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
        }
        self.check_connections.fetch_add(1, Relaxed);
        CheckConnection(Arc::downgrade(&self.check_connections))
    }

    /// Use against each cap; `held` is the pool's connection count.
    pub(super) fn snapshot(&self, held: usize, streams_per_second: Option<f64>) -> LimitsSnapshot {
        let connections = held + self.check_connections.load(Relaxed);
        let reached = self.reached(held).into_iter().map(|(key, _)| key).collect();
        LimitsSnapshot {
            connections,
            max_connections: self.config.max_connections,
            streams: self.streams.load(Relaxed),
            max_streams: self.config.max_streams,
            max_streams_per_connection: self.config.max_streams_per_connection,
            connections_per_second: self.config.connections_per_second,
            streams_per_second,
            share_connections: Some(self.share_connections.load(Relaxed))
                .filter(|&share| share != WHOLE),
            share_streams: Some(self.share_streams.load(Relaxed)).filter(|&share| share != WHOLE),
            reached,
        }
    }

    /// What a refusal of [`Self::try_open_connection`] means, as a phrase naming the cap.
    pub(super) fn refusal(&self, reached: LimitReached) -> String {
        match reached {
            LimitReached::Connections => format!(
                "max_connections {} reached",
                self.config.max_connections.unwrap_or_default()
            ),
            LimitReached::ConnectionRate(wait) => format!(
                "connections_per_second {} reached (next in {wait:.0?})",
                self.config.connections_per_second.unwrap_or_default()
            ),
        }
    }

    /// The caps reached now, as a phrase for a monitor's `RESOURCE_EXHAUSTED` (none: `None`).
    pub(super) fn reached_phrase(&self, held: usize) -> Option<String> {
        let reached: Vec<String> = self
            .reached(held)
            .into_iter()
            .map(|(key, value)| format!("{key} {value} reached"))
            .collect();
        (!reached.is_empty()).then(|| reached.join(", "))
    }

    /// The caps reached now, `held` being the pool's connection count: each one's config key
    /// and configured value.
    fn reached(&self, held: usize) -> Vec<(&'static str, String)> {
        let mut reached = Vec::new();
        if let Some(max) = self.config.max_connections
            && held >= self.connection_cap()
        {
            reached.push((
                "max_connections",
                self.described(max, &self.share_connections),
            ));
        }
        if let Some(max) = self.config.max_streams
            && self.streams_full()
        {
            reached.push(("max_streams", self.described(max, &self.share_streams)));
        }
        if let (Some(rate), Some(_)) = (self.config.connections_per_second, self.connect_token_in())
        {
            reached.push(("connections_per_second", rate.to_string()));
        }
        reached
    }
}

impl Limits {
    /// `max`, or `max (this instance's share: N)` in a cluster.
    fn described(&self, max: u32, share: &AtomicU32) -> String {
        match share.load(Relaxed) {
            WHOLE => max.to_string(),
            share => format!("{max} (this instance's share: {share})"),
        }
    }
}

/// The health check's connection, counted against `max_connections` until dropped.
pub(super) struct CheckConnection(Weak<AtomicUsize>);

impl Drop for CheckConnection {
    fn drop(&mut self) {
        if let Some(count) = self.0.upgrade() {
            count.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: EndpointLimits, health_checks: bool) -> Limits {
        Limits::new(config, health_checks, false, Arc::new(Notify::new()))
    }

    #[test]
    fn open_streams_never_pass_max_streams_however_many_threads_race() {
        let limits = Arc::new(limits(
            EndpointLimits {
                max_streams: Some(50),
                ..EndpointLimits::default()
            },
            false,
        ));
        let taken: usize = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let limits = Arc::clone(&limits);
                    scope.spawn(move || (0..100).filter(|_| limits.try_open_stream()).count())
                })
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().unwrap_or_default())
                .sum()
        });
        assert_eq!(taken, 50);
        assert!(limits.streams_full());
        limits.close_stream();
        assert!(!limits.streams_full());
        assert!(limits.try_open_stream());
    }

    #[test]
    fn the_health_checks_connection_is_kept_out_of_the_pools_share() {
        let config = EndpointLimits {
            max_connections: Some(3),
            ..EndpointLimits::default()
        };
        let held = AtomicUsize::new(0);
        let checked = limits(config, true);
        assert_eq!(checked.try_open_connection(&held), Ok(()));
        assert_eq!(checked.try_open_connection(&held), Ok(()));
        assert_eq!(
            checked.try_open_connection(&held),
            Err(LimitReached::Connections)
        );
        assert_eq!(held.load(Relaxed), 2, "a refusal takes nothing");
        assert!(!checked.may_open_connection(2));
        assert_eq!(
            checked.reached_phrase(2).as_deref(),
            Some("max_connections 3 reached")
        );
        // Without active checks the pool may hold all three.
        let unchecked = limits(config, false);
        assert!(unchecked.may_open_connection(2));
        assert_eq!(unchecked.reached_phrase(2), None);
    }

    #[tokio::test]
    async fn the_health_checks_connection_counts_until_it_is_let_go() {
        let checked = limits(
            EndpointLimits {
                max_connections: Some(2),
                ..EndpointLimits::default()
            },
            true,
        );
        let connection = checked.open_check_connection().await;
        assert_eq!(checked.snapshot(1, None).connections, 2);
        drop(connection);
        assert_eq!(checked.snapshot(1, None).connections, 1);
    }

    #[test]
    fn connection_opens_past_the_rate_wait_for_the_next_token() {
        let limits = limits(
            EndpointLimits {
                connections_per_second: Some(2.0),
                ..EndpointLimits::default()
            },
            false,
        );
        let held = AtomicUsize::new(0);
        // The burst is one second's worth: 2.
        assert_eq!(limits.try_open_connection(&held), Ok(()));
        assert_eq!(limits.try_open_connection(&held), Ok(()));
        let Err(LimitReached::ConnectionRate(wait)) = limits.try_open_connection(&held) else {
            panic!("the third connection in the same instant is over the rate");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(
            held.load(Relaxed),
            2,
            "the refused opening gave its count back"
        );
        assert!(!limits.may_open_connection(2));
        assert!(limits.connect_token_in().is_some());
        assert_eq!(
            limits.snapshot(2, None).reached,
            vec!["connections_per_second"]
        );
    }

    #[test]
    fn a_connection_carries_the_lower_of_the_class_and_endpoint_caps() {
        let capped = limits(
            EndpointLimits {
                max_streams_per_connection: Some(5),
                ..EndpointLimits::default()
            },
            false,
        );
        assert_eq!(capped.per_connection(100), 5);
        assert_eq!(capped.per_connection(3), 3);
        assert_eq!(
            limits(EndpointLimits::default(), false).per_connection(100),
            100
        );
    }
}
