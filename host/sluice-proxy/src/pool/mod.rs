//! The upstream pool: a bounded set of HTTP/2 connections per traffic-class group, spread over
//! the configured endpoints.
//!
//! The pool owns connection lifetimes and stream-slot accounting: which connections exist, how
//! many streams each carries, when a new one may be opened (never past the class limit or the
//! global cap), and the bounded queue of streams waiting for a slot. It asks a [`Router`] where a
//! stream goes but never looks at stream contents; forwarding bytes is the `forward` module's job.
//!
//! This module holds the `Pool` and its groups; the work is split by job, each child adding
//! its own `impl Pool` block:
//! - `place`: which slot a new stream gets, and the wait queue;
//! - `life`: opening, supervising (keepalive, GOAWAY) and draining connections, and resizing
//!   groups;
//! - `snapshot`: what stats, the scaler and the admin API read;
//! - `monitors`: admitting monitors' calls through their breakers;
//! - `checks`: active health checks of the endpoints.
//!
//! Below them: one endpoint (`endpoint`), one connection and its leased slots (`connection`),
//! dialling (`connector`), whether its peer is still there (`liveness`), stream windows
//! (`window`), load signals (`load`), rate limits (`rate`) and an endpoint's own caps
//! (`limits`).

mod checks;
mod connection;
mod connector;
mod endpoint;
mod life;
mod limits;
mod liveness;
mod load;
mod monitors;
mod place;
mod rate;
mod snapshot;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_config::{
    BreakerScope, BreakerSettings, ClassConfig, Config, FailureKinds, TrafficClass,
};
use tokio::sync::{Notify, watch};

pub use crate::health::HealthSnapshot;
pub use crate::health::standing::StandingSnapshot;
pub use life::Resized;
pub use limits::LimitsSnapshot;
pub use snapshot::{ConnectionSnapshot, EndpointSnapshot, GroupLoad, GroupSnapshot};

pub(crate) use connection::{FailureKind, Lease};
pub(crate) use monitors::MonitorCall;
pub(crate) use place::Resume;
pub(crate) use window::connection_window;

use crate::breaker::BreakerEvents;
use crate::route::{OutcomeLog, Router};
use crate::stats::Stats;
use crate::tls::TlsError;
use connection::UpstreamConnection;
use connector::Http2Settings;
use endpoint::Endpoint;
use liveness::Keepalive;
use monitors::MonitorTable;
use place::MonitorPreferences;
use window::StreamWindowSizing;

/// An endpoint the pool could not set up.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The endpoint's TLS settings are unusable.
    #[error("endpoint {endpoint}: {source}")]
    Tls {
        /// The endpoint id.
        endpoint: String,
        /// The TLS problem.
        source: TlsError,
    },
    /// The endpoint's URL or metadata cannot be used in HTTP/2 headers.
    #[error("endpoint {endpoint}: {problem}")]
    Invalid {
        /// The endpoint id.
        endpoint: String,
        /// The problem.
        problem: String,
    },
}

/// The connections of one traffic class.
pub(crate) struct Group {
    class: TrafficClass,
    limit: usize,
    min_connections: usize,
    max_streams: u32,
    /// Connections the scaler wants held, opened ahead of demand (at least `min_connections`).
    target: AtomicUsize,
    /// Connections open now, draining ones included (they still count against the caps).
    held: AtomicUsize,
    counters: load::GroupCounters,
    state: Mutex<GroupState>,
    waiting: AtomicUsize,
    released: Notify,
}

#[derive(Default)]
struct GroupState {
    connections: Vec<Arc<UpstreamConnection>>,
    /// Connections being opened.
    opening: usize,
    /// Streams waiting for a connection being opened (besides the one opening each).
    promised: usize,
}

/// The pool: every group, every endpoint, and the global cap.
pub(crate) struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    groups: [Arc<Group>; 3],
    router: Arc<dyn Router>,
    stats: Arc<Stats>,
    global_cap: usize,
    open_connections: Arc<AtomicUsize>,
    next_connection_id: AtomicU64,
    connect_timeout: Duration,
    queue_capacity: usize,
    queue_timeout: Duration,
    keepalive: Option<Keepalive>,
    max_drain_time: Duration,
    failure_kinds: FailureKinds,
    connection_breakers: BreakerSettings,
    breaker_events: Arc<BreakerEvents>,
    /// Woken when a stream slot under an endpoint's `max_streams` frees up (streams of every
    /// class may wait for it).
    limits_released: Arc<Notify>,
    monitors: MonitorTable,
    preferences: HashMap<Arc<str>, MonitorPreferences>,
    /// Decisions being watched for the learning loop.
    outcomes: OutcomeLog,
    /// Ends background tasks (health checks) when the pool goes away.
    stop: watch::Sender<bool>,
}

impl Pool {
    /// Builds the pool from the config. No connection is opened until [`Pool::warm`] or the first
    /// stream.
    pub fn new(
        config: &Config,
        router: Arc<dyn Router>,
        stats: Arc<Stats>,
    ) -> Result<Self, PoolError> {
        let stream_window = StreamWindowSizing {
            floor: config.pool.stream_window_bytes,
            budget: config.pool.stream_window_budget(),
        };
        let group = |class: TrafficClass| {
            let cfg: &ClassConfig = config.classes.get(class);
            Arc::new(Group {
                class,
                limit: cfg.connection_limit(config.pool.max_connections),
                min_connections: cfg.min_connections,
                max_streams: u32::try_from(cfg.max_streams_per_connection).unwrap_or(u32::MAX),
                target: AtomicUsize::new(cfg.min_connections),
                held: AtomicUsize::new(0),
                counters: load::GroupCounters::default(),
                state: Mutex::new(GroupState::default()),
                waiting: AtomicUsize::new(0),
                released: Notify::new(),
            })
        };
        let groups = TrafficClass::ALL.map(group);
        let max_streams = groups.iter().map(|g| g.max_streams).max().unwrap_or(1);
        let settings = Http2Settings {
            stream_window,
            // Room for every stream's floor window plus twice the budget: streams that stalled
            // while they had a larger share hold at most budget + budget/2 + budget/4 + ...,
            // and must not take the window the others need.
            connection_window: connection_window(
                u64::from(stream_window.floor) * u64::from(max_streams)
                    + 2 * u64::from(stream_window.budget),
            ),
        };
        let breaker_events = Arc::new(BreakerEvents::default());
        let limits_released = Arc::new(Notify::new());
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Endpoint::new(i, e, config, settings, &breaker_events, &limits_released)
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let preferences = config
            .monitors
            .iter()
            .map(|m| {
                let preferences = MonitorPreferences {
                    region: m.prefer_region.as_deref().map(Arc::from),
                    max_latency: m.max_latency,
                };
                (Arc::from(m.id.as_str()), preferences)
            })
            .collect();
        let pool = &config.pool;
        Ok(Self {
            endpoints,
            groups,
            router,
            stats,
            global_cap: pool.max_connections,
            open_connections: Arc::new(AtomicUsize::new(0)),
            next_connection_id: AtomicU64::new(1),
            connect_timeout: pool.connect_timeout,
            queue_capacity: pool.queue_capacity,
            queue_timeout: pool.queue_timeout,
            keepalive: (!pool.keepalive_interval.is_zero()).then_some(Keepalive {
                interval: pool.keepalive_interval,
                timeout: pool.keepalive_timeout,
                probe_after: pool.probe_after_silence,
            }),
            max_drain_time: pool.max_drain_time,
            failure_kinds: config.breakers.failures,
            connection_breakers: config.breakers.settings(BreakerScope::Connection),
            monitors: MonitorTable::new(
                config,
                config.breakers.settings(BreakerScope::Monitor),
                &breaker_events,
            ),
            breaker_events,
            limits_released,
            preferences,
            outcomes: OutcomeLog::new(&config.learning),
            stop: watch::Sender::new(false),
        })
    }

    /// Connections open now, over all groups.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Relaxed)
    }

    /// The global connection cap.
    pub fn global_cap(&self) -> usize {
        self.global_cap
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| &*e.id == id)
    }

    /// Decisions watched for the learning loop ([`OutcomeLog::drain`] takes the finished ones).
    pub fn outcomes(&self) -> &OutcomeLog {
        &self.outcomes
    }

    /// Breaker state changes, oldest first.
    pub fn breaker_events(&self) -> &Arc<BreakerEvents> {
        &self.breaker_events
    }
}
