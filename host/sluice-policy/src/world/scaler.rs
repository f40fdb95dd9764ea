//! The `scaler` world: `plan(list<group-metrics>) -> result<scale-plan, string>`, asked by the
//! scaler loop for every class group at once. Its built-in stand-in is
//! [`crate::builtin::Thresholds`].
//!
//! Holds the typed call into the export and the sample a scaler must answer; acting on a plan
//! is the scaler loop's job.

use std::time::Duration;

use sluice_config::SlotKind;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::World;
use crate::bindings::scaler::{Scaler, ScalerPre};
use crate::host::HostState;
use crate::plugin::{CallFailure, Plugin};
use crate::types::{GroupMetrics, ScalePlan, TrafficClass, check_plan};

/// The `scaler` world.
pub(crate) struct ScalerWorld;

impl World for ScalerWorld {
    const KIND: SlotKind = SlotKind::Scaler;
    const EXPORT: &'static str = "plan";
    const SIGNATURE: &'static str =
        "plan: func(groups: list<group-metrics>) -> result<scale-plan, string>";
    const EXTRA_IMPORTS: &'static [&'static str] = &["history"];
    const BUILTIN: &'static str = "thresholds";

    type Pre = ScalerPre<HostState>;
    type Instance = Scaler;
    type Question = Vec<GroupMetrics>;
    type Answer = ScalePlan;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        ScalerPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Instance> {
        pre.instantiate(store)
    }

    fn call(
        plugin: &Plugin,
        groups: &Vec<GroupMetrics>,
        deadline: Duration,
    ) -> Result<ScalePlan, CallFailure> {
        plugin.plan_within(groups, deadline)
    }

    fn check(plan: &ScalePlan, _groups: &Vec<GroupMetrics>) -> Result<(), String> {
        check_plan(plan)
    }

    fn samples() -> Vec<Vec<GroupMetrics>> {
        vec![sample_groups()]
    }
}

impl Plugin {
    /// Calls a scaler's `plan`.
    pub fn plan(&self, groups: &[GroupMetrics]) -> Result<ScalePlan, CallFailure> {
        self.plan_within(groups, self.limits().deadline)
    }

    pub(crate) fn plan_within(
        &self,
        groups: &[GroupMetrics],
        deadline: Duration,
    ) -> Result<ScalePlan, CallFailure> {
        let answer = self.run(deadline, |store, exports| {
            ScalerWorld::instance(exports)
                .ok_or_else(|| wasmtime::Error::msg("not a scaler plugin"))?
                .call_plan(store, groups)
        })?;
        answer.map_err(CallFailure::from_plugin_error)
    }
}

/// Scaler inputs used by the self-test.
pub fn sample_groups() -> Vec<GroupMetrics> {
    let group = |class, connections, utilization, queue_depth| GroupMetrics {
        class,
        connections,
        min_connections: 1,
        max_connections: 18,
        active_streams: (utilization * f64::from(connections) * 100.0) as u32,
        stream_capacity: connections * 100,
        utilization,
        queue_depth,
        p99_latency_ms: 12.0,
        error_rate: 0.0,
        trend: 0.0,
        since_last_scale_ms: u64::MAX,
    };
    vec![
        group(TrafficClass::Realtime, 4, 0.92, 12),
        group(TrafficClass::Event, 3, 0.40, 0),
        group(TrafficClass::State, 2, 0.05, 0),
    ]
}
