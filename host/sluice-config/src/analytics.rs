//! `[scaling]`, `[analytics]` and `[store]`: the loops beside the data path that size the class
//! groups, watch the metrics, and keep their history.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The scaler loop: every `period` it passes each group's metrics to the `scaler` policy and
/// applies its actions within the cooldowns, the group's min/max and the global cap.
///
/// The scaler decides how many connections each group holds ahead of demand: a scale-up opens
/// connections at once, a scale-down drains the least-loaded ones (resumable streams move, the
/// rest finish). Streams never wait for a period: when every connection is full, one opens on
/// demand up to the group's limit, and the scaler sees it at its next look.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingConfig {
    /// Run the scaler loop. Default true.
    pub enabled: bool,
    /// Time between scaler runs. Default 10 s.
    #[serde(with = "crate::duration")]
    pub period: Duration,
    /// Least time between two changes of a group when the second one grows it. Default 60 s.
    #[serde(with = "crate::duration")]
    pub up_cooldown: Duration,
    /// Least time between two changes of a group when the second one shrinks it. Default 5 min.
    #[serde(with = "crate::duration")]
    pub down_cooldown: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            period: Duration::from_secs(10),
            up_cooldown: Duration::from_secs(60),
            down_cooldown: Duration::from_secs(300),
        }
    }
}

/// The analytics loop: metric windows go to the `anomaly` policy every `period`; the host adds
/// its own threshold insights, recommendations and predictions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Run the analytics loop. Default true.
    pub enabled: bool,
    /// Time between analytics runs. Default 5 s.
    #[serde(with = "crate::duration")]
    pub period: Duration,
    /// Samples (one a second) per metric window given to the anomaly policy. Default 120.
    pub window_samples: usize,
    /// The same insight (kind, metric, severity) is not reported again within this time; it is
    /// counted on the existing one instead. Default 5 min.
    #[serde(with = "crate::duration")]
    pub repeat_after: Duration,
    /// Share of the global connection cap in use above which the pool counts as near
    /// exhaustion (critical). Default 0.9.
    pub exhaustion_ratio: f64,
    /// Share of upstream streams failing over the last period above which the error rate is
    /// critical. Default 0.05.
    pub critical_error_rate: f64,
    /// Upstream connections opened per minute above which the reconnect rate is critical.
    /// Default 30.
    pub critical_reconnects_per_minute: f64,
    /// Mean streams per connection below which multiplexing counts as low. Default 2.
    pub low_multiplexing: f64,
    /// Share of idle connections (no stream) above which a recommendation is made. Default 0.3.
    pub idle_ratio: f64,
    /// Share of all downstream streams one monitor may hold before it counts as
    /// disproportionate (with at least 3 monitors active). Default 0.5.
    pub monitor_share: f64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            period: Duration::from_secs(5),
            window_samples: 120,
            repeat_after: Duration::from_secs(300),
            exhaustion_ratio: 0.9,
            critical_error_rate: 0.05,
            critical_reconnects_per_minute: 30.0,
            low_multiplexing: 2.0,
            idle_ratio: 0.3,
            monitor_share: 0.5,
        }
    }
}

/// The embedded SQLite store of minute rollups, insights, scaling actions, decision samples and
/// reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The database file, created with its folder when missing. `:memory:` keeps history in
    /// memory only (lost on restart). Default `sluice-data/sluice.db`, relative to the working
    /// directory.
    pub path: PathBuf,
    /// How long rows are kept. Default 7 days.
    #[serde(with = "crate::duration")]
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("sluice-data/sluice.db"),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl StoreConfig {
    /// Whether the store lives in memory only.
    pub fn in_memory(&self) -> bool {
        self.path.as_os_str() == ":memory:"
    }
}

impl super::Config {
    pub(crate) fn validate_analytics(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let scaling = &self.scaling;
        if scaling.period < Duration::from_millis(10) {
            return Err(invalid("scaling.period", "must be at least 10ms"));
        }
        let analytics = &self.analytics;
        if analytics.period < Duration::from_millis(10) {
            return Err(invalid("analytics.period", "must be at least 10ms"));
        }
        if !(10..=600).contains(&analytics.window_samples) {
            return Err(invalid(
                "analytics.window_samples",
                "must be between 10 and 600 (the 1 s history holds 10 minutes)",
            ));
        }
        let ratios = [
            ("analytics.exhaustion_ratio", analytics.exhaustion_ratio),
            (
                "analytics.critical_error_rate",
                analytics.critical_error_rate,
            ),
            ("analytics.idle_ratio", analytics.idle_ratio),
            ("analytics.monitor_share", analytics.monitor_share),
        ];
        for (key, value) in ratios {
            if !(value > 0.0 && value <= 1.0) {
                return Err(invalid(key, "must be in (0, 1]"));
            }
        }
        let positive = [
            (
                "analytics.critical_reconnects_per_minute",
                analytics.critical_reconnects_per_minute,
            ),
            ("analytics.low_multiplexing", analytics.low_multiplexing),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(key, "must be a number greater than 0"));
            }
        }
        if self.store.retention < Duration::from_secs(3600) {
            return Err(invalid("store.retention", "must be at least 1h"));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        Ok(())
    }
}
