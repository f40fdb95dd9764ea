//! Resilience with real faults: killed processes, GOAWAY, black holes, latency and resets from
//! a TCP fault proxy, failing calls, health checks, and a resume storm against a rate limit.
//! Monitors must not notice what can be resumed, and get a clear status for what cannot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::BreakerScope;
use sluice_config::{Config, MethodConfig, RateLimitConfig, ResumeMode, TrafficClass};
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_proxy::ProxyHandle;
use sluice_tests::fault::{Fault, FaultProxy};
use sluice_tests::pb::EchoRequest;
use sluice_tests::plugins::{built_plugins, plugins_config, sluice_with_policies};
use sluice_tests::process::FeedProcess;
use sluice_tests::starts::{rate_violations, sample_starts};
use sluice_tests::*;
use tokio::task::JoinHandle;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

/// Subscribe resumed by replaying its request.
fn resumable_subscribe() -> MethodConfig {
    MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }
}

/// A primary (priority 0) and a secondary (priority 1) endpoint.
fn primary_and_secondary(primary: &str, secondary: &str) -> Config {
    let mut config = config_with_endpoint("primary", primary);
    config.endpoints.push(sluice_config::EndpointConfig {
        priority: 1,
        ..endpoint("secondary", secondary)
    });
    config.methods = vec![resumable_subscribe()];
    config
}

/// Reads `stream` until it delivered sequence number `last`, checking that every number from
/// `first` arrives exactly once and in order. Returns the number of messages read.
fn follow(
    mut stream: tonic::Streaming<pb::Event>,
    first: u64,
    last: u64,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let mut expected = first;
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if event.seq != expected {
                        return Err(format!("expected seq {expected}, got {}", event.seq));
                    }
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if event.seq == last {
                        return Ok(last - first + 1);
                    }
                    expected += 1;
                }
                Ok(None) => return Err(format!("stream ended at seq {expected}")),
                Err(status) => return Err(format!("stream failed at seq {expected}: {status}")),
            }
        }
    })
}

fn endpoint_health(proxy: &ProxyHandle, id: &str) -> (Health, BreakerState) {
    let endpoint = proxy
        .endpoints()
        .into_iter()
        .find(|e| &*e.id == id)
        .expect("endpoint exists");
    (endpoint.health.health, endpoint.breaker.state)
}

/// Runs Sluice with `config`, opens a Subscribe stream, stops `primary` abruptly and returns the
/// status the stream ended with.
async fn status_after_the_primary_dies(
    config: Config,
    primary: sluice_feed::FeedHandle,
) -> (ProxyHandle, tonic::Status) {
    let proxy = sluice(config).await;
    let mut stream = open_subscription(proxy.addr(), "m", subscribe("t", 100.0, 8, 0)).await;
    stream.message().await.unwrap().unwrap();
    primary.abort();
    let status = bounded(
        LIMIT,
        "status after the primary died",
        status_at_end(&mut stream),
    )
    .await;
    (proxy, status)
}

#[tokio::test]
async fn sigkill_of_the_primary_resumes_every_stream_on_the_secondary_exactly_once() {
    let Some(dir) = built_plugins() else { return };
    let primary = FeedProcess::start("primary");
    let secondary = FeedProcess::start("secondary");
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.plugins = plugins_config();
    config.plugins.resumer.file = Some(dir.join("feed-resumer.wasm"));
    let (proxy, _policies) = sluice_with_policies(config).await;

    const STREAMS: usize = 100;
    const LAST: u64 = 399;
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut c = client(proxy.addr()).await;
    for i in 0..STREAMS {
        let stream = subscribe_on(
            &mut c,
            subscribe(&format!("t{i}"), 200.0, 16, 0),
            &format!("m{i}"),
        )
        .await;
        readers.push(follow(stream, 0, LAST, Arc::clone(&progress)));
    }
    // Every stream is flowing before the kill.
    assert!(
        eventually(LIMIT, || progress
            .load(std::sync::atomic::Ordering::Relaxed)
            >= STREAMS as u64 * 20)
        .await
    );
    assert_eq!(proxy.snapshot().stats.resumes_total, 0);
    primary.kill();
    for (i, reader) in readers.into_iter().enumerate() {
        let read = bounded(LIMIT, "stream reaches its last seq", reader)
            .await
            .expect("reader task");
        assert_eq!(
            read,
            Ok(LAST + 1),
            "stream {i} must see every seq exactly once"
        );
    }
    let stats = proxy.snapshot().stats;
    assert!(
        stats.resumes_total >= STREAMS as u64,
        "every stream resumed: {stats:?}"
    );
    assert_eq!(stats.resume_failures_total, 0);
    let (health, breaker) = endpoint_health(&proxy, "primary");
    assert_eq!(health, Health::Unhealthy);
    assert_eq!(breaker, BreakerState::Open);
    drop(secondary);
}

#[tokio::test]
async fn a_restarted_primary_goes_half_open_then_closed_and_takes_new_streams_back() {
    let primary = FeedProcess::start("primary");
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.breakers.endpoint.open_duration = Some(Duration::from_millis(300));
    config.health.active = true;
    config.health.interval = Duration::from_millis(100);
    config.health.timeout = Duration::from_millis(500);
    let proxy = sluice(config).await;

    let mut c = client(proxy.addr()).await;
    let mut old_streams = Vec::new();
    for i in 0..10 {
        let mut stream =
            subscribe_on(&mut c, subscribe(&format!("t{i}"), 100.0, 8, 0), "old").await;
        stream.message().await.unwrap().unwrap();
        old_streams.push(stream);
    }
    let addr = primary.kill();
    assert!(
        eventually(LIMIT, || endpoint_health(&proxy, "primary").0
            == Health::Unhealthy)
        .await,
        "the killed primary turns unhealthy"
    );
    // Streams resumed on the secondary keep flowing (without a resumer they start over).
    for stream in &mut old_streams {
        bounded(LIMIT, "message after failover", stream.message())
            .await
            .expect("no error after failover")
            .expect("stream continues");
    }

    let restarted = FeedProcess::start_on("primary", addr);
    assert!(
        eventually(LIMIT, || endpoint_health(&proxy, "primary").1
            != BreakerState::Open)
        .await,
        "health checks pass and the breaker lets probes through"
    );
    // New streams probe the primary (best priority again) until its breaker closes.
    let mut new_streams = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while endpoint_health(&proxy, "primary").1 != BreakerState::Closed {
        assert!(Instant::now() < deadline, "the primary's breaker closes");
        let response = c
            .subscribe(as_monitor(subscribe("new", 100.0, 8, 0), "new"))
            .await
            .expect("subscribe after restart");
        let mut stream = response.into_inner();
        stream.message().await.unwrap().unwrap();
        new_streams.push(stream);
    }
    let events: Vec<(BreakerState, BreakerState)> = proxy
        .breaker_events(0)
        .into_iter()
        .filter(|e| e.scope == BreakerScope::Endpoint && &*e.name == "primary")
        .map(|e| (e.from, e.to))
        .collect();
    assert!(events.len() >= 3, "events: {events:?}");
    let tail = &events[events.len() - 3..];
    assert_eq!(
        tail,
        [
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed)
        ],
        "all events: {events:?}"
    );
    // Failback: a new stream lands on the primary.
    let response = c
        .subscribe(as_monitor(subscribe("back", 100.0, 8, 0), "new"))
        .await
        .expect("subscribe after failback");
    assert_eq!(
        response.metadata().get("x-feed-name").unwrap(),
        "primary",
        "new streams fail back to the primary"
    );
    // The streams that moved to the secondary were not broken by the failback.
    for stream in &mut old_streams {
        stream.message().await.unwrap().unwrap();
    }
    drop(restarted);
}

#[tokio::test]
async fn goaway_migrates_resumable_streams_without_an_error() {
    let mut primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.pool.max_drain_time = Duration::from_secs(30);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let mut stream = subscribe_on(&mut c, subscribe(&format!("t{i}"), 100.0, 8, 0), "m").await;
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    assert_eq!(primary.stats.snapshot().subscribe_active, 5);
    primary.goaway();
    // Sluice moves the streams off at once, long before the 30 s drain time.
    assert!(
        upstream_subscriptions_reach(&secondary, 5).await,
        "streams migrated to the secondary"
    );
    assert!(upstream_subscriptions_reach(&primary, 0).await);
    for stream in &mut streams {
        for _ in 0..5 {
            bounded(LIMIT, "message after migration", stream.message())
                .await
                .expect("no error after GOAWAY")
                .expect("stream continues");
        }
    }
    assert!(proxy.snapshot().stats.migrations_total >= 5);
}

#[tokio::test]
async fn keepalive_detects_a_black_hole_and_streams_resume_elsewhere() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let hole = FaultProxy::start(primary.addr).await.unwrap();
    let mut config = primary_and_secondary(&hole.url(), &format!("http://{}", secondary.addr));
    config.pool.keepalive_interval = Duration::from_millis(200);
    config.pool.keepalive_timeout = Duration::from_millis(300);
    // Keepalive alone: silence probes (see `liveness`) would find the black hole first.
    config.pool.probe_after_silence = Duration::ZERO;
    // A new connection into the black hole never finishes its handshake.
    config.pool.connect_timeout = Duration::from_millis(500);
    let proxy = sluice(config).await;
    let mut stream = open_subscription(proxy.addr(), "m", subscribe("t", 100.0, 8, 0)).await;
    stream.message().await.unwrap().unwrap();

    hole.set(Fault::BlackHole);
    let started = Instant::now();
    bounded(LIMIT, "message after the black hole", async {
        // Messages already in flight may still arrive; wait for the secondary's.
        while secondary.stats.snapshot().subscribe_active == 0 {
            stream.message().await.unwrap().unwrap();
        }
        stream.message().await.unwrap().unwrap();
    })
    .await;
    let detected_in = started.elapsed();
    assert!(
        detected_in < Duration::from_secs(5),
        "keepalive (200 ms + 300 ms) found the black hole in {detected_in:?}"
    );
}

#[tokio::test]
async fn connection_resets_are_resumed_and_added_latency_trips_the_slow_call_breaker() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let faulty = FaultProxy::start(primary.addr).await.unwrap();
    let mut config = primary_and_secondary(&faulty.url(), &format!("http://{}", secondary.addr));
    config.breakers.connection.slow_call_duration = Some(Duration::from_millis(100));
    config.breakers.connection.minimum_volume = Some(5);
    config.breakers.endpoint.slow_call_duration = Some(Duration::from_millis(100));
    config.breakers.endpoint.minimum_volume = Some(5);
    let proxy = sluice(config).await;

    // Resets: the stream continues.
    let mut stream = open_subscription(proxy.addr(), "m", subscribe("t", 100.0, 8, 0)).await;
    stream.message().await.unwrap().unwrap();
    faulty.reset_all();
    for _ in 0..10 {
        bounded(LIMIT, "message after reset", stream.message())
            .await
            .expect("no error after a connection reset")
            .expect("stream continues");
    }
    assert!(proxy.snapshot().stats.resumes_total >= 1);
    drop(stream);

    // Latency: slow unary calls open the endpoint's breaker with a slow-call cause.
    faulty.set(Fault::Latency(Duration::from_millis(150)));
    let mut c = client(proxy.addr()).await;
    let mut slow_trip = false;
    for _ in 0..20 {
        let _ = c
            .echo(as_monitor(EchoRequest::default(), "m"))
            .await
            .expect("echo");
        slow_trip = proxy.breaker_events(0).iter().any(|e| {
            e.to == BreakerState::Open && e.cause.contains("slower than") && &*e.name == "primary"
        });
        if slow_trip {
            break;
        }
    }
    assert!(slow_trip, "events: {:?}", proxy.breaker_events(0));
    // With the primary's breaker open, calls go to the secondary.
    let reply = c
        .echo(as_monitor(EchoRequest::default(), "m"))
        .await
        .expect("echo on the secondary");
    assert_eq!(reply.metadata().get("x-feed-name").unwrap(), "secondary");
}

#[tokio::test]
async fn a_non_resumable_method_gets_a_clean_unavailable() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.methods.clear();
    let (proxy, status) = status_after_the_primary_dies(config, primary).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream"), "{status:?}");
    assert_eq!(proxy.snapshot().stats.resumes_total, 0);
}

#[tokio::test]
async fn resumes_give_up_with_unavailable_when_no_endpoint_is_left() {
    let primary = feed("primary").await;
    let mut config = config_with_endpoint("primary", &format!("http://{}", primary.addr));
    config.methods = vec![MethodConfig {
        resume_attempts: 3,
        resume_timeout: Duration::from_secs(2),
        ..resumable_subscribe()
    }];
    let (proxy, status) = status_after_the_primary_dies(config, primary).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("could not be resumed"),
        "{status:?}"
    );
    assert_eq!(proxy.snapshot().stats.resume_failures_total, 1);
}

#[tokio::test]
async fn a_resume_storm_never_exceeds_the_secondarys_stream_rate() {
    const STREAMS: usize = 500;
    const RATE: f64 = 200.0;
    const BURST: u32 = 20;
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.endpoints[1].rate_limit = Some(RateLimitConfig {
        streams_per_second: RATE,
        burst: Some(BURST),
        queue: 1000,
    });
    config.classes.event.max_streams_per_connection = 250;
    config.methods[0].resume_timeout = Duration::from_secs(20);
    config.methods[0].resume_attempts = 10;
    let proxy = sluice(config).await;

    let mut streams = Vec::new();
    let mut c = client(proxy.addr()).await;
    for i in 0..STREAMS {
        let stream = subscribe_on(&mut c, subscribe(&format!("t{i}"), 5.0, 8, 0), "m").await;
        streams.push(stream);
    }
    for stream in &mut streams {
        stream.message().await.unwrap().unwrap();
    }
    // Sample the secondary's stream starts while everything moves over.
    let sampler = tokio::spawn(sample_starts(
        Arc::clone(&secondary.stats),
        Duration::from_millis(10),
        |started, elapsed| started >= STREAMS as u64 || elapsed > LIMIT,
    ));
    primary.abort();
    let samples = bounded(LIMIT, "all streams move", sampler).await.unwrap();
    let last = *samples.last().unwrap();
    let took = last.after;
    assert_eq!(
        last.started, STREAMS as u64,
        "every stream resumed on the secondary"
    );
    // Over any interval, starts <= burst + rate * interval, as the server saw them.
    let violations = rate_violations(&samples, f64::from(BURST), RATE);
    assert!(violations.is_empty(), "{:?}", violations.first());
    assert!(
        took >= Duration::from_secs_f64((STREAMS as f64 - f64::from(BURST)) / RATE * 0.9),
        "500 resumes at 200/s take about 2.4 s, took {took:?}"
    );
    for stream in &mut streams {
        bounded(LIMIT, "message after the storm", stream.message())
            .await
            .expect("no error")
            .expect("stream continues");
    }
    assert_eq!(proxy.snapshot().stats.rate_limited_total, 0);
}

#[tokio::test]
async fn a_monitor_whose_calls_keep_failing_is_stopped_by_its_breaker() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    // Only the monitor's breaker: the injected UNAVAILABLEs would otherwise open the
    // endpoint's first.
    config.breakers.endpoint.enabled = Some(false);
    config.breakers.connection.enabled = Some(false);
    // Breakers of their own are for configured monitors (every other name shares one).
    config.monitors.push(monitor("flaky", TrafficClass::Event));
    config.monitors.push(monitor("steady", TrafficClass::Event));
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let failing = || {
        let mut request = as_monitor(EchoRequest::default(), "flaky");
        request
            .metadata_mut()
            .insert(sluice_feed::headers::FAIL_CODE, "14".parse().unwrap());
        request
    };
    // The monitor default: 10 failures in a row open the breaker.
    for _ in 0..10 {
        let status = c.echo(failing()).await.expect_err("injected failure");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("circuit breaker"));
    }
    let refused = c.echo(failing()).await.expect_err("breaker open");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("circuit breaker of monitor flaky is open"),
        "{refused:?}"
    );
    assert_eq!(
        upstream.stats.snapshot().calls_total,
        10,
        "the 11th call never left Sluice"
    );
    // Other monitors are not affected.
    c.echo(as_monitor(EchoRequest::default(), "steady"))
        .await
        .expect("another monitor's call works");
}

#[tokio::test]
async fn failing_health_checks_move_new_streams_to_the_next_priority_and_back() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.health.active = true;
    config.health.interval = Duration::from_millis(50);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let echo_on = |c: &mut sluice_feed::pb::feed_client::FeedClient<_>| {
        let mut c = c.clone();
        async move {
            let reply = c
                .echo(as_monitor(EchoRequest::default(), "m"))
                .await
                .expect("echo");
            reply
                .metadata()
                .get("x-feed-name")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(echo_on(&mut c).await, "primary");
    primary.set_serving(false).await;
    assert!(
        eventually(LIMIT, || endpoint_health(&proxy, "primary").0
            == Health::Unhealthy)
        .await
    );
    assert_eq!(echo_on(&mut c).await, "secondary");
    // Failed checks reconnect, and the connections they leave behind close: the primary sees
    // the pool's connection and at most two of the checker's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = primary.stats.snapshot().connections_open;
    assert!(open <= 3, "{open} connections open at the primary");
    primary.set_serving(true).await;
    assert!(
        eventually(LIMIT, || endpoint_health(&proxy, "primary").0
            == Health::Healthy)
        .await
    );
    assert_eq!(echo_on(&mut c).await, "primary");
}

#[tokio::test]
async fn a_monitor_preferring_a_region_gets_it_while_it_is_usable() {
    let eu = feed("eu").await;
    let us = feed("us").await;
    let mut config = config_with_endpoint("eu", &format!("http://{}", eu.addr));
    config.endpoints[0].region = "eu-west".into();
    config.endpoints.push(sluice_config::EndpointConfig {
        region: "us-east".into(),
        ..endpoint("us", &format!("http://{}", us.addr))
    });
    // Both endpoints hold a connection from the start.
    config.classes.event.min_connections = 2;
    config.monitors = vec![sluice_config::MonitorConfig {
        prefer_region: Some("us-east".into()),
        ..monitor("american", sluice_config::TrafficClass::Event)
    }];
    let proxy = sluice(config).await;
    assert!(eventually(LIMIT, || proxy.snapshot().connections == 2).await);
    let mut c = client(proxy.addr()).await;
    for _ in 0..20 {
        let reply = c
            .echo(as_monitor(EchoRequest::default(), "american"))
            .await
            .expect("echo");
        assert_eq!(reply.metadata().get("x-feed-name").unwrap(), "us");
    }
    // Without its preferred region the monitor is served elsewhere.
    proxy
        .view()
        .override_breaker(
            BreakerScope::Endpoint,
            "us",
            Some(sluice_proxy::breaker::Override::ForceOpen),
        )
        .expect("the us endpoint has a breaker");
    let reply = c
        .echo(as_monitor(EchoRequest::default(), "american"))
        .await
        .expect("echo");
    assert_eq!(reply.metadata().get("x-feed-name").unwrap(), "eu");
}

#[tokio::test]
async fn a_degraded_endpoint_takes_half_the_streams_per_connection() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.max_streams_per_connection = 4;
    // Failures that neither trip a breaker nor stop the calls: only the error rate moves.
    config.breakers.connection.enabled = Some(false);
    config.breakers.endpoint.failure_threshold = Some(100);
    config.breakers.endpoint.failure_rate = Some(1.0);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    for i in 0..10 {
        let mut request = as_monitor(EchoRequest::default(), "m");
        if i % 3 == 0 {
            request
                .metadata_mut()
                .insert(sluice_feed::headers::FAIL_CODE, "14".parse().unwrap());
        }
        let _ = c.echo(request).await;
    }
    let endpoint = proxy.endpoints().remove(0);
    assert_eq!(endpoint.health.health, Health::Degraded, "{endpoint:?}");
    assert!(
        endpoint
            .health
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("40% of 10 recent streams failed")),
        "{endpoint:?}"
    );
    assert_eq!(proxy.snapshot().connections, 1);
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut stream = subscribe_on(&mut c, subscribe(&format!("t{i}"), 10.0, 8, 0), "m").await;
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    // 2 of a connection's 4 slots while degraded: the third stream needed a second connection.
    assert_eq!(proxy.snapshot().connections, 2);
}

#[tokio::test]
async fn a_resumable_chat_flows_both_ways_under_load_and_across_a_failover() {
    use sluice_tests::pb::ChatMessage;
    use tokio_stream::StreamExt as _;

    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(
        &format!("http://{}", primary.addr),
        &format!("http://{}", secondary.addr),
    );
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new("/sluice.feed.v1.Feed/Chat")
    }];
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;

    // 8 MB each way, far more than the flow-control windows: the relay must keep taking
    // responses while requests wait for window, or both sides stall.
    const MESSAGES: u64 = 2000;
    let outgoing = tokio_stream::iter((0..MESSAGES).map(|seq| ChatMessage {
        seq,
        payload: vec![7; 4096].into(),
        ..Default::default()
    }));
    let replies = bounded(LIMIT, "chat under load", async {
        c.chat(as_monitor(outgoing, "m"))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().seq)
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(replies, (0..MESSAGES).collect::<Vec<_>>());

    // Across a failover: the conversation continues on the secondary without an error.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .chat(as_monitor(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "m",
        ))
        .await
        .unwrap()
        .into_inner();
    let say = |seq| ChatMessage {
        seq,
        ..Default::default()
    };
    tx.send(say(1)).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().seq, 1);
    primary.abort();
    // The replay of the latest message is answered by the secondary; then new ones are.
    let replayed = bounded(LIMIT, "replayed reply", replies.message())
        .await
        .expect("no error across the failover")
        .expect("the chat continues");
    assert_eq!(replayed.seq, 1);
    tx.send(say(2)).await.unwrap();
    let next = bounded(LIMIT, "reply after failover", replies.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(secondary.stats.snapshot().chat_messages, 2);
    assert_eq!(proxy.snapshot().stats.resumes_total, 1);
}

#[tokio::test]
async fn a_quiet_stream_gets_a_fresh_resume_budget_for_each_break() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let faulty = FaultProxy::start(primary.addr).await.unwrap();
    let mut config = primary_and_secondary(&faulty.url(), &format!("http://{}", secondary.addr));
    config.methods[0].resume_timeout = Duration::from_millis(400);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    // Quiet: the upstream waits 1.5 s before each event.
    let mut request = as_monitor(subscribe("t", 100.0, 8, 0), "m");
    request
        .metadata_mut()
        .insert(sluice_feed::headers::DELAY_MS, "1500".parse().unwrap());
    let mut stream = c.subscribe(request).await.expect("subscribe").into_inner();
    // Two breaks further apart than the resume timeout, with nothing delivered in between.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        faulty.reset_all();
    }
    let event = bounded(LIMIT, "the first event", stream.message())
        .await
        .expect("no error: each break got its own resume budget")
        .expect("an event");
    assert_eq!(event.seq, 0);
    assert_eq!(proxy.snapshot().stats.resumes_total, 2);
}

#[tokio::test]
async fn an_upstream_refusing_every_stream_is_not_retried_in_a_loop_nor_counted_as_failing() {
    // An HTTP/2 server that refuses every stream (RST_STREAM REFUSED_STREAM), as an overloaded
    // or restarting provider may.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&refused);
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let mut config = config_with_endpoint("refusing", &format!("http://{addr}"));
    config.methods = vec![MethodConfig {
        resume_attempts: 3,
        ..resumable_subscribe()
    }];
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let started = Instant::now();
    let status = bounded(LIMIT, "the call ends", async {
        match c
            .subscribe(as_monitor(subscribe("t", 10.0, 8, 0), "m"))
            .await
        {
            Ok(response) => status_at_end(&mut response.into_inner()).await,
            Err(status) => status,
        }
    })
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("within 3 attempts"), "{status:?}");
    // The first stream and 3 resumes, with pauses in between: no loop.
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
    // A refusal is not the endpoint failing.
    assert_eq!(endpoint_health(&proxy, "refusing").1, BreakerState::Closed);
    server.abort();
}

/// Places first streams on endpoint `feed-0` and lists `feed-2` then `feed-1` as the
/// alternatives; asked again, it would pick `feed-1`. Counts its calls.
#[derive(Default)]
struct AlternativesRouter {
    calls: std::sync::atomic::AtomicUsize,
}

impl sluice_contract::route::Router for AlternativesRouter {
    fn name(&self) -> &str {
        "alternatives"
    }

    fn route(
        &self,
        request: &sluice_contract::route::RouteRequest<'_>,
    ) -> Option<sluice_contract::route::RouteDecision> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let on = |endpoint: &str| {
            request
                .candidates
                .iter()
                .position(|c| &*c.endpoint_id == endpoint)
        };
        let (index, alternatives) = match on("feed-0") {
            Some(first) => (
                first,
                [on("feed-2"), on("feed-1")].into_iter().flatten().collect(),
            ),
            None => (on("feed-1")?, Vec::new()),
        };
        Some(sluice_contract::route::RouteDecision {
            index,
            confidence: 1.0,
            reason: "test".into(),
            alternatives,
            scored: None,
        })
    }
}

#[tokio::test]
async fn a_broken_stream_resumes_on_its_placements_first_alternative() {
    // feed-0 ends every subscription after 20 events with UNAVAILABLE (a resumable break).
    let breaking = feed_with(sluice_feed::FeedConfig {
        name: "breaking".to_owned(),
        disconnect_after: Some(20),
        ..Default::default()
    })
    .await;
    let (second, third) = (feed("second").await, feed("third").await);
    let mut config = config_for(&[&breaking, &second, &third]);
    config.methods = vec![resumable_subscribe()];
    config.classes.event.min_connections = 3;
    let router = Arc::new(AlternativesRouter::default());
    let proxy = sluice_proxy::Proxy::bind_with_router(Arc::new(config), Arc::clone(&router) as _)
        .await
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(10), || proxy.snapshot().connections
            == 3)
        .await
    );

    let mut stream = open_subscription(proxy.addr(), "m", subscribe("alt", 200.0, 16, 60)).await;
    let mut received = 0;
    let ended = bounded(LIMIT, "resumed stream", async {
        while let Some(_event) = stream.message().await? {
            received += 1;
        }
        Ok::<(), tonic::Status>(())
    })
    .await;
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        received > 20,
        "the stream went on after the break: {received}"
    );
    assert_eq!(proxy.snapshot().stats.resumes_total, 1);
    // The resume went to the first alternative (feed-2), without asking the router again.
    assert_eq!(third.stats.snapshot().subscribe_started, 1);
    assert_eq!(second.stats.snapshot().subscribe_started, 0);
    assert_eq!(
        router.calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the router placed only the first stream"
    );
    proxy.shutdown().await;
}
