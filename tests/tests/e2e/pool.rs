//! The pool: streams multiplexed over a bounded set of upstream connections, a bounded wait
//! queue, and clear statuses when no slot or endpoint is available.

use std::time::Duration;

use sluice_config::TrafficClass;
use sluice_tests::pb::EchoRequest;
use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn two_hundred_streams_share_at_most_four_upstream_connections() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.realtime.max_streams_per_connection = 50;
    config.monitors.push(monitor("rt", TrafficClass::Realtime));
    let proxy = sluice(config).await;

    // Monitors spread over 8 downstream connections, all opening streams at once.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client(proxy.addr()).await);
    }
    let mut tasks = Vec::new();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    for i in 0..200 {
        let mut c = clients[i % clients.len()].clone();
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = c
                .subscribe(as_monitor(subscribe(&format!("t{i}"), 5.0, 16, 0), "rt"))
                .await?
                .into_inner();
            let first = stream.message().await?.expect("first event");
            assert_eq!(first.seq, 0);
            let _ = release.wait_for(|r| *r).await;
            Ok::<_, tonic::Status>(())
        }));
    }
    let opened = bounded(LIMIT, "200 streams open", async {
        eventually(LIMIT, || {
            proxy.snapshot().stats.upstream_streams_active == 200
                && upstream.stats.snapshot().subscribe_active == 200
        })
        .await
    })
    .await;
    let snapshot = proxy.snapshot();
    assert!(
        opened,
        "only {} upstream streams opened",
        snapshot.stats.upstream_streams_active
    );
    let realtime = &snapshot.groups[TrafficClass::Realtime.index()];
    assert_eq!(realtime.streams, 200);
    assert!(realtime.connections <= 4, "{realtime:?}");
    assert_eq!(snapshot.connections, realtime.connections);
    assert!(
        upstream.stats.snapshot().connections_accepted <= 4,
        "{:?}",
        upstream.stats.snapshot()
    );
    assert_eq!(upstream.stats.snapshot().subscribe_active, 200);
    release_tx.send_replace(true);
    for task in tasks {
        bounded(LIMIT, "stream task", task).await.unwrap().unwrap();
    }
}

/// Starts an Echo call and waits until it sits in the proxy's wait queue.
async fn queue_an_echo(
    c: &sluice_tests::pb::feed_client::FeedClient<tonic::transport::Channel>,
    proxy: &sluice_proxy::ProxyHandle,
) -> tokio::task::JoinHandle<Result<tonic::Response<sluice_tests::pb::EchoReply>, tonic::Status>> {
    let mut c = c.clone();
    let waiting =
        tokio::spawn(async move { c.echo(as_monitor(EchoRequest::default(), "m")).await });
    let queued = eventually(Duration::from_secs(5), || {
        proxy.snapshot().stats.queue_waiting == 1
    })
    .await;
    assert!(queued, "the call did not queue");
    waiting
}

#[tokio::test]
async fn a_full_pool_queues_then_refuses_with_resource_exhausted() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.pool.max_connections = 1;
    config.pool.queue_capacity = 1;
    config.pool.queue_timeout = Duration::from_millis(500);
    config.classes.event.max_connections = Some(1);
    config.classes.realtime.max_connections = Some(1);
    config.classes.state.max_connections = Some(1);
    config.classes.event.max_streams_per_connection = 2;
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;

    // Two streams fill the only connection.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = subscribe_on(&mut c, subscribe(&format!("h{i}"), 10.0, 8, 0), "m").await;
        s.message().await.unwrap();
        held.push(s);
    }
    // A third waits in the queue...
    let waiting = queue_an_echo(&c, &proxy).await;
    // ...a fourth finds the queue full and is refused at once...
    let status = c
        .echo(as_monitor(EchoRequest::default(), "m"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("wait queue"), "{status:?}");
    // ...and the third gives up when no slot frees within the queue timeout.
    let status = bounded(LIMIT, "queued call", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("no stream slot freed"),
        "{status:?}"
    );
    let stats = proxy.snapshot().stats;
    assert_eq!(
        (stats.queue_rejected_total, stats.queue_timeouts_total),
        (1, 1)
    );

    // A queued stream gets the slot as soon as one frees.
    let waiting = queue_an_echo(&c, &proxy).await;
    drop(held.pop());
    bounded(LIMIT, "queued call after release", waiting)
        .await
        .unwrap()
        .expect("the queued call got the freed slot");
    assert_eq!(proxy.snapshot().connections, 1);
}

#[tokio::test]
async fn unknown_monitors_are_refused_when_configured() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.server.reject_unknown_monitors = true;
    config.monitors.push(monitor("known", TrafficClass::State));
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let status = c
        .echo(as_monitor(EchoRequest::default(), "stranger"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("stranger"), "{status:?}");
    let status = c
        .echo(tonic::Request::new(EchoRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    c.echo(as_monitor(EchoRequest::default(), "known"))
        .await
        .unwrap();
    assert_eq!(upstream.stats.snapshot().calls_total, 1);
    assert_eq!(
        proxy.snapshot().groups[TrafficClass::State.index()].connections,
        1
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_gives_unavailable_naming_it() {
    // Reserve a port, then free it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config_with_endpoint("gone", &format!("http://127.0.0.1:{port}"));
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let status = bounded(
        LIMIT,
        "call",
        c.echo(as_monitor(EchoRequest::default(), "m")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("gone"), "{status:?}");
    assert_eq!(proxy.snapshot().stats.connection_errors_total, 1);
}

#[tokio::test]
async fn connections_spread_over_endpoints_and_skip_a_dead_one() {
    let a = feed("a").await;
    let b = feed("b").await;
    let mut config = config_for(&[&a, &b]);
    config.classes.event.max_streams_per_connection = 1;
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let s = c
            .subscribe(as_monitor(subscribe(&format!("t{i}"), 5.0, 8, 0), "m"))
            .await
            .unwrap();
        held.push(s.into_inner());
    }
    assert_eq!(a.stats.snapshot().subscribe_active, 2);
    assert_eq!(b.stats.snapshot().subscribe_active, 2);
    drop(held);

    // With one endpoint dead, new connections go to the other.
    drop(b);
    let mut held = Vec::new();
    for i in 0..3 {
        let s = bounded(
            LIMIT,
            "subscribe",
            c.subscribe(as_monitor(subscribe(&format!("u{i}"), 5.0, 8, 0), "m")),
        )
        .await
        .unwrap();
        held.push(s.into_inner());
    }
    assert!(upstream_subscriptions_reach(&a, 3).await);
}

#[tokio::test]
async fn a_connection_never_carries_more_than_the_peer_allows() {
    let hole = BlackHole::start_with_stream_limit(3).await;
    let mut config = config_with_endpoint("strict", &format!("http://{}", hole.addr));
    config.classes.event.max_streams_per_connection = 100;
    let proxy = sluice(config).await;
    let c = client(proxy.addr()).await;
    let mut calls = Vec::new();
    for _ in 0..7 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            c.echo(as_monitor(EchoRequest::default(), "m")).await
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || hole.requests.lock().len() == 7).await,
        "only {} streams reached the upstream",
        hole.requests.lock().len()
    );
    let event = &proxy.snapshot().groups[TrafficClass::Event.index()];
    assert_eq!((event.connections, event.streams), (3, 7), "{event:?}");
    for call in calls {
        call.abort();
    }
}

#[tokio::test]
async fn a_call_cancelled_while_its_connection_opens_leaks_no_reservation() {
    // An upstream that accepts TCP and never speaks HTTP/2: opening a connection hangs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            sockets.push(tcp);
        }
    });
    let mut config = config_with_endpoint("silent", &format!("http://{addr}"));
    config.pool.connect_timeout = Duration::from_secs(30);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut request = as_monitor(EchoRequest::default(), "m");
    // The client gives up (and resets its stream) while Sluice is still connecting.
    request.set_timeout(Duration::from_millis(300));
    let status = bounded(LIMIT, "call", c.echo(request)).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let snapshot = proxy.snapshot();
            snapshot.stats.downstream_streams_active == 0 && snapshot.connections == 0
        })
        .await,
        "the abandoned connection attempt still holds a reservation: {:?}",
        proxy.snapshot()
    );
    held.abort();
}

#[tokio::test]
async fn min_connections_are_opened_at_start_and_reused() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.state.min_connections = 2;
    config.monitors.push(monitor("st", TrafficClass::State));
    let proxy = sluice(config).await;
    assert!(
        eventually(Duration::from_secs(5), || proxy.snapshot().groups
            [TrafficClass::State.index()]
        .connections
            == 2)
        .await,
        "{:?}",
        proxy.snapshot().groups
    );
    assert_eq!(upstream.stats.snapshot().connections_accepted, 2);
    let mut c = client(proxy.addr()).await;
    c.echo(as_monitor(EchoRequest::default(), "st"))
        .await
        .unwrap();
    assert_eq!(
        proxy.snapshot().stats.connections_opened_total,
        2,
        "the call used a warm connection"
    );
}
