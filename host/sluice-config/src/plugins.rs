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
            router: SlotConfig::default(),
            scaler: SlotConfig::default(),
            anomaly: SlotConfig::default(),
            resumer: SlotConfig::default(),
        }
    }
}

impl PluginsConfig {
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
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Linear memory a plugin instance may grow to, in bytes. Default 64 MiB (interpreters for
    /// Python and JavaScript need tens of MiB).
    pub memory_limit_bytes: Option<u64>,
    /// Consecutive failures (trap, timeout, invalid answer, error) after which the plugin is
    /// disabled and the built-in policy takes over until it is re-enabled. Default 5.
    pub failure_threshold: Option<u32>,
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

    /// The effective shadow sampling share.
    pub fn shadow_share(&self) -> f64 {
        self.shadow_sample.unwrap_or(0.1)
    }

    /// Whether the self-test runs before activation.
    pub fn runs_self_test(&self) -> bool {
        self.self_test.unwrap_or(true)
    }
}

/// The admin HTTP listener (plugin uploads and actions; the dashboard and API grow here).
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            max_upload_bytes: 64 * 1024 * 1024,
        }
    }
}
