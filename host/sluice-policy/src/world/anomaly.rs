//! The `anomaly` world: `detect(list<metric-window>) -> result<list<insight>, string>`, asked
//! by the analytics loop with the latest metric windows. Its built-in stand-in is
//! [`crate::builtin::ZScore`].
//!
//! Holds the typed call into the export and the sample a detector must answer; turning
//! insights into alerts is the analytics loop's job.

use std::time::Duration;

use sluice_config::SlotKind;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::World;
use crate::bindings::anomaly::{Anomaly, AnomalyPre};
use crate::host::HostState;
use crate::plugin::{CallFailure, Plugin};
use crate::types::{Insight, MetricWindow, check_insights};

/// The `anomaly` world.
pub(crate) struct AnomalyWorld;

impl World for AnomalyWorld {
    const KIND: SlotKind = SlotKind::Anomaly;
    const EXPORT: &'static str = "detect";
    const SIGNATURE: &'static str =
        "detect: func(windows: list<metric-window>) -> result<list<insight>, string>";
    const EXTRA_IMPORTS: &'static [&'static str] = &[];
    const BUILTIN: &'static str = "z-score";

    type Pre = AnomalyPre<HostState>;
    type Instance = Anomaly;
    type Question = Vec<MetricWindow>;
    type Answer = Vec<Insight>;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        AnomalyPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Instance> {
        pre.instantiate(store)
    }

    fn call(
        plugin: &Plugin,
        windows: &Vec<MetricWindow>,
        deadline: Duration,
    ) -> Result<Vec<Insight>, CallFailure> {
        plugin.detect_within(windows, deadline)
    }

    fn check(insights: &Vec<Insight>, _windows: &Vec<MetricWindow>) -> Result<(), String> {
        check_insights(insights)
    }

    fn samples() -> Vec<Vec<MetricWindow>> {
        vec![sample_windows()]
    }
}

impl Plugin {
    /// Calls an anomaly detector's `detect`.
    pub fn detect(&self, windows: &[MetricWindow]) -> Result<Vec<Insight>, CallFailure> {
        self.detect_within(windows, self.limits().deadline)
    }

    pub(crate) fn detect_within(
        &self,
        windows: &[MetricWindow],
        deadline: Duration,
    ) -> Result<Vec<Insight>, CallFailure> {
        let answer = self.run(deadline, |store, exports| {
            AnomalyWorld::instance(exports)
                .ok_or_else(|| wasmtime::Error::msg("not an anomaly plugin"))?
                .call_detect(store, windows)
        })?;
        answer.map_err(CallFailure::from_plugin_error)
    }
}

/// Anomaly inputs used by the self-test: a steady metric, a spike, an empty window.
pub fn sample_windows() -> Vec<MetricWindow> {
    let steady: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 5)).collect();
    // A burst lasting two samples: critical (one sample alone would be a blip).
    let mut spike = steady.clone();
    spike.extend([900.0, 900.0]);
    vec![
        MetricWindow {
            name: "pool.streams".to_owned(),
            interval_ms: 1000,
            samples: steady,
        },
        MetricWindow {
            name: "upstream.errors_per_s".to_owned(),
            interval_ms: 1000,
            samples: spike,
        },
        MetricWindow {
            name: "pool.queue_depth".to_owned(),
            interval_ms: 1000,
            samples: Vec::new(),
        },
    ]
}
