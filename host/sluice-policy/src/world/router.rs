//! The `router` world: `route(route-request) -> result<decision, string>`, asked for every new
//! stream the data plane places. Its built-in stand-in is [`crate::builtin::PeakEwmaP2c`].
//!
//! Holds the typed call into the export and the samples a router must answer; it does not
//! convert the data plane's questions (that is [`crate::types`]) nor fall back (the slot does).

use std::time::Duration;

use sluice_config::SlotKind;
use sluice_contract::route::ScoredBatch;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{World, sample_traffic};
use crate::bindings::router::{Router, RouterPre};
use crate::host::HostState;
use crate::plugin::{CallFailure, Plugin};
use crate::types::{
    BreakerState, Candidate, Decision, Endpoint, EndpointHealth, MonitorProfile, RouteRequest,
    TrafficClass, check_decision,
};

/// The `router` world.
pub(crate) struct RouterWorld;

impl World for RouterWorld {
    const KIND: SlotKind = SlotKind::Router;
    const EXPORT: &'static str = "route";
    const SIGNATURE: &'static str =
        "route: func(request: route-request) -> result<decision, string>";
    const EXTRA_IMPORTS: &'static [&'static str] = &["scorer"];
    const BUILTIN: &'static str = "p2c-peak-ewma";

    type Pre = RouterPre<HostState>;
    type Instance = Router;
    type Question = RouteRequest;
    type Answer = Decision;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        RouterPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Instance> {
        pre.instantiate(store)
    }

    fn call(
        plugin: &Plugin,
        question: &RouteRequest,
        deadline: Duration,
    ) -> Result<Decision, CallFailure> {
        plugin
            .route_within(question, deadline)
            .map(|(decision, _)| decision)
    }

    fn check(decision: &Decision, question: &RouteRequest) -> Result<(), String> {
        check_decision(decision, question.candidates.len())
    }

    fn samples() -> Vec<RouteRequest> {
        sample_route_requests()
    }
}

impl Plugin {
    /// Calls a router's `route`. The caller validates the decision against the candidates.
    pub fn route(&self, request: &RouteRequest) -> Result<Decision, CallFailure> {
        self.route_within(request, self.limits().deadline)
            .map(|(decision, _)| decision)
    }

    /// Calls a router's `route`; also returns the last batch it had scored in this call.
    pub fn route_scored(
        &self,
        request: &RouteRequest,
    ) -> Result<(Decision, Option<ScoredBatch>), CallFailure> {
        self.route_within(request, self.limits().deadline)
    }

    pub(crate) fn route_within(
        &self,
        request: &RouteRequest,
        deadline: Duration,
    ) -> Result<(Decision, Option<ScoredBatch>), CallFailure> {
        let (answer, scored) = self.run(deadline, |store, exports| {
            let router = RouterWorld::instance(exports)
                .ok_or_else(|| wasmtime::Error::msg("not a router plugin"))?;
            let state = store.data_mut();
            state.scored = None;
            // The scorer import takes at most one row per candidate for this call.
            state.score_rows = Some(request.candidates.len());
            let answer = router.call_route(&mut *store, request);
            let state = store.data_mut();
            state.score_rows = None;
            Ok((answer?, state.scored.take()))
        })?;
        answer
            .map(|decision| (decision, scored))
            .map_err(CallFailure::from_plugin_error)
    }
}

/// Router questions used by the self-test and the `policy` benchmark.
pub fn sample_route_requests() -> Vec<RouteRequest> {
    let monitor = |id: &str, class, critical| MonitorProfile {
        id: id.to_owned(),
        class,
        critical,
        region: "local".to_owned(),
        traffic: sample_traffic(),
    };
    vec![
        RouteRequest {
            monitor: monitor("self-test", TrafficClass::Realtime, true),
            method: "/sluice.feed.v1.Feed/Subscribe".to_owned(),
            endpoints: endpoints(1),
            candidates: vec![candidate(1, 0, 0, 1.0)],
        },
        RouteRequest {
            monitor: monitor("self-test", TrafficClass::Event, false),
            method: "/sluice.feed.v1.Feed/Subscribe".to_owned(),
            endpoints: endpoints(2),
            candidates: (0..4)
                .map(|i| {
                    candidate(
                        10 + i,
                        (i % 2) as u32,
                        (i * 30) as u32,
                        1.0 + i as f64 * 7.5,
                    )
                })
                .collect(),
        },
        RouteRequest {
            monitor: monitor("anonymous", TrafficClass::State, false),
            method: "/pkg.Service/Method".to_owned(),
            endpoints: endpoints(3),
            candidates: (0..16)
                .map(|i| candidate(100 + i, (i % 3) as u32, (i * 5) as u32 % 97, 0.5 + i as f64))
                .collect(),
        },
    ]
}

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            id: format!("ep-{i}"),
            region: ["local", "us-east"][i % 2].to_owned(),
            priority: u32::from(i == 2),
            health: EndpointHealth::Healthy,
            breaker: BreakerState::Closed,
        })
        .collect()
}

fn candidate(id: u64, endpoint: u32, active: u32, latency_ms: f64) -> Candidate {
    Candidate {
        connection_id: id,
        endpoint,
        active_streams: active,
        max_streams: 100,
        latency_ms,
        error_rate: 0.0,
        age_ms: 60_000,
    }
}
