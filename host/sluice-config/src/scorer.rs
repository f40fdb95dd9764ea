//! `[scorer]`: the ONNX model behind the `scorer` import that router plugins call, and
//! `[learning]`: recording decisions and outcomes to train it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The model router plugins score candidates with. Without `model`, the built-in neutral scorer
/// answers (every row 0.5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// The `.onnx` model: one float32 input `[rows, features]`, a float32 output `[rows, 1]` or
    /// `[rows]`. Reloaded when the file changes.
    pub model: Option<PathBuf>,
    /// The ONNX Runtime shared library (`libonnxruntime.so`, 1.31 or newer). Default: the
    /// `ORT_DYLIB_PATH` environment variable.
    pub library: Option<PathBuf>,
    /// Sessions kept per model, each with one intra-op thread: calls that find every session
    /// busy wait for one within the deadline. Default 2.
    pub sessions: usize,
    /// Longest a scoring call may take, waiting for a session included; a slower one is an
    /// error and the router decides without the model. Default 2 ms.
    #[serde(with = "crate::duration")]
    pub deadline: Duration,
    /// How often the model files are checked for changes. Default 1 s.
    #[serde(with = "crate::duration")]
    pub reload_interval: Duration,
    /// A candidate model run in shadow: it scores the recorded decisions beside the active
    /// model (agreement on the best row, and each model's error against the observed outcome)
    /// without affecting any decision, until an operator promotes it
    /// (`POST /api/v1/scorer/promote`). Needs `model`.
    pub shadow_model: Option<PathBuf>,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            model: None,
            library: None,
            sessions: 2,
            deadline: Duration::from_millis(2),
            reload_interval: Duration::from_secs(1),
            shadow_model: None,
        }
    }
}

/// Which routing decisions are recorded with their outcome (in the store's `route_outcomes`
/// table, read by `plugins/training/train_router.py`). Only decisions a router plugin made with
/// the scorer are recorded: their feature rows are what the model learns from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Record decisions at all. Default on.
    pub enabled: bool,
    /// At most this many decisions are recorded per second; the others are not observed, so
    /// that a flood of short calls costs nothing. Each record is about 250 bytes in the store:
    /// the default 1 keeps at most about 20 MB a day (the store's retention prunes them).
    pub max_records_per_second: u32,
    /// How long a stream's outcome is watched: its errors and throughput count until then (or
    /// until it ends, if sooner). Default 60 s.
    #[serde(with = "crate::duration")]
    pub observe_for: Duration,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_records_per_second: 1,
            observe_for: Duration::from_secs(60),
        }
    }
}

impl super::Config {
    pub(crate) fn validate_scorer(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let scorer = &self.scorer;
        if !(1..=16).contains(&scorer.sessions) {
            return Err(invalid("scorer.sessions", "must be between 1 and 16"));
        }
        if scorer.deadline.is_zero() {
            return Err(invalid("scorer.deadline", "must be greater than 0"));
        }
        if scorer.reload_interval < Duration::from_millis(10) {
            return Err(invalid("scorer.reload_interval", "must be at least 10ms"));
        }
        if scorer.shadow_model.is_some() && scorer.model.is_none() {
            return Err(invalid(
                "scorer.shadow_model",
                "needs scorer.model (a shadow is compared with the active model)",
            ));
        }
        Ok(())
    }

    pub(crate) fn validate_learning(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let learning = &self.learning;
        if learning.max_records_per_second > 10_000 {
            return Err(invalid(
                "learning.max_records_per_second",
                "must be at most 10000",
            ));
        }
        if learning.observe_for < Duration::from_secs(1)
            || learning.observe_for > Duration::from_secs(3600)
        {
            return Err(invalid("learning.observe_for", "must be between 1s and 1h"));
        }
        Ok(())
    }
}
