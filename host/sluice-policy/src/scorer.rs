//! The `scorer` host import: batch inference that router plugins call.
//!
//! The host owns which model backs it; until a model is configured the [`NeutralScorer`] answers.
//! A scorer must be fast and must not block: it runs inside a router call, on the data path.
//! The import (in [`crate::host`]) bounds what reaches it: at most one row per candidate of the
//! route request being answered, and the time left in that call as its budget.

use std::time::Duration;

use sluice_contract::route::ScoredBatch;

/// Scores feature rows for router plugins.
pub trait Scorer: Send + Sync + 'static {
    /// One score per row of `values` (row-major, `columns` per row); higher is better. It must
    /// answer within `budget` (the time left in the plugin call that asks): a call that cannot
    /// start in time (every session busy, say) or would run past it is an error, never a wait
    /// beyond it.
    fn score_within(
        &self,
        columns: u32,
        values: &[f32],
        budget: Duration,
    ) -> Result<Vec<f32>, String>;

    /// [`Scorer::score_within`] bounded only by the scorer's own limits (benchmarks, tests and
    /// callers off the data path).
    fn score(&self, columns: u32, values: &[f32]) -> Result<Vec<f32>, String> {
        self.score_within(columns, values, Duration::MAX)
    }

    /// The model's name and version, for decision reasons and the admin API.
    fn model(&self) -> String;

    /// Why a configured model cannot answer now (`None` when it can, or when none is
    /// configured). While it says so, the router decides with its built-in policy.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// What the admin API shows of it.
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "model": self.model(), "unavailable": self.unavailable() })
    }

    /// Scores a recorded decision's batch with the shadow model, if one runs, and counts how
    /// it compares with the active model (`batch.scores`): the same best row or not, and both
    /// models' error for the `chosen` row against the `observed` outcome quality (0..=1).
    /// Called by the learning loop, off the data path. `None` without a shadow model.
    fn compare_shadow(
        &self,
        batch: &ScoredBatch,
        chosen: usize,
        observed: f64,
    ) -> Option<ShadowJudgement> {
        let _ = (batch, chosen, observed);
        None
    }

    /// Makes the shadow model the active one; what was promoted, for the admin API. An error
    /// says why not (no shadow model loaded, the file could not be replaced).
    fn promote_shadow(&self) -> Result<serde_json::Value, String> {
        Err("this scorer has no shadow model ([scorer] model and shadow_model)".to_owned())
    }
}

/// A shadow model's view of one recorded decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowJudgement {
    /// Its prediction for the chosen row.
    pub predicted: f32,
    /// Whether its best row is the active model's best row.
    pub agreed: bool,
}

/// The built-in scorer: every row gets the neutral score 0.5, so a router that blends the score
/// into its own heuristic keeps the heuristic's order. Malformed batches are still refused so
/// that plugin bugs show up before a real model is plugged in.
#[derive(Debug, Default, Clone, Copy)]
pub struct NeutralScorer;

impl Scorer for NeutralScorer {
    fn score_within(
        &self,
        columns: u32,
        values: &[f32],
        budget: Duration,
    ) -> Result<Vec<f32>, String> {
        if budget.is_zero() {
            return Err("no time left in the call to score".to_owned());
        }
        let columns = columns as usize;
        if columns == 0 || !values.len().is_multiple_of(columns) {
            return Err(format!(
                "malformed batch: {} values is not a multiple of {columns} columns",
                values.len()
            ));
        }
        Ok(vec![0.5; values.len() / columns])
    }

    fn model(&self) -> String {
        "builtin-neutral".to_owned()
    }
}
