//! Subscription sharing: identical server-streaming requests ride one upstream stream.

use std::time::Duration;

use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

async fn shared_sluice(buffer: usize) -> (sluice_feed::FeedHandle, sluice_proxy::ProxyHandle) {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.methods.push(shared_subscribe(buffer));
    let proxy = sluice(config).await;
    (upstream, proxy)
}

#[tokio::test]
async fn identical_subscriptions_fan_out_from_one_upstream_stream() {
    let (upstream, proxy) = shared_sluice(1024).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let s = open_subscription(
            proxy.addr(),
            &format!("m{i}"),
            subscribe("accounts", 200.0, 64, 0),
        )
        .await;
        streams.push(s);
    }
    for s in &mut streams {
        bounded(LIMIT, "first event", s.message())
            .await
            .unwrap()
            .unwrap();
    }
    let snapshot = proxy.snapshot();
    assert_eq!(upstream.stats.snapshot().subscribe_started, 1);
    assert_eq!(snapshot.stats.upstream_streams_active, 1);
    assert_eq!(snapshot.stats.downstream_streams_active, 5);
    assert_eq!(snapshot.stats.shared_subscribers_active, 5);
    assert_eq!(snapshot.stats.shared_upstreams_active, 1);
    assert_eq!(snapshot.stats.shared_joins_total, 4);

    // A different request gets its own upstream stream.
    let mut c = client(proxy.addr()).await;
    let mut other = subscribe_on(&mut c, subscribe("other", 200.0, 64, 0), "m9").await;
    other.message().await.unwrap().unwrap();
    assert_eq!(upstream.stats.snapshot().subscribe_started, 2);

    // The upstream stream lives while anyone listens, and is cancelled when the last leaves.
    streams.truncate(1);
    bounded(LIMIT, "remaining subscriber", streams[0].message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upstream.stats.snapshot().subscribe_active, 2);
    drop(streams);
    assert!(
        upstream_subscriptions_reach(&upstream, 1).await,
        "{:?}",
        upstream.stats.snapshot()
    );
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .snapshot()
            .stats
            .shared_upstreams_active
            == 1)
        .await
    );
}

#[tokio::test]
async fn a_late_joiner_receives_from_the_point_it_joined() {
    let (upstream, proxy) = shared_sluice(1024).await;
    let mut first_client = client(proxy.addr()).await;
    let mut first = subscribe_on(&mut first_client, subscribe("feed", 500.0, 16, 0), "early").await;
    for expected in 0..50 {
        let event = bounded(LIMIT, "early events", first.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, expected);
    }
    let mut late_client = client(proxy.addr()).await;
    let mut late = subscribe_on(&mut late_client, subscribe("feed", 500.0, 16, 0), "late").await;
    let joined_at = bounded(LIMIT, "late event", late.message())
        .await
        .unwrap()
        .unwrap()
        .seq;
    assert!(joined_at >= 50, "late joiner got history: seq {joined_at}");
    // From there on both see the same contiguous sequence.
    for expected in joined_at + 1..joined_at + 100 {
        let event = bounded(LIMIT, "late events", late.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, expected);
    }
    let mut seen_by_first = 50;
    while seen_by_first < joined_at + 100 {
        let event = bounded(LIMIT, "early events", first.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, seen_by_first);
        seen_by_first += 1;
    }
    assert_eq!(upstream.stats.snapshot().subscribe_started, 1);
}

#[tokio::test]
async fn a_finished_shared_stream_ends_every_subscriber_with_its_status() {
    let (upstream, proxy) = shared_sluice(1024).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        // A slow rate lets all three join before the upstream finishes.
        let s = open_subscription(
            proxy.addr(),
            &format!("m{i}"),
            subscribe("short", 20.0, 8, 20),
        )
        .await;
        streams.push(s);
    }
    for s in &mut streams {
        let mut last = None;
        while let Some(event) = bounded(LIMIT, "events", s.message()).await.unwrap() {
            last = Some(event.seq);
        }
        assert_eq!(last, Some(19));
    }
    assert_eq!(upstream.stats.snapshot().subscribe_started, 1);
    assert!(
        eventually(Duration::from_secs(5), || proxy.snapshot().shared_streams
            == 0)
        .await
    );
}

#[tokio::test]
async fn a_failing_shared_upstream_gives_every_subscriber_the_status() {
    let (upstream, proxy) = shared_sluice(1024).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut c = client(proxy.addr()).await;
        let mut request = as_monitor(subscribe("doomed", 50.0, 8, 0), &format!("m{i}"));
        request.metadata_mut().insert(
            sluice_feed::headers::DISCONNECT_AFTER,
            "30".parse().unwrap(),
        );
        streams.push(c.subscribe(request).await.unwrap().into_inner());
    }
    for s in &mut streams {
        let status = bounded(LIMIT, "stream until failure", status_at_end(s)).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(upstream.stats.snapshot().subscribe_started, 1);
}

#[tokio::test]
async fn a_lagging_subscriber_is_cut_off_without_hurting_the_others() {
    let (upstream, proxy) = shared_sluice(16).await;
    let mut slow_client = client(proxy.addr()).await;
    let mut slow = subscribe_on(
        &mut slow_client,
        subscribe("firehose", 0.0, 2048, 0),
        "slow",
    )
    .await;
    slow.message().await.unwrap().unwrap();
    let mut fast_client = client(proxy.addr()).await;
    let mut fast = subscribe_on(
        &mut fast_client,
        subscribe("firehose", 0.0, 2048, 0),
        "fast",
    )
    .await;
    let mut previous = bounded(LIMIT, "fast first", fast.message())
        .await
        .unwrap()
        .unwrap()
        .seq;
    for _ in 0..5_000 {
        let event = bounded(LIMIT, "fast events", fast.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, previous + 1, "the fast subscriber lost messages");
        previous = event.seq;
    }
    // The stalled subscriber finds out it was left behind as soon as it reads again.
    let status = bounded(LIMIT, "slow drains to its status", status_at_end(&mut slow)).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("lagging"), "{status:?}");
    assert_eq!(proxy.snapshot().stats.lagging_disconnects_total, 1);
    assert_eq!(upstream.stats.snapshot().subscribe_started, 1);
    // The fast subscriber carries on.
    let event = bounded(LIMIT, "fast continues", fast.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.seq, previous + 1);
}

#[tokio::test]
async fn a_joiner_is_served_even_when_the_only_other_subscriber_has_stalled() {
    let (upstream, proxy) = shared_sluice(16).await;
    let mut stalled_client = client(proxy.addr()).await;
    let mut stalled = subscribe_on(
        &mut stalled_client,
        subscribe("feed", 0.0, 1024, 0),
        "stalled",
    )
    .await;
    stalled.message().await.unwrap().unwrap();
    // Let the stalled subscriber's windows fill, so the shared stream waits for it.
    let settled = eventually(Duration::from_secs(10), {
        let mut last = 0;
        let stats = std::sync::Arc::clone(&upstream.stats);
        move || {
            let sent = stats.snapshot().events_sent;
            let still = sent == last;
            last = sent;
            still && sent > 0
        }
    })
    .await;
    assert!(
        settled,
        "the shared stream never paused for the stalled subscriber"
    );
    let mut joiner_client = client(proxy.addr()).await;
    let mut joiner = subscribe_on(
        &mut joiner_client,
        subscribe("feed", 0.0, 1024, 0),
        "joiner",
    )
    .await;
    let mut previous = bounded(LIMIT, "joiner's first event", joiner.message())
        .await
        .unwrap()
        .unwrap()
        .seq;
    for _ in 0..500 {
        let event = bounded(LIMIT, "joiner events", joiner.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, previous + 1);
        previous = event.seq;
    }
    drop(stalled);
}
