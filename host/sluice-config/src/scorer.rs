//! `[scorer]`: the ONNX model behind the `scorer` import that router plugins call.

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
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// How often the model file is checked for changes. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            model: None,
            library: None,
            sessions: 2,
            deadline: Duration::from_millis(2),
            reload_interval: Duration::from_secs(1),
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
        Ok(())
    }
}
