//! Sluice's configuration: one TOML file, parsed with serde and validated before anything starts.
//!
//! This crate owns the schema, its defaults, `${VAR}` secret expansion and validation. It must not
//! open sockets or files other than the configuration itself and the files it names for existence
//! checks: it describes what the host should do, it does not do it.
//!
//! Every error names the key it is about (`endpoints[1].url`, `classes.realtime.share`) and the
//! problem, and unknown keys are rejected so that a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod alerts;
mod analytics;
mod answers;
mod cluster;
mod duration;
mod env;
mod limits;
mod plugins;
mod resilience;
mod scorer;
mod server;

pub use alerts::{
    AlertRetryConfig, AlertsConfig, BreakerOpenRule, EndpointMisconfiguredRule,
    EndpointUnhealthyRule, ThresholdRule, WebhookConfig,
};
pub use analytics::{AnalyticsConfig, ScalingConfig, StoreConfig};
pub use answers::{Answer, AnswersConfig, CODE_NAMES, code_of};
pub use cluster::ClusterConfig;
pub use duration::MAX_DURATION;
pub use env::expand_env;
pub use limits::EndpointLimits;
pub use plugins::{AdminConfig, AdminTls, PluginsConfig, SlotConfig, SlotKind};
pub use resilience::{
    BreakerScope, BreakerSettings, BreakerTable, BreakersConfig, FailureKinds, HealthConfig,
    RateLimitConfig, ResumeMode, UnknownBreakerScope,
};
pub use scorer::{LearningConfig, ScorerConfig};
pub use server::{MAX_MONITOR_ID_BYTES, ServerConfig, ServerTls, check_monitor_id};

/// A configuration that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has a value of the wrong type, or an unknown key.
    #[error("invalid config{}: {message}", origin(.path))]
    Parse {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid config{}: `{key}`: {problem}", origin(.path))]
    Invalid {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The dotted key the problem is about, e.g. `endpoints[0].url`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    }
}

/// The whole configuration of one Sluice process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The front: where monitors connect.
    #[serde(default)]
    pub server: ServerConfig,
    /// The upstream connection pool shared by all monitors.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The traffic classes and their share of the connection budget.
    #[serde(default)]
    pub classes: Classes,
    /// The upstream endpoints; at least one.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Known monitors (client services).
    #[serde(default)]
    pub monitors: Vec<MonitorConfig>,
    /// Options for specific gRPC methods.
    #[serde(default)]
    pub methods: Vec<MethodConfig>,
    /// Policy plugins (routing, scaling, anomaly detection).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The admin HTTP listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Circuit breakers per connection, endpoint and monitor.
    #[serde(default)]
    pub breakers: BreakersConfig,
    /// Endpoint health checks and outlier detection.
    #[serde(default)]
    pub health: HealthConfig,
    /// The scaler loop that sizes each class group.
    #[serde(default)]
    pub scaling: ScalingConfig,
    /// The analytics loop: anomalies, recommendations, predictions.
    #[serde(default)]
    pub analytics: AnalyticsConfig,
    /// The embedded history store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Alert rules and notifications.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The ONNX model behind the router's `scorer` import.
    #[serde(default)]
    pub scorer: ScorerConfig,
    /// Recording routing decisions and their outcomes, to train the scorer's model.
    #[serde(default)]
    pub learning: LearningConfig,
    /// Several instances sharing the endpoints' limits through etcd; unset: this instance
    /// runs alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// Limits of the upstream connection pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Global cap on upstream connections over all endpoints and classes. Default 40.
    pub max_connections: usize,
    /// Time allowed for TCP connect, TLS and the HTTP/2 handshake. Default 5 s.
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// New streams that may wait for a free slot, per class. Default 1024.
    pub queue_capacity: usize,
    /// How long a new stream may wait for a slot before `RESOURCE_EXHAUSTED`. Default 5 s.
    #[serde(with = "crate::duration")]
    pub queue_timeout: Duration,
    /// HTTP/2 receive window of each stream, in bytes: the most a stream buffers on each side
    /// before flow control holds its sender back (upstream, a connection with few streams
    /// grants more; see `stream_window_budget_bytes`). Default 128 KiB.
    pub stream_window_bytes: u32,
    /// Receive window an upstream connection shares among its streams, in bytes. A connection
    /// carrying few streams grants each `stream_window_budget_bytes / streams` (rounded down to
    /// a power of two), never less than `stream_window_bytes`: a lone fast stream gets a deep
    /// pipeline, a busy connection keeps small per-stream buffers. Equal to
    /// `stream_window_bytes` turns the growth off. Default 1 MiB, or `stream_window_bytes` if
    /// that is larger; see [`PoolConfig::stream_window_budget`].
    pub stream_window_budget_bytes: Option<u32>,
    /// An idle-or-busy upstream connection is PINGed this often; `0s` turns keepalive off.
    /// Default 10 s.
    #[serde(with = "crate::duration")]
    pub keepalive_interval: Duration,
    /// A PING not answered within this closes the connection (a black hole is detected within
    /// `keepalive_interval + keepalive_timeout`). Default 5 s.
    #[serde(with = "crate::duration")]
    pub keepalive_timeout: Duration,
    /// A connection carrying streams that has heard nothing from its peer for this long, and
    /// for four times its usual pauses, is asked with a PING whether the peer is still there.
    /// Unanswered within ten round trips (at least 200 ms), its resumable streams move to
    /// another endpoint; the connection closes only at `keepalive_timeout`. `0s` turns these
    /// probes off (keepalive still runs). Default 250 ms.
    #[serde(with = "crate::duration")]
    pub probe_after_silence: Duration,
    /// First pause before reconnecting to an endpoint that refused a connection; each further
    /// refusal doubles it (with jitter) up to `reconnect_backoff_max`. Default 100 ms.
    #[serde(with = "crate::duration")]
    pub reconnect_backoff: Duration,
    /// Longest reconnect pause. Default 10 s.
    #[serde(with = "crate::duration")]
    pub reconnect_backoff_max: Duration,
    /// How long a draining connection (GOAWAY, scale-down, endpoint drain) keeps its streams
    /// that cannot be resumed before it is closed. Default 30 s.
    #[serde(with = "crate::duration")]
    pub max_drain_time: Duration,
}

impl PoolConfig {
    /// The largest flow-control window HTTP/2 allows (2^31 - 1 bytes); no window key may
    /// exceed it.
    pub const MAX_WINDOW_BYTES: u32 = (1 << 31) - 1;

    /// Default of [`PoolConfig::stream_window_budget_bytes`].
    pub const DEFAULT_STREAM_WINDOW_BUDGET: u32 = 1024 * 1024;

    /// The receive window an upstream connection shares among its streams: the configured
    /// budget, else 1 MiB or one stream window, whichever is larger.
    pub fn stream_window_budget(&self) -> u32 {
        self.stream_window_budget_bytes
            .unwrap_or(Self::DEFAULT_STREAM_WINDOW_BUDGET.max(self.stream_window_bytes))
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 40,
            connect_timeout: Duration::from_secs(5),
            queue_capacity: 1024,
            queue_timeout: Duration::from_secs(5),
            stream_window_bytes: 128 * 1024,
            stream_window_budget_bytes: None,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            probe_after_silence: Duration::from_millis(250),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            max_drain_time: Duration::from_secs(30),
        }
    }
}

/// The three traffic classes. Each monitor belongs to one; each class has its own connection group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TrafficClass {
    /// Latency-sensitive feeds (e.g. slot or price updates).
    Realtime,
    /// Event streams (transactions, logs).
    Event,
    /// State snapshots and change streams (accounts).
    State,
}

impl TrafficClass {
    /// All classes, in a fixed order usable as an index.
    pub const ALL: [TrafficClass; 3] = [Self::Realtime, Self::Event, Self::State];

    /// The class's position in [`TrafficClass::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Realtime => 0,
            Self::Event => 1,
            Self::State => 2,
        }
    }

    /// The lowercase name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Realtime => "realtime",
            Self::Event => "event",
            Self::State => "state",
        }
    }
}

impl fmt::Display for TrafficClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of every class. A class table that leaves out `share` keeps the class's default
/// share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ClassTables")]
pub struct Classes {
    /// Real-time class. Default share 45%.
    pub realtime: ClassConfig,
    /// Event class. Default share 30%.
    pub event: ClassConfig,
    /// State class. Default share 20%.
    pub state: ClassConfig,
}

impl Default for Classes {
    fn default() -> Self {
        Self {
            realtime: ClassConfig::with_share(0.45),
            event: ClassConfig::with_share(0.30),
            state: ClassConfig::with_share(0.20),
        }
    }
}

/// `[classes.*]` as written: a `share` left out is NaN until [`Classes`] fills in the class's
/// default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClassTables {
    realtime: ClassConfig,
    event: ClassConfig,
    state: ClassConfig,
}

impl Default for ClassTables {
    fn default() -> Self {
        let Classes {
            realtime,
            event,
            state,
        } = Classes::default();
        Self {
            realtime,
            event,
            state,
        }
    }
}

impl From<ClassTables> for Classes {
    fn from(tables: ClassTables) -> Self {
        let defaults = Classes::default();
        let fill = |mut class: ClassConfig, default: &ClassConfig| {
            if class.share.is_nan() {
                class.share = default.share;
            }
            class
        };
        Self {
            realtime: fill(tables.realtime, &defaults.realtime),
            event: fill(tables.event, &defaults.event),
            state: fill(tables.state, &defaults.state),
        }
    }
}

impl Classes {
    /// The settings of one class.
    pub fn get(&self, class: TrafficClass) -> &ClassConfig {
        match class {
            TrafficClass::Realtime => &self.realtime,
            TrafficClass::Event => &self.event,
            TrafficClass::State => &self.state,
        }
    }
}

/// One class's connection budget and stream behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// Fraction of `pool.max_connections` this class may hold (0..=1). Default 0.45 for
    /// `realtime`, 0.30 for `event`, 0.20 for `state`.
    #[serde(default = "unset_share")]
    pub share: f64,
    /// Connections kept open even when idle. Default 0.
    #[serde(default)]
    pub min_connections: usize,
    /// Upper bound on the class's connections; defaults to its share of the global cap.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Streams placed on one connection at most; the peer's SETTINGS_MAX_CONCURRENT_STREAMS
    /// lowers it further. Default 100.
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: usize,
    /// What happens to a monitor that reads slower than its upstream sends. Default `block`.
    #[serde(default)]
    pub lag_policy: LagPolicy,
    /// With `lag_policy = "disconnect"`: how long a monitor may refuse data before it is cut off
    /// with `RESOURCE_EXHAUSTED "lagging"`. Default 2 s.
    #[serde(default = "default_lag_timeout", with = "crate::duration")]
    pub lag_timeout: Duration,
}

/// A `share` the table left out; [`Classes`] replaces it with the class's default.
fn unset_share() -> f64 {
    f64::NAN
}

fn default_max_streams() -> usize {
    100
}

fn default_lag_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClassConfig {
    fn with_share(share: f64) -> Self {
        Self {
            share,
            min_connections: 0,
            max_connections: None,
            max_streams_per_connection: default_max_streams(),
            lag_policy: LagPolicy::Block,
            lag_timeout: default_lag_timeout(),
        }
    }

    /// The class's connection limit given the global cap: `max_connections` if set, otherwise
    /// its share of the cap (at least one).
    pub fn connection_limit(&self, global_cap: usize) -> usize {
        self.max_connections
            .unwrap_or_else(|| ((global_cap as f64 * self.share).floor() as usize).max(1))
    }
}

/// How Sluice treats a monitor that cannot keep up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LagPolicy {
    /// Hold the upstream stream back through HTTP/2 flow control. Only this monitor's stream
    /// slows down; other streams on the same connection are unaffected.
    #[default]
    Block,
    /// Cut the monitor off with `RESOURCE_EXHAUSTED "lagging"` once it has refused data for
    /// `lag_timeout`.
    Disconnect,
}

/// One upstream endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique name used in logs, metrics and the admin API.
    pub id: String,
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub url: String,
    /// Free-form region label. Default `local`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Lower numbers are preferred. Default 0.
    #[serde(default)]
    pub priority: u32,
    /// Use TLS even for an `http://` URL. `https://` implies it.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA bundle that verifies the endpoint; without it the Mozilla roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the certificate, when it differs from the URL's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Metadata added to every request sent to this endpoint (e.g. a provider's `x-token`), so
    /// that monitors never hold it. Values may be `${ENV_VAR}`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Cap on stream creation towards this endpoint (new streams and resumes). Unset: no cap.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The provider's per-account caps for this endpoint (`[endpoints.limits]`).
    #[serde(default)]
    pub limits: EndpointLimits,
    /// What the provider's final statuses mean for this endpoint (quota pushback, wrong
    /// credentials, failure).
    #[serde(default)]
    pub answers: AnswersConfig,
}

fn default_region() -> String {
    "local".to_owned()
}

impl EndpointConfig {
    /// An endpoint with every optional field at its default.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            region: default_region(),
            priority: 0,
            tls: false,
            ca_file: None,
            tls_server_name: None,
            metadata: BTreeMap::new(),
            rate_limit: None,
            limits: EndpointLimits::default(),
            answers: AnswersConfig::default(),
        }
    }

    /// Whether connections to this endpoint use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.url.starts_with("https://")
    }

    /// The `host:port` part of the URL (validated by [`Config::validate`]).
    pub fn authority(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&self.url);
        rest.trim_end_matches('/')
    }

    /// The host part of the URL, without brackets for IPv6 literals.
    pub fn host(&self) -> &str {
        let authority = self.authority();
        if let Some(rest) = authority.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }
}

/// A known monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// The name the monitor sends in `x-sluice-monitor`.
    pub id: String,
    /// Its traffic class.
    pub class: TrafficClass,
    /// Critical monitors are protected first by routing and alerting.
    #[serde(default)]
    pub critical: bool,
    /// When set, the monitor must also send this value in `x-sluice-token`. May be `${ENV_VAR}`.
    #[serde(default)]
    pub token: Option<String>,
    /// Prefer connections to endpoints in this region while any is usable.
    #[serde(default)]
    pub prefer_region: Option<String>,
    /// Avoid connections whose measured latency is above this while others are below it.
    #[serde(default, with = "crate::duration")]
    pub max_latency: Option<Duration>,
    /// How much the monitor suffers from latency, 0..=1, as routers see it. Default: derived
    /// from the class and the measured message rate (see `wit/types.wit`, `traffic-profile`).
    #[serde(default)]
    pub latency_sensitivity: Option<f64>,
    /// Streams this monitor may have open at once. Default `server.max_streams_per_monitor`.
    #[serde(default)]
    pub max_streams: Option<usize>,
}

/// Options for a method or a whole service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// `/package.Service/Method`, or `/package.Service/*` for every method of a service.
    pub path: String,
    /// Share one upstream stream among monitors sending identical server-streaming requests
    /// (or, with `bidi`, identical subscriptions).
    #[serde(default)]
    pub share: bool,
    /// The method is a bidirectional subscription whose request stream stays open for pings
    /// and subscription changes (e.g. Yellowstone's `/geyser.Geyser/Subscribe`). With `share`,
    /// the resumer plugin, which must know the protocol, says which request messages are
    /// subscriptions (shared when equal), pings (answered by Sluice) or changes (the monitor
    /// moves to a stream of its own, from where it was), and where each response stands, so
    /// that a broken upstream stream resumes with no gap and no duplicate (`resume_attempts`,
    /// `resume_timeout`, `dedup_window`). Without `share` it changes nothing. Default false.
    #[serde(default)]
    pub bidi: bool,
    /// With `share` and `bidi`: subscriptions that differ but may travel together (the
    /// resumer says which: for Yellowstone, the same commitment and data slices) are packed
    /// into the fewest upstream subscriptions that fit every endpoint's
    /// `limits.max_filters_per_subscription`. Each monitor's filters are renamed within the
    /// pack, and each update reaches only the monitors whose filters it matched, with their
    /// own names. Identical subscriptions still share one set of filters. Default false.
    #[serde(default)]
    pub pack: bool,
    /// Request metadata that must also match for two requests to share a stream
    /// (e.g. `authorization`). Compared case-insensitively by name.
    #[serde(default)]
    pub share_key_metadata: Vec<String>,
    /// Subscribers a shared stream may run ahead of before the slowest is cut off as lagging,
    /// in messages. Default 1024.
    #[serde(default = "default_share_buffer")]
    pub share_buffer_messages: usize,
    /// Overrides `server.max_message_bytes` for this method.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// How a broken upstream stream is resumed: `none` (default), `replay-last` or `replay-all`.
    #[serde(default)]
    pub resume: ResumeMode,
    /// New upstream streams that may break before delivering anything, for one resume, before
    /// the monitor gets `UNAVAILABLE`. Default 5.
    #[serde(default = "default_resume_attempts")]
    pub resume_attempts: u32,
    /// Time one resume may take, waiting for an endpoint included. Default 10 s.
    #[serde(default = "default_resume_timeout", with = "crate::duration")]
    pub resume_timeout: Duration,
    /// Also resume when the upstream ends the stream with `UNAVAILABLE`. Default true.
    #[serde(default = "default_true")]
    pub resume_on_unavailable: bool,
    /// After a resume, the first `dedup_window` response messages are dropped when identical
    /// (by hash) to one of the last `dedup_window` delivered before it; 0 turns the check off.
    /// Default 0. Shared `bidi` subscriptions drop by the resumer's keys instead, remembering
    /// the keys of at least the last 4096 messages (more when set higher): enough to cover the
    /// resumer's look-back.
    #[serde(default)]
    pub dedup_window: usize,
    /// Request bytes kept for `replay-all`; a stream that sends more is no longer resumable.
    /// Default 1 MiB.
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer_bytes: usize,
    /// Hold this method's streams to their first response message: one that has not arrived
    /// this long after the request is in counts as a failure, and one later than
    /// `slow_call_duration` as slow. Unset (the default): a stream only has to start its
    /// response (headers or a message) within `breakers.first_message_timeout`, and is judged
    /// slow on that, so a subscription that stays quiet after its headers is never a failure.
    /// Set it for methods whose server answers at once (unary, or streams that must speak
    /// first). Must be > 0.
    #[serde(default, with = "crate::duration")]
    pub first_message_timeout: Option<Duration>,
    /// Open the upstream stream only once the monitor's request has begun (a whole message, the
    /// request's end, or a stream window's worth of it) rather than as soon as the call is
    /// admitted: calls that never send, or are refused before they do, then never reach the
    /// provider. For unary and server-streaming methods, whose servers cannot answer before
    /// the request anyway; not for bidi methods whose clients wait for the response headers
    /// before sending (tonic's generated clients do). Not with `share`, which always reads
    /// the request first. Default false.
    #[serde(default)]
    pub open_on_request: bool,
}

fn default_share_buffer() -> usize {
    1024
}

fn default_resume_attempts() -> u32 {
    5
}

fn default_resume_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}

fn default_replay_buffer() -> usize {
    1024 * 1024
}

impl MonitorConfig {
    /// A monitor with every optional field at its default.
    pub fn new(id: impl Into<String>, class: TrafficClass) -> Self {
        Self {
            id: id.into(),
            class,
            critical: false,
            token: None,
            prefer_region: None,
            max_latency: None,
            latency_sensitivity: None,
            max_streams: None,
        }
    }

    /// Streams the monitor may have open at once under `server`'s limits.
    pub fn stream_limit(&self, server: &ServerConfig) -> usize {
        self.max_streams.unwrap_or(server.max_streams_per_monitor)
    }
}

impl MethodConfig {
    /// Options for `path` with every field at its default.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            share: false,
            bidi: false,
            pack: false,
            share_key_metadata: Vec::new(),
            share_buffer_messages: default_share_buffer(),
            max_message_bytes: None,
            resume: ResumeMode::None,
            resume_attempts: default_resume_attempts(),
            resume_timeout: default_resume_timeout(),
            resume_on_unavailable: true,
            dedup_window: 0,
            replay_buffer_bytes: default_replay_buffer(),
            open_on_request: false,
            first_message_timeout: None,
        }
    }

    /// Whether this entry applies to `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self.path.strip_suffix("/*") {
            Some(service) => path
                .strip_prefix(service)
                .is_some_and(|rest| rest.starts_with('/')),
            None => self.path == path,
        }
    }
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.with_path(path))
    }

    /// Parses, expands `${VAR}` secrets from the process environment, and validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.expand_secrets(&|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces `${VAR}` in endpoint metadata, monitor tokens, the admin token, the cluster's
    /// etcd password and alert webhooks using `lookup`.
    pub fn expand_secrets(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (i, endpoint) in self.endpoints.iter_mut().enumerate() {
            for (name, value) in endpoint.metadata.iter_mut() {
                *value = expand_env(value, lookup).map_err(|problem| {
                    invalid(format!("endpoints[{i}].metadata.{name}"), problem)
                })?;
            }
        }
        for (i, monitor) in self.monitors.iter_mut().enumerate() {
            if let Some(token) = monitor.token.as_mut() {
                *token = expand_env(token, lookup)
                    .map_err(|problem| invalid(format!("monitors[{i}].token"), problem))?;
            }
        }
        match self.admin.token.as_mut() {
            Some(token) => {
                *token = expand_env(token, lookup)
                    .map_err(|problem| invalid("admin.token".to_owned(), problem))?;
            }
            None => self.admin.token = lookup("SLUICE_ADMIN_TOKEN").filter(|t| !t.is_empty()),
        }
        if let Some(password) = self.cluster.as_mut().and_then(|c| c.password.as_mut()) {
            *password = expand_env(password, lookup)
                .map_err(|problem| invalid("cluster.password".to_owned(), problem))?;
        }
        self.alerts.expand_secrets(lookup)
    }

    /// Checks every cross-field rule; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_pool_and_classes()?;
        self.validate_endpoints()?;
        self.validate_monitors()?;
        self.validate_methods()?;
        self.validate_plugins()?;
        self.validate_admin()?;
        self.validate_resilience()?;
        self.validate_analytics()?;
        self.validate_scorer()?;
        self.validate_learning()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.validate_alerts()
    }

    /// The method options that apply to `path`: the first exact match, else the first service
    /// wildcard.
    pub fn method(&self, path: &str) -> Option<&MethodConfig> {
        self.methods
            .iter()
            .find(|m| m.path == path)
            .or_else(|| self.methods.iter().find(|m| m.matches(path)))
    }

    fn validate_pool_and_classes(&self) -> Result<(), ConfigError> {
        let pool = &self.pool;
        if pool.max_connections == 0 {
            return Err(invalid("pool.max_connections", "must be at least 1"));
        }
        if pool.connect_timeout.is_zero() {
            return Err(invalid("pool.connect_timeout", "must be greater than 0"));
        }
        if pool.queue_timeout.is_zero() {
            return Err(invalid("pool.queue_timeout", "must be greater than 0"));
        }
        if !(65_535..=PoolConfig::MAX_WINDOW_BYTES).contains(&pool.stream_window_bytes) {
            return Err(invalid(
                "pool.stream_window_bytes",
                "must be between 65535 and 2147483647 (HTTP/2 window limits)",
            ));
        }
        if !(pool.stream_window_bytes..=PoolConfig::MAX_WINDOW_BYTES)
            .contains(&pool.stream_window_budget())
        {
            return Err(invalid(
                "pool.stream_window_budget_bytes",
                format!(
                    "must be between pool.stream_window_bytes ({}) and 2147483647",
                    pool.stream_window_bytes
                ),
            ));
        }
        let mut share_sum = 0.0;
        let mut min_sum = 0;
        for class in TrafficClass::ALL {
            let cfg = self.classes.get(class);
            let key = |field: &str| format!("classes.{class}.{field}");
            if !(0.0..=1.0).contains(&cfg.share) || cfg.share.is_nan() {
                return Err(invalid(
                    key("share"),
                    format!("must be between 0 and 1, got {}", cfg.share),
                ));
            }
            share_sum += cfg.share;
            if cfg.max_streams_per_connection == 0 {
                return Err(invalid(
                    key("max_streams_per_connection"),
                    "must be at least 1",
                ));
            }
            let limit = cfg.connection_limit(pool.max_connections);
            if limit == 0 {
                return Err(invalid(key("max_connections"), "must be at least 1"));
            }
            if limit > pool.max_connections {
                return Err(invalid(
                    key("max_connections"),
                    format!(
                        "{limit} exceeds pool.max_connections ({})",
                        pool.max_connections
                    ),
                ));
            }
            if cfg.min_connections > limit {
                return Err(invalid(
                    key("min_connections"),
                    format!(
                        "{} exceeds the class's connection limit ({limit})",
                        cfg.min_connections
                    ),
                ));
            }
            if cfg.lag_policy == LagPolicy::Disconnect && cfg.lag_timeout.is_zero() {
                return Err(invalid(
                    key("lag_timeout"),
                    "must be greater than 0 with lag_policy = \"disconnect\"",
                ));
            }
            min_sum += cfg.min_connections;
        }
        if share_sum > 1.0 + 1e-9 {
            return Err(invalid(
                "classes",
                format!("the shares add up to {share_sum:.2}; they must not exceed 1"),
            ));
        }
        if min_sum > pool.max_connections {
            return Err(invalid(
                "classes",
                format!(
                    "min_connections add up to {min_sum}, more than pool.max_connections ({})",
                    pool.max_connections
                ),
            ));
        }
        Ok(())
    }

    fn validate_endpoints(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "at least one [[endpoints]] entry is required",
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |field: &str| format!("endpoints[{i}].{field}");
            if endpoint.id.trim().is_empty() {
                return Err(invalid(key("id"), "must not be empty"));
            }
            if self.endpoints[..i].iter().any(|e| e.id == endpoint.id) {
                return Err(invalid(
                    key("id"),
                    format!("duplicate endpoint id {:?}", endpoint.id),
                ));
            }
            let Some((scheme, rest)) = endpoint.url.split_once("://") else {
                return Err(invalid(
                    key("url"),
                    format!("{:?} is not a URL like http://host:port", endpoint.url),
                ));
            };
            if scheme != "http" && scheme != "https" {
                return Err(invalid(
                    key("url"),
                    format!("scheme {scheme:?} is not supported (use http or https)"),
                ));
            }
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(invalid(
                    key("url"),
                    format!("{:?} must be scheme://host:port with no path", endpoint.url),
                ));
            }
            let port_ok = authority.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return Err(invalid(
                    key("url"),
                    format!("{:?} needs an explicit host and port", endpoint.url),
                ));
            }
            if let Some(ca) = &endpoint.ca_file {
                if !endpoint.uses_tls() {
                    return Err(invalid(
                        key("ca_file"),
                        "is set but the endpoint does not use TLS (set tls = true or use https://)",
                    ));
                }
                require_file(&key("ca_file"), ca)?;
            }
            for (name, value) in &endpoint.metadata {
                check_metadata(&key(&format!("metadata.{name}")), name, value)?;
            }
            if let Some(limit) = &endpoint.rate_limit {
                if !(limit.streams_per_second > 0.0 && limit.streams_per_second.is_finite()) {
                    return Err(invalid(
                        key("rate_limit.streams_per_second"),
                        "must be a positive number",
                    ));
                }
                if limit.burst == Some(0) {
                    return Err(invalid(key("rate_limit.burst"), "must be at least 1"));
                }
            }
            endpoint
                .limits
                .validate(&key("limits"), self.health.active)?;
            endpoint.answers.validate(&key("answers"))?;
        }
        Ok(())
    }

    fn validate_monitors(&self) -> Result<(), ConfigError> {
        for (i, monitor) in self.monitors.iter().enumerate() {
            if monitor.id.trim().is_empty() {
                return Err(invalid(format!("monitors[{i}].id"), "must not be empty"));
            }
            if self.monitors[..i].iter().any(|m| m.id == monitor.id) {
                return Err(invalid(
                    format!("monitors[{i}].id"),
                    format!("duplicate monitor id {:?}", monitor.id),
                ));
            }
            if monitor.token.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    format!("monitors[{i}].token"),
                    "must not be empty when set",
                ));
            }
            if monitor
                .latency_sensitivity
                .is_some_and(|s| !(0.0..=1.0).contains(&s))
            {
                return Err(invalid(
                    format!("monitors[{i}].latency_sensitivity"),
                    "must be between 0 and 1",
                ));
            }
        }
        Ok(())
    }

    fn validate_methods(&self) -> Result<(), ConfigError> {
        for (i, method) in self.methods.iter().enumerate() {
            let key = |field: &str| format!("methods[{i}].{field}");
            let path = method.path.strip_suffix("/*").unwrap_or(&method.path);
            let valid = path
                .strip_prefix('/')
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !valid {
                return Err(invalid(
                    key("path"),
                    format!(
                        "{:?} must look like /package.Service/Method or /package.Service/*",
                        method.path
                    ),
                ));
            }
            if method.open_on_request && method.share {
                return Err(invalid(
                    key("open_on_request"),
                    "cannot be combined with share = true (shared calls always read their \
                     request first)",
                ));
            }
            if method.share && method.bidi && !self.plugins.has_resumer() {
                return Err(invalid(
                    key("bidi"),
                    "sharing a bidirectional subscription needs a resumer plugin that knows its \
                     protocol (for Yellowstone, plugins/rust/yellowstone): set \
                     [plugins.resumer] file, or put resumer.wasm in plugins.dir",
                ));
            }
            if method.pack && !(method.share && method.bidi) {
                return Err(invalid(
                    key("pack"),
                    "needs share = true and bidi = true (packing merges shared bidirectional \
                     subscriptions)",
                ));
            }
            if method.resume.resumes() {
                if method.share {
                    return Err(invalid(
                        key("resume"),
                        "cannot be combined with share = true (shared streams are not resumed)",
                    ));
                }
                if method.resume_attempts == 0 {
                    return Err(invalid(key("resume_attempts"), "must be at least 1"));
                }
                if method.resume_timeout.is_zero() {
                    return Err(invalid(key("resume_timeout"), "must be greater than 0"));
                }
            }
            if method.max_message_bytes == Some(0) {
                return Err(invalid(key("max_message_bytes"), "must be greater than 0"));
            }
            if method.first_message_timeout.is_some_and(|t| t.is_zero()) {
                return Err(invalid(
                    key("first_message_timeout"),
                    "must be greater than 0 (leave it unset to judge only the response's start)",
                ));
            }
            if method.share && method.share_buffer_messages == 0 {
                return Err(invalid(key("share_buffer_messages"), "must be at least 1"));
            }
            for name in &method.share_key_metadata {
                if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') {
                    return Err(invalid(
                        key("share_key_metadata"),
                        format!("{name:?} is not a lowercase metadata name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_plugins(&self) -> Result<(), ConfigError> {
        if let Some(dir) = self.plugins.dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(invalid(
                "plugins.dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        if self.plugins.cache_max_bytes < 1024 * 1024 {
            return Err(invalid(
                "plugins.cache_max_bytes",
                "must be at least 1 MiB (an empty cache_dir turns the cache off)",
            ));
        }
        for slot in SlotKind::ALL {
            let table = self.plugins.slot(slot);
            let key = |field: &str| format!("plugins.{slot}.{field}");
            if table
                .deadline
                .is_some_and(|d| d.is_zero() || d > Duration::from_secs(10))
            {
                return Err(invalid(key("deadline"), "must be between 1us and 10s"));
            }
            if table
                .memory_limit_bytes
                .is_some_and(|m| !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&m))
            {
                return Err(invalid(
                    key("memory_limit_bytes"),
                    "must be between 1 MiB and 4 GiB",
                ));
            }
            if table.failure_threshold == Some(0) {
                return Err(invalid(key("failure_threshold"), "must be at least 1"));
            }
            if table.failure_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                return Err(invalid(
                    key("failure_rate"),
                    "must be above 0 and at most 1 (1 turns the rate check off)",
                ));
            }
            if table
                .failure_window
                .is_some_and(|w| w < Duration::from_millis(100) || w > Duration::from_secs(3600))
            {
                return Err(invalid(
                    key("failure_window"),
                    "must be between 100ms and 1h",
                ));
            }
            if table.failure_min_calls == Some(0) {
                return Err(invalid(key("failure_min_calls"), "must be at least 1"));
            }
            if table
                .shadow_sample
                .is_some_and(|s| !(0.0..=1.0).contains(&s))
            {
                return Err(invalid(key("shadow_sample"), "must be between 0 and 1"));
            }
            for (field, file) in [("file", &table.file), ("shadow", &table.shadow)] {
                if let Some(file) = file {
                    let resolved = match &self.plugins.dir {
                        Some(dir) if file.is_relative() => dir.join(file),
                        _ => file.clone(),
                    };
                    if !resolved.is_file() {
                        return Err(invalid(
                            key(field),
                            format!("{} does not exist", resolved.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let admin = &self.admin;
        if admin.enabled && !admin.listen.ip().is_loopback() && admin.token.is_none() {
            return Err(invalid(
                "admin.token".to_owned(),
                format!(
                    "required when admin.listen ({}) is not a loopback address",
                    admin.listen
                ),
            ));
        }
        if admin.token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                "admin.token".to_owned(),
                "must not be empty when set",
            ));
        }
        if admin.max_upload_bytes == 0 {
            return Err(invalid(
                "admin.max_upload_bytes".to_owned(),
                "must be greater than 0",
            ));
        }
        for (i, entry) in admin.allowed_hosts.iter().enumerate() {
            AdminConfig::check_host_entry(entry).map_err(|problem| {
                invalid(
                    format!("admin.allowed_hosts[{i}]"),
                    format!("{entry:?} {problem}"),
                )
            })?;
        }
        for (i, entry) in admin.allowed_origins.iter().enumerate() {
            AdminConfig::check_origin_entry(entry).map_err(|problem| {
                invalid(
                    format!("admin.allowed_origins[{i}]"),
                    format!("{entry:?} {problem}"),
                )
            })?;
        }
        if let Some(tls) = &admin.tls {
            require_file("admin.tls.cert_file", &tls.cert_file)?;
            require_file("admin.tls.key_file", &tls.key_file)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(file.to_owned()),
                message,
            },
            ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                path: Some(file.to_owned()),
                key,
                problem,
            },
            other => other,
        }
    }
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        key: key.into(),
        problem: problem.into(),
    }
}

fn require_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("file {} does not exist", path.display()),
        ))
    }
}

fn check_metadata(key: &str, name: &str, value: &str) -> Result<(), ConfigError> {
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !name_ok || name.starts_with("grpc-") || name.starts_with(':') {
        return Err(invalid(
            key,
            format!("{name:?} is not a valid custom metadata name (lowercase, no grpc- prefix)"),
        ));
    }
    if name.ends_with("-bin") {
        return Err(invalid(
            key,
            "binary (-bin) metadata cannot be injected from the config",
        ));
    }
    if value.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(invalid(key, "value must be printable ASCII"));
    }
    Ok(())
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
