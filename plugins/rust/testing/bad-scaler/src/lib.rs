//! Test plugin for the host's tests: a scaler that misbehaves as its `mode` config key says.
//!
//! - `invalid` (default): two actions for the same group, which the host refuses.
//! - `trap`: panics (a trap).
//! - `loop`: never returns (the host's deadline stops it).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;

// Links the allocator and panic handler.
use sluice_plugin as _;

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "scaler",
});

use sluice::policy::config;
use sluice::policy::types::ScaleAction;

struct BadScaler;

impl Guest for BadScaler {
    fn plan(groups: alloc::vec::Vec<GroupMetrics>) -> Result<ScalePlan, String> {
        match config::get("mode").as_deref() {
            Some("trap") => panic!("test-bad-scaler: trap"),
            Some("loop") => {
                let mut spins: u64 = 0;
                loop {
                    spins = core::hint::black_box(spins.wrapping_add(1));
                }
            }
            _ => {
                let class = groups
                    .first()
                    .map_or(sluice::policy::types::TrafficClass::Realtime, |g| g.class);
                let action = |delta| ScaleAction {
                    class,
                    delta,
                    reason: String::from("test-bad-scaler"),
                };
                Ok(ScalePlan {
                    actions: vec![action(1), action(-1)],
                    confidence: 1.0,
                    reasoning: String::from("test-bad-scaler: two actions for one group"),
                })
            }
        }
    }
}

export!(BadScaler);
