//! Silence probes: a connection that falls silent is asked with a PING whether its peer is
//! still there. A black-holed one moves its resumable streams to another endpoint long before
//! keepalive would notice; a quiet one answers, and nothing moves.

use std::time::{Duration, Instant};

use sluice_feed::FeedHandle;
use sluice_proxy::ProxyHandle;
use sluice_tests::fault::{Fault, FaultProxy};
use sluice_tests::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A primary behind a fault proxy and a secondary, with the default keepalive (10 s, 5 s) and
/// silence probes, and a resumable Subscribe.
async fn primary_behind_a_fault_proxy() -> (FeedHandle, FeedHandle, FaultProxy, ProxyHandle) {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let proxy = FaultProxy::start(primary.addr).await.unwrap();
    let mut config = config_with_endpoint("primary", &proxy.url());
    config.endpoints.push(sluice_config::EndpointConfig {
        priority: 1,
        ..endpoint("secondary", &format!("http://{}", secondary.addr))
    });
    config.methods = vec![sluice_config::MethodConfig {
        resume: sluice_config::ResumeMode::ReplayLast,
        ..sluice_config::MethodConfig::new(SUBSCRIBE)
    }];
    assert_eq!(config.pool.keepalive_interval, Duration::from_secs(10));
    let sluice = sluice(config).await;
    (primary, secondary, proxy, sluice)
}

#[tokio::test]
async fn a_black_holed_connection_moves_its_resumable_streams_before_keepalive_notices() {
    let (_primary, secondary, hole, proxy) = primary_behind_a_fault_proxy().await;
    let mut stream = open_subscription(proxy.addr(), "m", subscribe("t", 100.0, 8, 0)).await;
    // A second of steady traffic: the connection's usual pauses are known.
    for _ in 0..100 {
        stream.message().await.unwrap().unwrap();
    }

    hole.set(Fault::BlackHole);
    let started = Instant::now();
    bounded(LIMIT, "messages from the secondary", async {
        // Messages already in flight may still arrive; then the secondary's, on the same
        // stream (the replayed request starts the secondary's sequence anew).
        while secondary.stats.snapshot().subscribe_active == 0 {
            stream.message().await.unwrap().unwrap();
        }
        for _ in 0..10 {
            stream.message().await.unwrap().unwrap();
        }
    })
    .await;
    let moved_in = started.elapsed();
    // Keepalive alone takes 10 s to send its next PING and 5 s more to give up.
    assert!(
        moved_in < Duration::from_secs(5),
        "the stream moved only after {moved_in:?}"
    );
    let stats = proxy.snapshot().stats;
    assert!(stats.migrations_total >= 1, "{stats:?}");
    // Moving off a silent connection blames no one: the endpoint did not fail a stream.
    assert_eq!(stats.upstream_failures_total, 0, "{stats:?}");
}

#[tokio::test]
async fn a_quiet_connection_answers_its_probe_and_nothing_moves() {
    let (primary, secondary, _hole, proxy) = primary_behind_a_fault_proxy().await;
    // A busy stream teaches the connection short pauses, then ends; a quiet one stays.
    let mut busy = open_subscription(proxy.addr(), "m", subscribe("busy", 100.0, 8, 150)).await;
    let quiet = open_subscription(proxy.addr(), "m", subscribe("quiet", 0.01, 8, 0)).await;
    bounded(LIMIT, "the busy stream", async {
        while busy.message().await.unwrap().is_some() {}
    })
    .await;
    assert!(upstream_subscriptions_reach(&primary, 1).await);
    // Far past the probe's 250 ms, and past its answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = proxy.snapshot().stats;
    assert_eq!(stats.migrations_total, 0, "{stats:?}");
    assert_eq!(stats.resumes_total, 0, "{stats:?}");
    assert_eq!(primary.stats.snapshot().subscribe_active, 1);
    assert_eq!(secondary.stats.snapshot().subscribe_active, 0);
    drop(quiet);
}
