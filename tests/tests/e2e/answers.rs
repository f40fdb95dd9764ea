//! A provider's quota and credential answers (`[endpoints.answers]`), from real feed servers
//! told to refuse every call: once two monitors got one, `RESOURCE_EXHAUSTED` keeps new
//! streams off the endpoint for the pushback it asked for, and `UNAUTHENTICATED` marks the
//! endpoint misconfigured, raises an alert and stops every retry into it until an operator
//! re-enables it; resumable streams continue elsewhere from the first answer. None of it counts
//! against the endpoint's breaker nor a monitor's.

use std::time::{Duration, Instant};

use sluice_analytics::alerts::{AlertRule, AlertState};
use sluice_config::{BreakerScope, Config, MethodConfig, ResumeMode, TrafficClass};
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_feed::Refusal;
use sluice_proxy::ProxyHandle;
use sluice_tests::admin::{Observed, observed, request};
use sluice_tests::pb::EchoRequest;
use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

/// `primary` (priority 0) and `secondary` (priority 1), with `Subscribe` resumable and the
/// monitors `a` and `b` configured (unconfigured ones would all count as one witness).
fn primary_and_secondary(
    primary: &sluice_feed::FeedHandle,
    secondary: &sluice_feed::FeedHandle,
) -> Config {
    let mut config = config_with_endpoint("primary", &format!("http://{}", primary.addr));
    config.endpoints.push(sluice_config::EndpointConfig {
        priority: 1,
        ..endpoint("secondary", &format!("http://{}", secondary.addr))
    });
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }];
    config.monitors = vec![
        monitor("a", TrafficClass::Event),
        monitor("b", TrafficClass::Event),
    ];
    config
}

/// Monitor `a` for even `i`, `b` for odd.
fn either(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "a" } else { "b" }
}

/// An Echo call as `monitor`: the answering feed's name, or the status.
async fn echo(
    client: &mut pb::feed_client::FeedClient<tonic::transport::Channel>,
    monitor: &str,
) -> Result<String, Code> {
    match client
        .echo(as_monitor(EchoRequest::default(), monitor))
        .await
    {
        Ok(response) => Ok(response
            .metadata()
            .get("x-feed-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()),
        Err(status) => Err(status.code()),
    }
}

/// The endpoint `id` as the admin API shows it.
fn endpoint_of(proxy: &ProxyHandle, id: &str) -> sluice_proxy::pool::EndpointSnapshot {
    let endpoints = proxy.view().endpoints();
    endpoints
        .into_iter()
        .find(|e| &*e.id == id)
        .unwrap_or_else(|| panic!("no endpoint {id}"))
}

/// Asserts that no endpoint or monitor breaker counted a failure: the provider's answers blame
/// nobody.
fn assert_nobody_blamed(proxy: &ProxyHandle) {
    for breaker in proxy.view().breakers() {
        if breaker.scope != BreakerScope::Connection {
            assert_eq!(breaker.state, BreakerState::Closed, "{breaker:?}");
            assert_eq!(breaker.window_failures, 0, "{breaker:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_pushback_moves_new_streams_away_for_as_long_as_the_server_asked() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = primary_and_secondary(&primary, &secondary);
    // What a pushback without grpc-retry-pushback-ms would mean here: far longer than the
    // server's 4 s.
    config.endpoints[0].answers.pushback = Duration::from_secs(60);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    assert_eq!(echo(&mut c, "a").await, Ok("primary".to_owned()));

    // The quota is spent: every call gets RESOURCE_EXHAUSTED, asking for 4 s (not the configured 60 s
    // default) before the next.
    primary.refuse(Some(Refusal {
        code: Code::ResourceExhausted,
        pushback_ms: Some(4000),
    }));
    let refused_at = Instant::now();
    // Resumable streams placed on the primary continue on the secondary, whole: the first two
    // on their own (one monitor's answer marks nothing), the rest once the second monitor's
    // answer marked the endpoint.
    for i in 0..10 {
        let request = subscribe(&format!("q{i}"), 200.0, 8, 5);
        let mut stream = subscribe_on(&mut c, request, either(i)).await;
        let mut seqs = Vec::new();
        while let Some(event) = bounded(LIMIT, "stream", stream.message())
            .await
            .expect("no error")
        {
            seqs.push(event.seq);
        }
        assert_eq!(seqs, [0, 1, 2, 3, 4], "stream {i}");
        if i == 0 {
            let unmarked = endpoint_of(&proxy, "primary");
            assert_eq!(unmarked.health.health, Health::Healthy, "{unmarked:?}");
        }
    }
    // a's and b's answers marked the endpoint; no later stream was sent there.
    assert_eq!(primary.stats.snapshot().calls_refused, 2);
    let marked = endpoint_of(&proxy, "primary");
    assert_eq!(marked.health.health, Health::Unhealthy);
    assert!(
        marked
            .health
            .standing
            .pushback_remaining_ms
            .is_some_and(|ms| ms > 0),
        "{marked:?}"
    );
    assert!(
        marked
            .health
            .standing
            .pushback_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("RESOURCE_EXHAUSTED")),
        "{marked:?}"
    );
    assert_nobody_blamed(&proxy);

    // Other calls go to the secondary meanwhile, and the primary sees none of them.
    let calls = primary.stats.snapshot().calls_total;
    for _ in 0..5 {
        assert_eq!(echo(&mut c, "a").await, Ok("secondary".to_owned()));
    }
    assert_eq!(primary.stats.snapshot().calls_total, calls);

    // Once the 4 s are over the primary takes new streams again, long before 60 s.
    primary.refuse(None);
    let back = eventually_async(Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { echo(&mut c, "a").await == Ok("primary".to_owned()) }
    })
    .await;
    let took = refused_at.elapsed();
    assert!(back, "the primary took no stream again within 20 s");
    assert!(
        took >= Duration::from_millis(3900),
        "back after {took:?}, before the pushback ended"
    );
    assert_eq!(
        endpoint_of(&proxy, "primary").health.health,
        Health::Healthy
    );
    assert_nobody_blamed(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_mark_the_endpoint_misconfigured_alert_and_stop_retries() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let store = tempfile::tempdir().unwrap();
    let mut config = primary_and_secondary(&primary, &secondary);
    config.store.path = store.path().join("sluice.db");
    config.scaling.enabled = false;
    config.analytics.period = Duration::from_millis(100);
    let Observed {
        admin,
        proxy,
        analytics,
        ..
    } = observed(config, "t").await;
    let loops = analytics.spawn();

    primary.refuse(Some(Refusal {
        code: Code::Unauthenticated,
        pushback_ms: None,
    }));
    // Two monitors retrying at once, 50 calls between them: only their first calls reach the
    // primary. After a's alone the endpoint is not marked: one monitor's request can draw such
    // an answer for what it asked.
    let mut c = client(proxy.addr()).await;
    let mut answers = vec![echo(&mut c, "a").await];
    let unmarked = endpoint_of(&proxy, "primary");
    assert_eq!(unmarked.health.standing.misconfigured, None, "{unmarked:?}");
    for i in 1..50 {
        answers.push(echo(&mut c, either(i)).await);
    }
    assert_eq!(
        answers[..2],
        [Err(Code::Unauthenticated), Err(Code::Unauthenticated)]
    );
    assert!(
        answers[2..].iter().all(|a| a.as_deref() == Ok("secondary")),
        "{answers:?}"
    );
    let stats = primary.stats.snapshot();
    assert_eq!((stats.calls_total, stats.calls_refused), (2, 2));
    let marked = endpoint_of(&proxy, "primary");
    assert_eq!(marked.health.health, Health::Unhealthy);
    let why = marked
        .health
        .standing
        .misconfigured
        .clone()
        .unwrap_or_default();
    assert!(why.starts_with("UNAUTHENTICATED"), "{marked:?}");
    assert_nobody_blamed(&proxy);

    let firing = |alerts: &[sluice_analytics::alerts::ActiveAlert]| {
        alerts.iter().any(|a| {
            a.rule == AlertRule::EndpointMisconfigured
                && a.subject == "endpoint:primary"
                && a.state == AlertState::Firing
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || firing(&analytics.alerts())).await,
        "no endpoint_misconfigured alert: {:#?}",
        analytics.alerts()
    );

    // The provider takes the credentials again, but nothing finds out by retrying: the
    // endpoint waits for an operator.
    primary.refuse(None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(echo(&mut c, "a").await, Ok("secondary".to_owned()));
    }
    assert_eq!(primary.stats.snapshot().calls_total, 2);

    let admin_addr = admin.addr();
    let enable = |id: &str| {
        let path = format!("/api/v1/endpoints/{id}/enable");
        async move { request(admin_addr, "POST", &path, Some("t"), Vec::new()).await }
    };
    let enabled = enable("primary").await;
    assert_eq!(
        (enabled.status, &enabled.json["cleared"]),
        (200, &serde_json::json!(true))
    );
    assert_eq!(enable("nowhere").await.status, 404);
    assert_eq!(echo(&mut c, "a").await, Ok("primary".to_owned()));
    assert!(
        eventually(Duration::from_secs(10), || !firing(&analytics.alerts())).await,
        "the alert did not resolve"
    );
    bounded(LIMIT, "loops stop", loops.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resumable_stream_moves_only_once_the_endpoint_is_marked() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let proxy = sluice(primary_and_secondary(&primary, &secondary)).await;
    let mut c = client(proxy.addr()).await;
    primary.refuse(Some(Refusal {
        code: Code::PermissionDenied,
        pushback_ms: None,
    }));
    // One monitor's refusal may be about what it asked: it gets the answer, and its stream
    // is not carried from endpoint to endpoint (to witness against each).
    let refused = c
        .subscribe(as_monitor(subscribe("r0", 200.0, 8, 5), "a"))
        .await
        .map(|_| ());
    assert_eq!(refused.map_err(|s| s.code()), Err(Code::PermissionDenied));
    assert_eq!(secondary.stats.snapshot().subscribe_started, 0);
    assert_eq!(
        endpoint_of(&proxy, "primary").health.health,
        Health::Healthy
    );
    // A second monitor's refusal marks the endpoint: that stream moves, whole.
    let mut moved = subscribe_on(&mut c, subscribe("r1", 200.0, 8, 5), "b").await;
    let mut seqs = Vec::new();
    while let Some(event) = bounded(LIMIT, "moved stream", moved.message())
        .await
        .expect("no error")
    {
        seqs.push(event.seq);
    }
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert_eq!(primary.stats.snapshot().calls_refused, 2);
    let marked = endpoint_of(&proxy, "primary");
    assert!(marked.health.standing.misconfigured.is_some(), "{marked:?}");
    assert_nobody_blamed(&proxy);
}
