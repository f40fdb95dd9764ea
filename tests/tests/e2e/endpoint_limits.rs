//! Per-endpoint caps (`[endpoints.limits]`) against real feed servers that enforce the same
//! caps as a provider account would and count every violation: a burst of 500 new streams
//! stays within every endpoint's connections (the health check's included), open streams and
//! stream-creation rate; streams go to another endpoint of the same priority first, then to the
//! next priority, and past every endpoint's caps they queue and get `RESOURCE_EXHAUSTED` naming
//! the cap. The admin API and `/metrics` show the use against each cap.

use std::time::Duration;

use futures_util::future::join_all;
use sluice_config::{Config, EndpointLimits, RateLimitConfig};
use sluice_feed::{FeedConfig, FeedHandle, ProviderLimits};
use sluice_tests::admin::{Observed, observed, request};
use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

/// Connections each provider account allows, Sluice's health check included: the pool may
/// hold 2.
const MAX_CONNECTIONS: u32 = 3;
/// Streams per connection: with 2 pool connections, `a` and `b` carry at most 8 streams,
/// fewer than their `max_streams` of 10 (the connection cap binds, the health check's
/// connection counted).
const PER_CONNECTION: u32 = 4;
/// What `a` and `b` carry at most.
const ON_A_OR_B: u64 = 8;
/// `c`'s `max_streams`, which binds before its connections do.
const ON_C: u32 = 5;

/// A feed that enforces a provider's caps: `MAX_CONNECTIONS` connections, and 300 new streams
/// a second with a burst of 64 (Sluice is told 250 with a burst of 48: the margin is delivery
/// jitter on a loaded machine, not a looser limit).
async fn provider(name: &str) -> FeedHandle {
    feed_with(FeedConfig {
        name: name.to_owned(),
        limits: ProviderLimits {
            max_connections: Some(u64::from(MAX_CONNECTIONS)),
            streams_per_second: Some(300.0),
            stream_burst: Some(64),
        },
        ..FeedConfig::default()
    })
    .await
}

/// `a` and `b` at priority 0, `c` at priority 1, each with the provider's caps (and `c` with
/// a lower `max_streams`), active health checks on, and a wait queue of 100 streams for at
/// most 2 s.
fn limited(a: &FeedHandle, b: &FeedHandle, c: &FeedHandle) -> Config {
    let mut config = config_for(&[a, b, c]);
    for (endpoint, (id, priority)) in
        config
            .endpoints
            .iter_mut()
            .zip([("a", 0), ("b", 0), ("c", 1)])
    {
        endpoint.id = id.to_owned();
        endpoint.priority = priority;
        endpoint.limits = EndpointLimits {
            max_connections: Some(MAX_CONNECTIONS),
            max_streams: Some(if id == "c" { ON_C } else { 10 }),
            max_streams_per_connection: Some(PER_CONNECTION),
            connections_per_second: Some(20.0),
            max_filters_per_subscription: None,
        };
        endpoint.rate_limit = Some(RateLimitConfig {
            streams_per_second: 250.0,
            burst: Some(48),
            queue: 1024,
        });
    }
    config.health.active = true;
    config.health.interval = Duration::from_millis(200);
    config.pool.queue_capacity = 100;
    config.pool.queue_timeout = Duration::from_secs(2);
    config.server.max_streams_per_monitor = 1024;
    config
}

/// Opens `n` long Subscribe streams at once over 5 client connections: the open streams (kept
/// open by the caller) and the statuses of those refused.
async fn burst(
    proxy: std::net::SocketAddr,
    n: usize,
    tag: &str,
) -> (Vec<tonic::Streaming<pb::Event>>, Vec<tonic::Status>) {
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(client(proxy).await);
    }
    let calls = (0..n).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = subscribe(&format!("{tag}{i}"), 1.0, 8, 1_000_000);
        async move { client.subscribe(as_monitor(request, "burst")).await }
    });
    let results = bounded(LIMIT, "the burst's answers", join_all(calls)).await;
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(response) => open.push(response.into_inner()),
            Err(status) => refused.push(status),
        }
    }
    (open, refused)
}

/// Asserts that no feed saw a violation of its caps, and that no endpoint ever carried more
/// streams than its caps allow.
fn assert_within_caps(a: &FeedHandle, b: &FeedHandle, c: &FeedHandle) {
    for (feed, streams) in [(a, ON_A_OR_B), (b, ON_A_OR_B), (c, u64::from(ON_C))] {
        let s = feed.stats.snapshot();
        assert_eq!(s.connection_violations, 0, "{s:?}");
        assert_eq!(s.rate_violations, 0, "{s:?}");
        assert!(s.connections_peak <= u64::from(MAX_CONNECTIONS), "{s:?}");
        assert!(s.subscribe_peak <= streams, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_streams_stays_within_every_endpoints_caps_spilling_to_the_same_priority_first()
 {
    let (a, b, c) = (
        provider("a").await,
        provider("b").await,
        provider("c").await,
    );
    let Observed { admin, proxy, .. } = observed(limited(&a, &b, &c), "t").await;

    // 12 streams fit on the two priority-0 endpoints (8 each): the next priority gets none.
    let (mut kept, refused) = burst(proxy.addr(), 12, "first").await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(kept.len(), 12);
    let on = |feed: &FeedHandle| feed.stats.snapshot().subscribe_active;
    assert_eq!(on(&a) + on(&b), 12);
    assert_eq!(
        c.stats.snapshot().subscribe_started,
        0,
        "spilled past priority 0"
    );

    // 500 more at once: 4 fit on priority 0, 5 on priority 1, and every other one is refused
    // with the caps named, at once when the queue of 100 is full, after 2 s in it otherwise.
    let (open, refused) = burst(proxy.addr(), 500, "burst").await;
    assert_eq!(open.len(), 9, "{:?}", refused.first());
    assert_eq!(refused.len(), 491);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let message = status.message();
        assert!(message.contains("endpoint limits reached"), "{status:?}");
        assert!(
            message.contains("endpoint a: max_connections 3 reached"),
            "{status:?}"
        );
    }
    kept.extend(open);
    for (feed, streams) in [(&a, ON_A_OR_B), (&b, ON_A_OR_B), (&c, u64::from(ON_C))] {
        assert!(
            eventually(LIMIT, || on(feed) == streams).await,
            "{:?}",
            feed.stats.snapshot()
        );
    }
    assert_within_caps(&a, &b, &c);

    // The admin API and /metrics show the use against each cap: a and b at their connections
    // (the health check's included), c at its streams.
    for endpoint in proxy.view().endpoints() {
        let limits = &endpoint.limits;
        assert_eq!(limits.connections, MAX_CONNECTIONS as usize, "{endpoint:?}");
        if &*endpoint.id == "c" {
            assert_eq!(limits.streams, ON_C as usize, "{endpoint:?}");
            assert!(limits.reached.contains(&"max_streams"), "{endpoint:?}");
        } else {
            assert_eq!(limits.streams, ON_A_OR_B as usize, "{endpoint:?}");
            assert!(limits.reached.contains(&"max_connections"), "{endpoint:?}");
        }
    }
    let metrics = request(admin.addr(), "GET", "/metrics", Some("t"), Vec::new()).await;
    for line in [
        "sluice_endpoint_limit{endpoint=\"a\",limit=\"max_connections\"} 3",
        "sluice_endpoint_limit{endpoint=\"c\",limit=\"max_streams\"} 5",
        "sluice_endpoint_limit{endpoint=\"b\",limit=\"max_streams_per_connection\"} 4",
        "sluice_endpoint_limit_used{endpoint=\"a\",limit=\"max_connections\"} 3",
        "sluice_endpoint_limit_used{endpoint=\"b\",limit=\"max_streams\"} 8",
        "sluice_endpoint_limit_used{endpoint=\"c\",limit=\"max_streams\"} 5",
    ] {
        assert!(
            metrics.text.contains(line),
            "{line} missing:\n{}",
            metrics.text
        );
    }
    let api = request(
        admin.addr(),
        "GET",
        "/api/v1/endpoints",
        Some("t"),
        Vec::new(),
    )
    .await;
    assert_eq!(
        api.json["endpoints"][2]["limits"]["streams"], ON_C,
        "{}",
        api.text
    );
    let reached = &api.json["endpoints"][2]["limits"]["reached"];
    assert!(
        reached
            .as_array()
            .is_some_and(|r| r.iter().any(|v| v == "max_streams")),
        "{}",
        api.text
    );

    // Streams closed, priority 0 takes new streams again: priority 1 was only the overflow.
    drop(kept);
    for feed in [&a, &b, &c] {
        assert!(
            eventually(LIMIT, || on(feed) == 0).await,
            "{:?}",
            feed.stats.snapshot()
        );
    }
    let started_on_c = c.stats.snapshot().subscribe_started;
    let (again, refused) = burst(proxy.addr(), 8, "again").await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(again.len(), 8);
    assert_eq!(c.stats.snapshot().subscribe_started, started_on_c);
    assert_within_caps(&a, &b, &c);
}
