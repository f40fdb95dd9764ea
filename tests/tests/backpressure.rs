//! Backpressure: a slow monitor slows only its own stream (block), or is cut off as lagging
//! (disconnect); buffering per stream stays bounded either way.

use std::time::Duration;

use sluice_config::LagPolicy;
use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slow_monitor_does_not_slow_a_fast_one_on_the_same_connection() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.max_connections = Some(1);
    let proxy = sluice(config).await;

    // The slow monitor reads one event and then nothing.
    let mut slow_client = client(proxy.addr()).await;
    let mut slow = subscribe_on(&mut slow_client, subscribe("slow", 0.0, 1024, 0), "slow").await;
    slow.message().await.unwrap().unwrap();

    // The fast monitor, on another client connection but the same upstream connection, must
    // still get everything.
    let mut fast_client = client(proxy.addr()).await;
    const FAST_EVENTS: u64 = 20_000;
    let received = bounded(LIMIT, "fast monitor", async {
        let mut fast = subscribe_on(
            &mut fast_client,
            subscribe("fast", 0.0, 1024, FAST_EVENTS),
            "fast",
        )
        .await;
        let mut next = 0;
        while let Some(event) = fast.message().await.unwrap() {
            assert_eq!(event.seq, next);
            next += 1;
        }
        next
    })
    .await;
    assert_eq!(received, FAST_EVENTS);
    assert_eq!(
        proxy.snapshot().connections,
        1,
        "both streams shared one upstream connection"
    );

    // Flow control held the slow stream's upstream back: it produced only about the windows
    // and buffers along the path (a few MiB), not what the fast one got.
    let slow_sent = upstream.stats.snapshot().events_sent - FAST_EVENTS;
    assert!(
        slow_sent < 8_000,
        "slow stream was not held back: {slow_sent} events sent"
    );

    // Nothing was lost for the slow monitor either: it resumes reading where it stopped.
    for expected in 1..2_000 {
        let event = bounded(LIMIT, "slow monitor catching up", slow.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, expected);
    }
}

#[tokio::test]
async fn a_lagging_monitor_is_disconnected_with_resource_exhausted() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.lag_policy = LagPolicy::Disconnect;
    config.classes.event.lag_timeout = Duration::from_millis(300);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 0.0, 4096, 0), "laggard").await;
    stream.message().await.unwrap().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .snapshot()
            .stats
            .lagging_disconnects_total
            == 1)
        .await,
        "the lagging monitor was not cut off"
    );
    let status = bounded(LIMIT, "drain until the status", status_at_end(&mut stream)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("lagging"), "{status:?}");
    assert!(
        upstream_subscriptions_reach(&upstream, 0).await,
        "the upstream stream of a cut-off monitor was not cancelled"
    );
}
