//! Placement's pure helpers on real endpoints and connections: which connections may take a
//! stream, and what the router is told about them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

use sluice_config::{BreakerScope, Config, TrafficClass};
use tokio::sync::watch;

use super::*;
use crate::breaker::{Breaker, BreakerEvents, BreakerState};
use crate::health::Health;
use crate::pool::endpoint::test_endpoints;
use crate::pool::load::ConnectionLoad;
use crate::pool::window::{StreamCount, StreamWindowSizing};

/// A connection to `endpoint` carrying `active` of its `max` streams, over an in-memory
/// HTTP/2 handshake nobody answers (placement never sends on it).
async fn connection(
    id: u64,
    endpoint: &Arc<Endpoint>,
    max: u32,
    active: u32,
    latency: Duration,
) -> Arc<UpstreamConnection> {
    let (io, _peer) = tokio::io::duplex(1 << 16);
    let (send_request, _driver) = h2::client::handshake(io)
        .await
        .unwrap_or_else(|e| panic!("in-memory handshake: {e}"));
    let sizing = StreamWindowSizing {
        floor: 65_535,
        budget: 65_535,
    };
    let active_streams = Arc::new(StreamCount::new(sizing));
    for _ in 0..active {
        active_streams.add();
    }
    Arc::new(UpstreamConnection {
        id,
        endpoint: Arc::clone(endpoint),
        class: TrafficClass::Realtime,
        breaker: Breaker::new(
            BreakerScope::Connection,
            Arc::from(format!("{}#{id}", endpoint.id)),
            Config::default()
                .breakers
                .settings(BreakerScope::Connection),
            Arc::new(BreakerEvents::default()),
        ),
        send_request,
        active_streams,
        streams_total: AtomicU64::new(0),
        configured_max: max,
        peer_max: Arc::new(AtomicU32::new(max)),
        closed: AtomicBool::new(false),
        draining: watch::Sender::new(false),
        retired: AtomicBool::new(false),
        unresponsive: AtomicBool::new(false),
        opened_at: Instant::now(),
        load: ConnectionLoad::new(latency),
    })
}

fn view(selected: bool, degraded: bool) -> EndpointView {
    EndpointView {
        selected,
        degraded,
        health: if degraded {
            Health::Degraded
        } else {
            Health::Healthy
        },
        breaker: if degraded {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        },
    }
}

fn ids_and_capacities(open: &[(&Arc<UpstreamConnection>, u32)]) -> Vec<(u64, u32)> {
    open.iter().map(|(c, cap)| (c.id, *cap)).collect()
}

#[tokio::test]
async fn placeable_keeps_open_connections_with_room_on_selected_endpoints() {
    let endpoints = test_endpoints(&[(0, "a"), (0, "a"), (1, "a")]);
    let ms = Duration::from_millis(1);
    let connections = vec![
        connection(1, &endpoints[0], 4, 1, ms).await,
        // Full.
        connection(2, &endpoints[0], 4, 4, ms).await,
        // Closed.
        connection(3, &endpoints[0], 4, 0, ms).await,
        // The broken stream's connection.
        connection(4, &endpoints[0], 4, 0, ms).await,
        // Degraded endpoint: half its streams, so 2 of 4 is full.
        connection(5, &endpoints[1], 4, 2, ms).await,
        connection(6, &endpoints[1], 4, 1, ms).await,
        // Endpoint not selected.
        connection(7, &endpoints[2], 4, 0, ms).await,
    ];
    connections[2].mark_closed();
    let views = [view(true, false), view(true, true), view(false, false)];
    let open = placeable(&connections, &views, None, Some(4));
    assert_eq!(ids_and_capacities(&open), [(1, 4), (6, 2)]);

    // A breaker that refuses streams takes its connection out too.
    connections[0].breaker.trip_now("test");
    let open = placeable(&connections, &views, None, Some(4));
    assert_eq!(ids_and_capacities(&open), [(6, 2)]);
}

#[tokio::test]
async fn preferences_narrow_placement_only_when_a_connection_meets_them() {
    let endpoints = test_endpoints(&[(0, "eu"), (0, "us")]);
    let connections = vec![
        connection(1, &endpoints[0], 4, 0, Duration::from_millis(50)).await,
        connection(2, &endpoints[1], 4, 0, Duration::from_millis(5)).await,
        connection(3, &endpoints[1], 4, 0, Duration::from_millis(80)).await,
    ];
    let views = [view(true, false), view(true, false)];
    let ids = |preferences: &MonitorPreferences| -> Vec<u64> {
        placeable(&connections, &views, Some(preferences), None)
            .iter()
            .map(|(c, _)| c.id)
            .collect()
    };
    let region = |r: &str| Some(Arc::from(r));
    let prefer = |region: Option<Arc<str>>, ms: Option<u64>| MonitorPreferences {
        region,
        max_latency: ms.map(Duration::from_millis),
    };
    assert_eq!(ids(&prefer(region("us"), None)), [2, 3]);
    assert_eq!(
        ids(&prefer(region("ap"), None)),
        [1, 2, 3],
        "no connection there"
    );
    assert_eq!(ids(&prefer(None, Some(60))), [1, 2]);
    assert_eq!(ids(&prefer(None, Some(1))), [1, 2, 3], "none is that fast");
    assert_eq!(ids(&prefer(region("us"), Some(60))), [2]);
}

#[tokio::test]
async fn candidates_carry_their_endpoints_view_and_the_capacity_placement_gave() {
    let endpoints = test_endpoints(&[(0, "eu"), (1, "us")]);
    let ms = Duration::from_millis(1);
    let open = vec![
        (connection(1, &endpoints[0], 8, 3, ms).await, 8),
        (connection(2, &endpoints[1], 8, 1, ms).await, 4),
    ];
    let views = [view(true, false), view(true, true)];
    let candidates = candidates_of(&open, &views, Instant::now());
    let seen: Vec<_> = candidates
        .iter()
        .map(|c| {
            let endpoint = (&*c.endpoint_id, &*c.region, c.priority);
            let load = (c.active_streams, c.max_streams);
            (
                c.connection_id,
                endpoint,
                load,
                c.endpoint_health,
                c.endpoint_breaker,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                1,
                ("e0", "eu", 0),
                (3, 8),
                Health::Healthy,
                BreakerState::Closed
            ),
            (
                2,
                ("e1", "us", 1),
                (1, 4),
                Health::Degraded,
                BreakerState::HalfOpen
            ),
        ]
    );
}
