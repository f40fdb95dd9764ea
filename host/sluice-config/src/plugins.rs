//! `[plugins]` and `[admin]`: where policy plugins come from, their limits, and the admin
//! listener that accepts plugin uploads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The four policy slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// Places new streams on connections (`router` world).
    Router,
    /// Sizes the class groups (`scaler` world).
    Scaler,
    /// Finds anomalies in metric windows (`anomaly` world).
    Anomaly,
    /// Rewrites the requests of a broken stream before they are replayed (`resumer` world).
    Resumer,
}

impl SlotKind {
    /// Every slot, in a fixed order.
    pub const ALL: [SlotKind; 4] = [
        SlotKind::Router,
        SlotKind::Scaler,
        SlotKind::Anomaly,
        SlotKind::Resumer,
    ];

    /// The slot's (and its WIT world's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotKind::Router => "router",
            SlotKind::Scaler => "scaler",
            SlotKind::Anomaly => "anomaly",
            SlotKind::Resumer => "resumer",
        }
    }

    /// The slot names, comma separated, for messages: `router, scaler, anomaly, resumer`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// Parses `router`, `scaler`, `anomaly` or `resumer`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Policy plugins: the watched folder, the compile cache and one table per slot.
///
/// Its [`Default`] is the one source of its defaults: serde fills a table's missing keys from
/// it, so a config built in code and a parsed one agree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folder of `.wasm` policy components. At start, `<slot>.wasm` and `<slot>.shadow.wasm` in it
    /// are loaded unless the slot names its files; while running, any `.wasm` written into it is
    /// loaded into the slot of the world it targets (`*.shadow.wasm` as that slot's shadow).
    /// Unset: no folder is watched.
    pub dir: Option<PathBuf>,
    /// Watch `dir` and load new or changed files. Default true.
    pub watch: bool,
    /// Where compiled components are cached, keyed by content hash and engine version, so a
    /// restart or reload skips compilation. Default: `$XDG_CACHE_HOME/sluice/wasm` or
    /// `~/.cache/sluice/wasm`; the empty string disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Size cap of the compile cache in bytes (compiled code and digests): beyond it, the
    /// least recently used entries are deleted. Default 512 MiB.
    pub cache_max_bytes: u64,
    /// The router slot (default deadline 1 ms).
    pub router: SlotConfig,
    /// The scaler slot (default deadline 50 ms).
    pub scaler: SlotConfig,
    /// The anomaly slot (default deadline 50 ms).
    pub anomaly: SlotConfig,
    /// The resumer slot (default deadline 5 ms).
    pub resumer: SlotConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            cache_dir: None,
            cache_max_bytes: 512 * 1024 * 1024,
            router: SlotConfig::default(),
            scaler: SlotConfig::default(),
            anomaly: SlotConfig::default(),
            resumer: SlotConfig::default(),
        }
    }
}

impl PluginsConfig {
    /// Whether a resumer plugin is configured: a `file` that exists, or `resumer.wasm` in
    /// `dir` (a relative `file` is looked up in `dir`, else the working directory).
    pub fn has_resumer(&self) -> bool {
        let exists = |path: &std::path::Path| path.is_file();
        match (&self.resumer.file, &self.dir) {
            (Some(file), Some(dir)) if file.is_relative() => exists(&dir.join(file)),
            (Some(file), _) => exists(file),
            (None, Some(dir)) => exists(&dir.join("resumer.wasm")),
            (None, None) => false,
        }
    }

    /// The table for `slot`.
    pub fn slot(&self, slot: SlotKind) -> &SlotConfig {
        match slot {
            SlotKind::Router => &self.router,
            SlotKind::Scaler => &self.scaler,
            SlotKind::Anomaly => &self.anomaly,
            SlotKind::Resumer => &self.resumer,
        }
    }
}

/// One slot's plugin files, limits and configuration values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SlotConfig {
    /// The active plugin's file (relative paths are resolved against `plugins.dir`, else the
    /// working directory). Unset: `<dir>/<slot>.wasm` if it exists, else the built-in policy.
    pub file: Option<PathBuf>,
    /// A shadow plugin: fed the same inputs off the data path and compared with the active one.
    pub shadow: Option<PathBuf>,
    /// Per-call deadline, enforced by epoch interruption (rounded up to the 0.5 ms tick).
    /// Default 1 ms for the router, 5 ms for the resumer, 50 ms for the scaler and anomaly slots.
    #[serde(with = "crate::duration")]
    pub deadline: Option<Duration>,
    /// Linear memory a plugin instance may grow to, in bytes. Default 64 MiB (interpreters for
    /// Python and JavaScript need tens of MiB).
    pub memory_limit_bytes: Option<u64>,
    /// Consecutive failures (trap, timeout, invalid answer, error) after which the plugin is
    /// disabled and the built-in policy takes over until it is re-enabled. Default 5.
    pub failure_threshold: Option<u32>,
    /// Share of failed calls over `failure_window` above which the plugin is disabled too, so
    /// that failures mixed with successes cannot dodge the breaker; `1` turns this check off.
    /// Default 0.5.
    pub failure_rate: Option<f64>,
    /// The sliding window `failure_rate` is measured over (kept in ten buckets of a tenth
    /// each). Default 10 s.
    #[serde(with = "crate::duration")]
    pub failure_window: Option<Duration>,
    /// Calls the window must hold before `failure_rate` is judged. Default 20.
    pub failure_min_calls: Option<u32>,
    /// Share of calls also sent to the shadow plugin, 0..=1. Default 0.1.
    pub shadow_sample: Option<f64>,
    /// Run the self-test (sample inputs, valid answers within the deadline) before a plugin is
    /// activated. Default true; turn it off only to study a plugin that misbehaves on some inputs.
    pub self_test: Option<bool>,
    /// Values the plugin reads through the `config` import.
    pub config: BTreeMap<String, String>,
}

impl SlotConfig {
    /// Default deadline for `slot`.
    pub fn default_deadline(slot: SlotKind) -> Duration {
        match slot {
            SlotKind::Router => Duration::from_millis(1),
            SlotKind::Resumer => Duration::from_millis(5),
            SlotKind::Scaler | SlotKind::Anomaly => Duration::from_millis(50),
        }
    }

    /// The effective deadline.
    pub fn deadline_for(&self, slot: SlotKind) -> Duration {
        self.deadline
            .unwrap_or_else(|| Self::default_deadline(slot))
    }

    /// The effective memory cap in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit_bytes.unwrap_or(64 * 1024 * 1024)
    }

    /// The effective failure threshold.
    pub fn failures_to_disable(&self) -> u32 {
        self.failure_threshold.unwrap_or(5)
    }

    /// The effective failure-rate limit (0 < rate <= 1).
    pub fn failure_rate_to_disable(&self) -> f64 {
        self.failure_rate.unwrap_or(0.5)
    }

    /// The effective window of the failure rate.
    pub fn failure_rate_window(&self) -> Duration {
        self.failure_window.unwrap_or(Duration::from_secs(10))
    }

    /// The effective number of calls in the window before the rate is judged.
    pub fn failure_rate_min_calls(&self) -> u32 {
        self.failure_min_calls.unwrap_or(20)
    }

    /// The effective shadow sampling share.
    pub fn shadow_share(&self) -> f64 {
        self.shadow_sample.unwrap_or(0.1)
    }

    /// Whether the self-test runs before activation.
    pub fn runs_self_test(&self) -> bool {
        self.self_test.unwrap_or(true)
    }
}

/// The admin HTTP listener: the API, its WebSocket, the dashboard and Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API. Default true.
    pub enabled: bool,
    /// Address of the admin listener. Default `127.0.0.1:9901`. A non-loopback address
    /// requires `token`.
    pub listen: SocketAddr,
    /// Bearer token required on every request except `/healthz` and `/readyz`. Supports
    /// `${VAR}`. Default: `${SLUICE_ADMIN_TOKEN}` when that variable is set.
    pub token: Option<String>,
    /// Largest plugin upload accepted, in bytes. Default 64 MiB.
    pub max_upload_bytes: usize,
    /// `Host` values the listener answers to besides its own address (`listen` with the bound
    /// port, and for a loopback address `localhost`, `127.0.0.1` and `[::1]` with that port):
    /// exact `host[:port]` entries, compared without regard to case. Any other `Host` is
    /// refused, which is what stops DNS rebinding. Default none.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`http[s]://host[:port]`) allowed to call the API besides the
    /// listener's own (its scheme with an allowed host). A request with any other `Origin`
    /// is refused. Default none.
    pub allowed_origins: Vec<String>,
    /// Serve `POST` routes (uploads, promotions, breaker overrides, drains) without a token.
    /// Only possible on a loopback address (anywhere else a token is required) and without
    /// effect when `token` is set. Default false: without a token, writes are refused.
    pub allow_unauthenticated_writes: bool,
    /// Serve the admin API (the dashboard and `/ws` included) over HTTPS with this certificate
    /// and key. Default none (plain HTTP).
    pub tls: Option<AdminTls>,
}

/// `[admin.tls]`: the certificate and key the admin listener serves; the same keys as
/// `[server.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            max_upload_bytes: 64 * 1024 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            allow_unauthenticated_writes: false,
            tls: None,
        }
    }
}

impl AdminConfig {
    /// Checks an `allowed_hosts` entry: `host[:port]`, a DNS name or an IP address (IPv6 in
    /// brackets) with an optional port, nothing else. The error says what is wrong.
    pub fn check_host_entry(entry: &str) -> Result<(), String> {
        if entry.contains("://") {
            return Err("is host[:port] without a scheme (drop the http:// or https://)".into());
        }
        if let Some(c) = entry.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(format!(
                "is host[:port] without a path, query or user ({c:?} found)"
            ));
        }
        let (host, port) = split_host_port(entry).ok_or_else(|| {
            "has an IPv6 address without its closing bracket or with text after it; write [address]:port".to_owned()
        })?;
        if let Some(port) = port
            && port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(format!("has port {port:?}; a port is 1-65535"));
        }
        let valid = if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        };
        if valid {
            Ok(())
        } else {
            Err(format!(
                "has host {host:?}, which is neither a DNS name nor an IP address (IPv6 in [brackets])"
            ))
        }
    }

    /// Checks an `allowed_origins` entry: `http://host[:port]` or `https://host[:port]`, as a
    /// browser sends it in `Origin`. The error says what is wrong.
    pub fn check_origin_entry(entry: &str) -> Result<(), String> {
        let authority = entry
            .strip_prefix("http://")
            .or_else(|| entry.strip_prefix("https://"))
            .ok_or_else(|| "must start with http:// or https://".to_owned())?;
        Self::check_host_entry(authority)
    }
}

/// `host` and its port, if any, of a `host[:port]` entry. `None` when the entry cannot be
/// split: an unclosed IPv6 bracket, or text after the bracket that is not `:port`.
fn split_host_port(entry: &str) -> Option<(&str, Option<&str>)> {
    if entry.starts_with('[') {
        let end = entry.find(']')?;
        let (host, rest) = entry.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    Some(match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    })
}
