//! Sample inputs a plugin must answer correctly before it is activated.
//!
//! The samples cover the shapes a plugin meets in production (one candidate, several, busy and
//! idle connections, an empty window, a spike, a stream broken before and after its first
//! response), so a plugin that traps, loops, or answers out of range on ordinary input is
//! refused instead of being swapped in.

use std::time::Duration;

use crate::plugin::{CallFailure, Plugin};
use crate::types::{
    BreakerState, Candidate, Endpoint, EndpointHealth, GroupMetrics, MetricWindow, MonitorProfile,
    ResumeRequest, RouteRequest, TrafficClass, TrafficProfile, check_decision, check_insights,
    check_plan, check_resume,
};
use sluice_config::SlotKind;

/// The self-test's deadline: the slot's deadline with headroom for a cold first call, since the
/// first calls fault in code and memory.
pub fn deadline(slot_deadline: Duration) -> Duration {
    (slot_deadline * 10).max(Duration::from_millis(20))
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

/// A busy, steady feed of small messages.
fn sample_traffic() -> TrafficProfile {
    TrafficProfile {
        message_rate: 200.0,
        burstiness: 0.3,
        latency_sensitivity: 0.85,
        mean_message_bytes: 128.0,
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

/// Anomaly inputs used by the self-test: a steady metric, a spike, an empty window.
pub fn sample_windows() -> Vec<MetricWindow> {
    let steady: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 5)).collect();
    let mut spike = steady.clone();
    spike.push(900.0);
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

/// The feed's `Subscribe` method, the protocol of the resume samples.
const FEED_SUBSCRIBE: &str = "/sluice.feed.v1.Feed/Subscribe";

/// A 16-byte `sluice.feed.v1.SubscribeRequest`: `from_seq` 7, `rate` 100.0, `payload_bytes` 16,
/// `topic` "t".
const SAMPLE_SUBSCRIBE: [u8; 16] = [
    0x08, 7, // from_seq = 7
    0x11, 0, 0, 0, 0, 0, 0, 0x59, 0x40, // rate = 100.0 (fixed64)
    0x18, 16, // payload_bytes = 16
    0x2a, 1, b't', // topic = "t"
];

/// A `sluice.feed.v1.Event`: `seq` 41, `sent_at_ns` 1, `payload` 4 bytes, `topic` "t".
const SAMPLE_EVENT: [u8; 13] = [
    0x08, 41, // seq = 41
    0x10, 1, // sent_at_ns = 1
    0x1a, 4, 0xde, 0xad, 0xbe, 0xef, // payload
    0x22, 1, b't', // topic = "t"
];

/// Resumer questions used by the self-test: a feed subscription broken after 35 events, the
/// same one broken before its first event, and two messages of a method a feed resumer does
/// not know (which it must hand back unchanged). The payloads are real protobuf messages, so
/// a protocol-specific resumer can parse them.
pub fn sample_resume_requests() -> Vec<ResumeRequest> {
    let monitor = MonitorProfile {
        id: "self-test".to_owned(),
        class: TrafficClass::Realtime,
        critical: false,
        region: String::new(),
        traffic: sample_traffic(),
    };
    vec![
        ResumeRequest {
            monitor: monitor.clone(),
            method: FEED_SUBSCRIBE.to_owned(),
            requests: vec![SAMPLE_SUBSCRIBE.to_vec()],
            last_response: Some(SAMPLE_EVENT.to_vec()),
            responses_delivered: 35,
            attempt: 1,
        },
        ResumeRequest {
            monitor: monitor.clone(),
            method: FEED_SUBSCRIBE.to_owned(),
            requests: vec![SAMPLE_SUBSCRIBE.to_vec()],
            last_response: None,
            responses_delivered: 0,
            attempt: 2,
        },
        ResumeRequest {
            monitor,
            method: "/pkg.Service/Method".to_owned(),
            requests: vec![vec![0x0a, 2, b'h', b'i'], vec![0x10, 1]],
            last_response: Some(vec![0x08, 1]),
            responses_delivered: 1,
            attempt: 1,
        },
    ]
}

/// Runs the samples for the plugin's world; the first failure, with which sample caused it.
pub fn run(plugin: &Plugin) -> Result<usize, String> {
    let deadline = deadline(plugin.limits().deadline);
    let describe = |what: &str, i: usize, failure: CallFailure| format!("{what} #{i}: {failure}");
    match plugin.info().world {
        SlotKind::Router => {
            let samples = sample_route_requests();
            for (i, request) in samples.iter().enumerate() {
                let decision = plugin
                    .route_within(request, deadline)
                    .map(|(decision, _)| decision)
                    .map_err(|f| describe("route sample", i, f))?;
                check_decision(&decision, request.candidates.len()).map_err(|problem| {
                    describe("route sample", i, CallFailure::Invalid(problem))
                })?;
            }
            Ok(samples.len())
        }
        SlotKind::Scaler => {
            let plan = plugin
                .plan_within(&sample_groups(), deadline)
                .map_err(|f| describe("plan sample", 0, f))?;
            check_plan(&plan).map_err(|p| describe("plan sample", 0, CallFailure::Invalid(p)))?;
            Ok(1)
        }
        SlotKind::Anomaly => {
            let insights = plugin
                .detect_within(&sample_windows(), deadline)
                .map_err(|f| describe("detect sample", 0, f))?;
            check_insights(&insights)
                .map_err(|p| describe("detect sample", 0, CallFailure::Invalid(p)))?;
            Ok(1)
        }
        SlotKind::Resumer => {
            let samples = sample_resume_requests();
            for (i, request) in samples.iter().enumerate() {
                let messages = plugin
                    .resume_within(request, deadline)
                    .map_err(|f| describe("resume sample", i, f))?;
                check_resume(&messages, request).map_err(|problem| {
                    describe("resume sample", i, CallFailure::Invalid(problem))
                })?;
            }
            Ok(samples.len())
        }
    }
}
