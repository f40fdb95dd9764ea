//! Test plugin for the host's tests: asks the `scorer` import to score a batch of 100,000 rows
//! of 4 features (far more than the route request has candidates), which the host must refuse
//! without running the model. On the error it falls back to the first candidate and says why
//! (`scorer-flood: fallback: <error>`); if the batch were scored, it would pick the best of the
//! first rows (`scorer-flood: scored <n> rows`).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Rows asked for, whatever the number of candidates.
const ROWS: usize = 100_000;
/// Features per row.
const COLUMNS: u32 = 4;

sluice_plugin::test_router!(|request| {
    let batch = sluice::policy::scorer::FeatureBatch {
        columns: COLUMNS,
        values: vec![0.25; ROWS * COLUMNS as usize],
    };
    let mut reasoning = String::from("scorer-flood: ");
    let choice = match sluice::policy::scorer::score(&batch) {
        Ok(scores) => {
            reasoning.push_str("scored ");
            sluice_plugin::text::push_u64(&mut reasoning, scores.len() as u64);
            reasoning.push_str(" rows");
            let candidates = request.candidates.len().min(scores.len());
            (0..candidates).fold(0, |best, i| if scores[i] > scores[best] { i } else { best })
        }
        Err(error) => {
            reasoning.push_str("fallback: ");
            reasoning.push_str(&error);
            0
        }
    };
    Ok(Decision {
        choice: choice as u32,
        confidence: 0.5,
        reasoning,
        alternatives: Vec::new(),
    })
});
