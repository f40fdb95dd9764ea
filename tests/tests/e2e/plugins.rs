//! Policy plugins routing real streams: every language's example, hostile plugins on the data
//! path and at load time, the breaker, shadow agreement, the compile cache, and the scaler and
//! anomaly slots. Components come from `cargo xtask plugins` (see `sluice_tests::plugins`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_config::{Config, SlotKind, TrafficClass};
use sluice_policy::{EventKind, Policies, PolicyError};
use sluice_tests::plugins::*;
use sluice_tests::*;

/// A Sluice whose event class keeps 3 warm connections of 4 streams each, so the router always
/// has several candidates.
///
/// The router deadline is 1 s, not 1 ms: these tests check what plugins decide, and other tests
/// in this binary compile 18 MB components on every core meanwhile, which can stall a call for
/// tens of milliseconds. Tests about deadlines set their own; latency is the benchmark's job.
fn several_candidates(upstream: &sluice_feed::FeedHandle) -> Config {
    let mut config = config_for(&[upstream]);
    config.classes.event.min_connections = 3;
    config.classes.event.max_streams_per_connection = 4;
    config.plugins = plugins_config();
    config.plugins.router.deadline = Some(Duration::from_secs(1));
    config
}

/// [`several_candidates`] with one value in the router plugin's `config` table.
fn router_configured(upstream: &sluice_feed::FeedHandle, key: &str, value: &str) -> Config {
    let mut config = several_candidates(upstream);
    config
        .plugins
        .router
        .config
        .insert(key.to_owned(), value.to_owned());
    config
}

/// Opens a short subscription, reads its messages to the end, and returns the decision that
/// placed it.
async fn routed_stream(
    proxy: &sluice_proxy::ProxyHandle,
    policies: &Policies,
) -> sluice_policy::RecordedDecision {
    let mut stream =
        open_subscription(proxy.addr(), "probe", subscribe("probe", 1000.0, 16, 2)).await;
    let mut received = 0;
    while let Some(_event) = bounded(Duration::from_secs(10), "probe stream", stream.message())
        .await
        .expect("probe stream succeeds")
    {
        received += 1;
    }
    assert_eq!(received, 2, "the probe stream delivered every message");
    policies
        .router()
        .recent(1)
        .pop()
        .expect("the stream was routed")
}

async fn warm(proxy: &sluice_proxy::ProxyHandle) {
    assert!(
        eventually(Duration::from_secs(10), || proxy.snapshot().connections
            >= 3)
        .await,
        "warm connections open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_example_routes_real_streams() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;
    let config = router_configured(&upstream, "region", "local");
    let (proxy, policies) = sluice_with_policies(config).await;
    warm(&proxy).await;
    for (file, prefix) in [
        ("router.wasm", "router:"),
        ("example-c-router.wasm", "c:"),
        ("example-js-router.wasm", "js:"),
        ("example-python-router.wasm", "python:"),
    ] {
        let loaded = load_plugin(&policies, built.join(file), Some(SlotKind::Router), false)
            .await
            .unwrap_or_else(|e| panic!("{file} loads: {e}"));
        assert_eq!(loaded.self_tested, 3);
        for _ in 0..3 {
            let decision = routed_stream(&proxy, &policies).await;
            assert!(
                !decision.fallback && decision.reason.starts_with(prefix),
                "{file} decided: {decision:?}"
            );
            assert_eq!(
                *decision.policy,
                format!("{}@v{}", loaded.info.name, loaded.info.version)
            );
        }
        if file.contains("python") {
            assert!(loaded.info.uses_wasi, "the Python guest imports WASI");
            let decision = routed_stream(&proxy, &policies).await;
            assert!(decision.reason.contains("region local"), "{decision:?}");
        }
        let active = policies
            .slot(SlotKind::Router)
            .active()
            .expect("active plugin");
        assert_eq!(
            active.stats.failures.load(Relaxed),
            0,
            "{file} never failed"
        );
    }
    proxy.shutdown().await;
}

/// Loads a hostile plugin into the router slot (self-test off) and checks that streams still
/// flow, each call falls back and is counted under `counter`, and the breaker trips at 3.
async fn survives(
    built: &Path,
    proxy: &sluice_proxy::ProxyHandle,
    policies: &Arc<Policies>,
    file: &str,
    kind: &str,
    counter: fn(&sluice_policy::plugin::PluginStats) -> u64,
) {
    load_plugin(policies, built.join(file), Some(SlotKind::Router), false)
        .await
        .unwrap_or_else(|e| panic!("{file} loads without its self-test: {e}"));
    for call in 0..4 {
        let decision = routed_stream(proxy, policies).await;
        if call < 3 {
            assert!(decision.fallback, "{file}: {decision:?}");
            assert!(
                decision.reason.contains("[fallback: ") && decision.reason.contains(kind),
                "{file}: the fallback names the failure: {}",
                decision.reason
            );
        } else {
            // The breaker disabled the plugin after 3 failures: the built-in answers directly.
            assert_eq!(&*decision.policy, "builtin", "{file}: {decision:?}");
        }
    }
    let plugin = policies
        .slot(SlotKind::Router)
        .active()
        .expect("still loaded");
    assert_eq!(plugin.stats.failures.load(Relaxed), 3, "{file}");
    assert_eq!(
        counter(&plugin.stats),
        3,
        "{file} failures counted as {kind}"
    );
    assert!(plugin.is_disabled(), "{file} disabled by the breaker");
    let events = policies.events().since(0);
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Disabled && e.plugin == **plugin.label()),
        "a visible event for {file}: {events:?}"
    );
    let enabled = policies.enable(SlotKind::Router).expect("re-enable");
    assert_eq!(enabled.version, plugin.info().version);
    assert!(!plugin.is_disabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fall_back_are_counted_and_leave_streams_alone() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;
    let mut config = several_candidates(&upstream);
    let router = &mut config.plugins.router;
    router.self_test = Some(false);
    router.failure_threshold = Some(3);
    router.deadline = Some(Duration::from_millis(200));
    router.memory_limit_bytes = Some(4 * 1024 * 1024);
    let (proxy, policies) = sluice_with_policies(config).await;
    warm(&proxy).await;
    // A long-lived stream placed before any hostile plugin; it must not notice them.
    let mut steady =
        open_subscription(proxy.addr(), "steady", subscribe("steady", 500.0, 32, 0)).await;
    let _ = steady.message().await.expect("steady stream starts");

    survives(
        &built,
        &proxy,
        &policies,
        "test-loop.wasm",
        "timeout",
        |s| s.timeouts.load(Relaxed),
    )
    .await;
    survives(
        &built,
        &proxy,
        &policies,
        "test-memory-bomb.wasm",
        "memory",
        |s| s.memory.load(Relaxed),
    )
    .await;
    survives(&built, &proxy, &policies, "test-panic.wasm", "trap", |s| {
        s.traps.load(Relaxed)
    })
    .await;
    survives(
        &built,
        &proxy,
        &policies,
        "test-out-of-range.wasm",
        "invalid",
        |s| s.invalid.load(Relaxed),
    )
    .await;
    survives(&built, &proxy, &policies, "test-nan.wasm", "invalid", |s| {
        s.invalid.load(Relaxed)
    })
    .await;
    survives(&built, &proxy, &policies, "test-error.wasm", "error", |s| {
        s.invalid.load(Relaxed)
    })
    .await;

    let mut after = 0;
    while after < 50 {
        bounded(Duration::from_secs(5), "steady stream", steady.message())
            .await
            .expect("the steady stream never failed")
            .expect("the steady stream never ended");
        after += 1;
    }
    assert_eq!(proxy.snapshot().stats.upstream_failures_total, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_are_refused_with_the_reason_and_the_previous_one_stays() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;
    let mut config = several_candidates(&upstream);
    config.plugins.router.deadline = Some(Duration::from_millis(50));
    let (proxy, policies) = sluice_with_policies(config).await;
    load_plugin(&policies, built.join("test-pick-first.wasm"), None, false)
        .await
        .expect("a good plugin loads");
    let expect_refused = |result, needles: &[&str]| {
        refusal(result, needles);
    };
    let garbage = policies.load(
        b"\0asm\x0d\0\x01\0garbage",
        "garbage",
        Some(SlotKind::Router),
        false,
    );
    expect_refused(garbage, &["not a valid WebAssembly component"]);
    let text = policies.load(b"hello, I am not wasm", "text", None, false);
    expect_refused(text, &["not a valid WebAssembly component"]);
    let wrong = load_plugin(
        &policies,
        built.join("test-wrong-signature.wasm"),
        Some(SlotKind::Router),
        false,
    )
    .await;
    expect_refused(
        wrong,
        &[
            "`route` export does not match the router world",
            "route-request",
        ],
    );
    let none = load_plugin(
        &policies,
        built.join("test-no-export.wasm"),
        Some(SlotKind::Router),
        false,
    )
    .await;
    expect_refused(none, &["missing export `route`", "it exports nothing"]);
    let scaler_as_router = load_plugin(
        &policies,
        built.join("scaler.wasm"),
        Some(SlotKind::Router),
        false,
    )
    .await;
    expect_refused(
        scaler_as_router,
        &["targets the scaler world", "not router"],
    );
    let looping = load_plugin(&policies, built.join("test-loop.wasm"), None, false).await;
    expect_refused(looping, &["self-test", "deadline"]);
    let out_of_range =
        load_plugin(&policies, built.join("test-out-of-range.wasm"), None, false).await;
    expect_refused(out_of_range, &["self-test", "out of range"]);
    let panicking = load_plugin(&policies, built.join("test-panic.wasm"), None, false).await;
    expect_refused(panicking, &["self-test", "unreachable"]);

    let active = policies
        .slot(SlotKind::Router)
        .active()
        .expect("still active");
    assert_eq!(active.info().name, "test-pick-first");
    let refusals = policies
        .events()
        .since(0)
        .into_iter()
        .filter(|e| e.kind == EventKind::LoadFailed)
        .count();
    assert_eq!(refusals, 8, "every refusal is a visible event");
    let decision = routed_stream(&proxy, &policies).await;
    assert_eq!(decision.reason, "pick-first");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_always_disagrees_is_reported_and_can_be_promoted() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;
    let mut config = several_candidates(&upstream);
    config.plugins.router.shadow_sample = Some(1.0);
    let (proxy, policies) = sluice_with_policies(config).await;
    warm(&proxy).await;
    load_plugin(&policies, built.join("test-pick-first.wasm"), None, false)
        .await
        .expect("active loads");
    load_plugin(&policies, built.join("test-pick-last.wasm"), None, true)
        .await
        .expect("shadow loads");
    // Six streams held open over 3 connections of 4: every decision has at least 2 candidates.
    let mut held = Vec::new();
    for i in 0..6 {
        let mut stream = open_subscription(
            proxy.addr(),
            &format!("m{i}"),
            subscribe(&format!("t{i}"), 100.0, 16, 0),
        )
        .await;
        let _ = stream.message().await.expect("stream starts");
        held.push(stream);
    }
    let shadow = policies.slot(SlotKind::Router).shadow().expect("shadow");
    assert!(
        eventually(Duration::from_secs(5), || shadow
            .stats
            .shadow_compared
            .load(Relaxed)
            >= 6)
        .await,
        "the shadow saw every decision"
    );
    assert!(
        policies
            .router()
            .recent(6)
            .iter()
            .all(|d| d.candidates >= 2),
        "every decision had a choice to disagree on"
    );
    assert_eq!(shadow.stats.shadow_compared.load(Relaxed), 6);
    assert_eq!(
        shadow.stats.shadow_agreed.load(Relaxed),
        0,
        "agreement is 0%"
    );
    assert_eq!(sluice_policy::slot::agreement(&shadow), "0.0% of 6");

    let promoted = policies.promote(SlotKind::Router).expect("promote");
    assert_eq!(promoted.name, "test-pick-last");
    drop(held);
    let decision = routed_stream(&proxy, &policies).await;
    assert_eq!(decision.reason, "pick-last");
    let rolled_back = policies.rollback(SlotKind::Router).expect("rollback");
    assert_eq!(rolled_back.name, "test-pick-first");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_same_component_uses_the_compile_cache() {
    let Some(built) = built_plugins() else { return };
    let cache = tempfile::tempdir().unwrap();
    let mut config = plugins_config();
    config.cache_dir = Some(cache.path().to_owned());
    let policies = tokio::task::spawn_blocking(move || Policies::new(&config))
        .await
        .unwrap()
        .unwrap();
    let file = built.join("router.wasm");
    let cold = load_plugin(&policies, file.clone(), None, false)
        .await
        .unwrap();
    assert!(!cold.info.cached, "first load compiles");
    let warm = load_plugin(&policies, file, None, false).await.unwrap();
    assert!(warm.info.cached, "second load comes from the cache");
    assert_eq!(warm.info.version, cold.info.version + 1);
    // One entry: the compiled code and the digest written beside it.
    let mut files: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with(".cwasm"), "{files:?}");
    assert_eq!(files[1], format!("{}.blake3", files[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scaler_and_anomaly_plugins_agree_with_the_built_ins() {
    let Some(built) = built_plugins() else { return };
    let mut config = plugins_config();
    config.scaler.file = Some(built.join("scaler.wasm"));
    config.anomaly.file = Some(built.join("anomaly.wasm"));
    let policies = tokio::task::spawn_blocking(move || Policies::new(&config))
        .await
        .unwrap()
        .expect("default plugins load at start");
    let groups = sluice_policy::world::scaler::sample_groups();
    let plan = policies.plan(&groups);
    let builtin = sluice_policy::builtin::Thresholds::default().plan(&groups);
    let deltas = |p: &sluice_policy::types::ScalePlan| {
        p.actions
            .iter()
            .map(|a| (a.class, a.delta))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        deltas(&plan),
        deltas(&builtin),
        "plugin: {}",
        plan.reasoning
    );
    assert_eq!(
        deltas(&plan),
        vec![
            (sluice_policy::types::TrafficClass::Realtime, 2),
            (sluice_policy::types::TrafficClass::State, -1)
        ]
    );
    let windows = sluice_policy::world::anomaly::sample_windows();
    let insights = policies.detect(&windows);
    assert_eq!(insights.len(), 1, "{insights:?}");
    assert_eq!(insights[0].metric.as_deref(), Some("upstream.errors_per_s"));
    assert_eq!(
        insights[0].severity,
        sluice_policy::types::Severity::Critical
    );
    for kind in [SlotKind::Scaler, SlotKind::Anomaly] {
        let plugin = policies.slot(kind).active().expect("loaded");
        assert_eq!(plugin.stats.calls.load(Relaxed), 1);
        assert_eq!(plugin.stats.failures.load(Relaxed), 0);
    }
    // One event in a flat series (a reconnect after a quiet spell) is at most a warning, for
    // both; a latency moving 5% off a flat line is nothing.
    let flat = |name: &str, level: f64, last: f64| {
        let mut samples = vec![level; 30];
        samples.push(last);
        sluice_policy::types::MetricWindow {
            name: name.to_owned(),
            interval_ms: 1000,
            samples,
        }
    };
    let windows = [
        flat("upstream.connections_opened_per_min", 0.0, 1.0),
        flat("upstream.latency_ms", 20.0, 21.0),
    ];
    let from_plugin = policies.detect(&windows);
    let from_builtin = sluice_policy::builtin::ZScore::default().detect(&windows);
    for insights in [&from_plugin, &from_builtin] {
        assert_eq!(insights.len(), 1, "{insights:?}");
        assert_eq!(
            insights[0].metric.as_deref(),
            Some("upstream.connections_opened_per_min")
        );
        assert_eq!(
            insights[0].severity,
            sluice_policy::types::Severity::Warning,
            "{insights:?}"
        );
    }
    let _ = TrafficClass::Event;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_plugin_may_print_on_the_data_path_but_never_block() {
    let Some(built) = built_plugins() else { return };
    let file = built.join("test-python-wasi.wasm");
    let upstream = feed("up").await;

    // Printing reaches WASI's blocking stdout write, on a runtime worker thread.
    let config = router_configured(&upstream, "mode", "print");
    let (proxy, policies) = sluice_with_policies(config).await;
    load_plugin(&policies, file.clone(), None, false)
        .await
        .expect("a printing plugin passes its self-test");
    for _ in 0..3 {
        let decision = routed_stream(&proxy, &policies).await;
        assert!(!decision.fallback, "{decision:?}");
        assert_eq!(decision.reason, "python-wasi: printed");
    }
    proxy.shutdown().await;

    // Sleeping waits in wasi:io/poll, where no deadline reaches: refused at once.
    let mut config = router_configured(&upstream, "mode", "sleep");
    config.plugins.router.self_test = Some(false);
    // Long enough that the call reaches its sleep: the refusal, not the deadline, must end it.
    config.plugins.router.deadline = Some(Duration::from_secs(2));
    let (proxy, policies) = sluice_with_policies(config).await;
    load_plugin(&policies, file.clone(), None, false)
        .await
        .expect("loads without its self-test");
    let started = std::time::Instant::now();
    let decision = bounded(
        Duration::from_secs(20),
        "a stream routed past a sleeping plugin",
        routed_stream(&proxy, &policies),
    )
    .await;
    assert!(
        decision.fallback && decision.reason.contains("trap"),
        "{decision:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait: {:?}",
        started.elapsed()
    );
    let bytes = std::fs::read(&file).unwrap();
    let checker = Arc::clone(&policies);
    let refused = bounded(
        Duration::from_secs(60),
        "checking a sleeping plugin",
        tokio::task::spawn_blocking(move || checker.check(&bytes, "sleepy")),
    )
    .await
    .unwrap();
    // `check` runs the self-test even though this slot skips it for loads.
    let error = refused
        .expect_err("a sleeping plugin fails its self-test")
        .to_string();
    assert!(error.contains("policies may not block"), "{error}");
    proxy.shutdown().await;
}

/// Policies whose resumer slot has a generous deadline (see [`several_candidates`] for why) and
/// a breaker that trips after `failure_threshold` failures.
async fn resumer_policies(failure_threshold: u32) -> Arc<Policies> {
    let mut config = plugins_config();
    config.resumer.deadline = Some(Duration::from_secs(1));
    config.resumer.failure_threshold = Some(failure_threshold);
    tokio::task::spawn_blocking(move || Policies::new(&config))
        .await
        .expect("load task")
        .expect("policies start")
}

/// Asks `policies`' resumer about one broken stream of `method`.
fn resume(
    policies: &Policies,
    method: &str,
    requests: &[bytes::Bytes],
    last_response: Option<&bytes::Bytes>,
) -> sluice_contract::resume::ResumeAnswer {
    let monitor =
        sluice_contract::route::MonitorProfile::new("tx-indexer", TrafficClass::Realtime, false);
    let request = sluice_contract::resume::ResumeRequest {
        monitor: &monitor,
        method,
        requests,
        last_response,
        responses_delivered: 42,
        attempt: 1,
    };
    policies.resumer().resume(&request)
}

fn encoded(message: &impl prost::Message) -> bytes::Bytes {
    bytes::Bytes::from(message.encode_to_vec())
}

/// The one message of a `Replay` answer.
fn replayed(answer: sluice_contract::resume::ResumeAnswer) -> bytes::Bytes {
    match answer {
        sluice_contract::resume::ResumeAnswer::Replay(mut messages) if messages.len() == 1 => {
            messages.remove(0)
        }
        other => panic!("expected one message to replay, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumer_continues_a_subscription_after_the_last_event() {
    use prost::Message as _;
    use sluice_contract::resume::ResumeAnswer;

    let Some(built) = built_plugins() else { return };
    let policies = resumer_policies(3).await;
    let request = pb::SubscribeRequest {
        from_seq: 0,
        rate: 100.0,
        payload_bytes: 16,
        count: 0,
        topic: "t".to_owned(),
    };
    let request_bytes = encoded(&request);
    let event = encoded(&pb::Event {
        seq: 41,
        sent_at_ns: 1_700_000_000_000_000_000,
        payload: bytes::Bytes::from(vec![7; 16]),
        topic: "t".to_owned(),
    });

    // No plugin: the built-in replays the request unchanged.
    assert_eq!(
        resume(
            &policies,
            SUBSCRIBE,
            std::slice::from_ref(&request_bytes),
            Some(&event)
        ),
        ResumeAnswer::Unchanged
    );
    let slot = policies.slot(SlotKind::Resumer);
    assert_eq!(slot.fallbacks.load(Relaxed), 1);

    let loaded = load_plugin(
        &policies,
        built.join("feed-resumer.wasm"),
        Some(SlotKind::Resumer),
        false,
    )
    .await
    .expect("feed-resumer loads into the resumer slot");
    assert_eq!(loaded.slot, SlotKind::Resumer);
    assert_eq!(loaded.info.world, SlotKind::Resumer);
    assert_eq!(loaded.self_tested, 3);
    assert!(!loaded.info.uses_wasi);

    // After event 41 the subscription continues at 42; every other field is as it was.
    let rewritten = replayed(resume(
        &policies,
        SUBSCRIBE,
        std::slice::from_ref(&request_bytes),
        Some(&event),
    ));
    let resumed = pb::SubscribeRequest::decode(rewritten.clone()).expect("a SubscribeRequest");
    assert_eq!(
        resumed,
        pb::SubscribeRequest {
            from_seq: 42,
            ..request.clone()
        }
    );
    // Byte for byte: the new from_seq first (the original 0 was not encoded), then the rest.
    let mut expected = vec![0x08, 42];
    expected.extend_from_slice(&request_bytes);
    assert_eq!(rewritten.as_ref(), expected.as_slice());

    // A from_seq already set is replaced; a count asks for what is left of it (50 events from
    // seq 7, 35 delivered); unknown fields pass through untouched.
    let counted = pb::SubscribeRequest {
        from_seq: 7,
        count: 50,
        ..request.clone()
    };
    let mut with_unknown = counted.encode_to_vec();
    with_unknown.extend_from_slice(&[0x7a, 2, b'h', b'i']); // field 15, "hi"
    let rewritten = replayed(resume(
        &policies,
        SUBSCRIBE,
        &[bytes::Bytes::from(with_unknown.clone())],
        Some(&event),
    ));
    assert_eq!(&rewritten[..4], &[0x08, 42, 0x20, 15]);
    assert!(rewritten.ends_with(&[0x7a, 2, b'h', b'i']));
    assert_eq!(
        pb::SubscribeRequest::decode(rewritten).expect("a SubscribeRequest"),
        pb::SubscribeRequest {
            from_seq: 42,
            count: 15,
            ..counted.clone()
        }
    );
    // Every counted event delivered but the stream broke before its status: one more, not a
    // new subscription from scratch.
    let exhausted = encoded(&pb::SubscribeRequest {
        count: 10,
        ..counted
    });
    let rewritten = replayed(resume(&policies, SUBSCRIBE, &[exhausted], Some(&event)));
    let resumed = pb::SubscribeRequest::decode(rewritten).expect("a SubscribeRequest");
    assert_eq!((resumed.from_seq, resumed.count), (42, 1));

    // Broken before the first event: nothing to skip, the request is replayed as it was.
    let unchanged = replayed(resume(
        &policies,
        SUBSCRIBE,
        std::slice::from_ref(&request_bytes),
        None,
    ));
    assert_eq!(unchanged, request_bytes);

    // Another method: handed back as it is.
    let other = [bytes::Bytes::from_static(b"\x0a\x02hi")];
    let answer = resume(&policies, "/sluice.feed.v1.Feed/Echo", &other, Some(&event));
    assert_eq!(answer, ResumeAnswer::Replay(other.to_vec()));

    // Garbage in the request or the last response: a plugin error, counted as a failure.
    let plugin = slot.active().expect("loaded");
    let garbage = bytes::Bytes::from_static(b"not a protobuf message");
    for (requests, last, needle) in [
        (
            [garbage.clone()],
            Some(&event),
            "the request is not a sluice.feed.v1.SubscribeRequest",
        ),
        (
            [request_bytes.clone()],
            Some(&garbage),
            "the last response is not a sluice.feed.v1.Event",
        ),
    ] {
        match resume(&policies, SUBSCRIBE, &requests, last) {
            ResumeAnswer::Failed(reason) => {
                assert!(
                    reason.contains("feed-resumer@v1")
                        && reason.contains("error")
                        && reason.contains(needle),
                    "{reason}"
                );
            }
            other => panic!("garbage should fail the call, got {other:?}"),
        }
    }
    assert_eq!(plugin.stats.failures.load(Relaxed), 2);
    assert_eq!(plugin.stats.invalid.load(Relaxed), 2);
    assert_eq!(slot.failed_calls.load(Relaxed), 2);
    assert_eq!(plugin.stats.calls.load(Relaxed), 7);

    // A success resets the breaker's count; three failures in a row then disable the plugin,
    // and the built-in answers.
    replayed(resume(
        &policies,
        SUBSCRIBE,
        std::slice::from_ref(&request_bytes),
        Some(&event),
    ));
    for _ in 0..3 {
        let answer = resume(
            &policies,
            SUBSCRIBE,
            std::slice::from_ref(&garbage),
            Some(&event),
        );
        assert!(matches!(answer, ResumeAnswer::Failed(_)), "{answer:?}");
    }
    assert!(plugin.is_disabled());
    assert_eq!(
        resume(
            &policies,
            SUBSCRIBE,
            std::slice::from_ref(&request_bytes),
            Some(&event)
        ),
        ResumeAnswer::Unchanged
    );
    let disabled = policies
        .events()
        .since(0)
        .into_iter()
        .filter(|e| e.slot == SlotKind::Resumer && e.kind == EventKind::Disabled)
        .count();
    assert_eq!(disabled, 1, "the breaker's trip is a visible event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resumer_slot_takes_only_resumers() {
    let Some(built) = built_plugins() else { return };
    let policies = resumer_policies(5).await;
    let refused = |result, needles: &[&str]| {
        let error = refusal(result, needles);
        assert!(matches!(error, PolicyError::WrongWorld(_)), "{error:?}");
    };
    let router = load_plugin(
        &policies,
        built.join("router.wasm"),
        Some(SlotKind::Resumer),
        false,
    )
    .await;
    refused(
        router,
        &["targets the router world (exports `route`), not resumer"],
    );
    let nothing = load_plugin(
        &policies,
        built.join("test-no-export.wasm"),
        Some(SlotKind::Resumer),
        false,
    )
    .await;
    refused(
        nothing,
        &[
            "missing export `resume` required by the resumer world",
            "resume: func(request: resume-request) -> result<list<list<u8>>, string>",
        ],
    );
    let resumer_as_router = load_plugin(
        &policies,
        built.join("feed-resumer.wasm"),
        Some(SlotKind::Router),
        false,
    )
    .await;
    refused(
        resumer_as_router,
        &["targets the resumer world (exports `resume`), not router"],
    );
    assert!(policies.slot(SlotKind::Resumer).active().is_none());
    assert!(policies.slot(SlotKind::Router).active().is_none());
    let refusals: Vec<SlotKind> = policies
        .events()
        .since(0)
        .into_iter()
        .filter(|e| e.kind == EventKind::LoadFailed)
        .map(|e| e.slot)
        .collect();
    assert_eq!(
        refusals,
        [SlotKind::Resumer, SlotKind::Resumer, SlotKind::Router]
    );

    // Without a slot named (the watched folder, `sluice plugin check`), the world picks it.
    let loaded = load_plugin(&policies, built.join("feed-resumer.wasm"), None, false)
        .await
        .expect("loads by its world");
    assert_eq!(loaded.slot, SlotKind::Resumer);
    let bytes = std::fs::read(built.join("feed-resumer.wasm")).unwrap();
    let checker = Arc::clone(&policies);
    let (info, samples) = tokio::task::spawn_blocking(move || checker.check(&bytes, "feed"))
        .await
        .unwrap()
        .expect("the feed resumer passes the check");
    assert_eq!(info.world, SlotKind::Resumer);
    assert_eq!(
        info.exports,
        ["resume", "classify", "mark", "pack", "unpack"]
    );
    assert_eq!(samples, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_resumer_is_compared_with_what_was_sent() {
    let Some(built) = built_plugins() else { return };
    let policies = resumer_policies(5).await;
    let file = built.join("feed-resumer.wasm");
    load_plugin(&policies, file.clone(), Some(SlotKind::Resumer), true)
        .await
        .expect("shadow loads");
    let request = encoded(&subscribe("t", 100.0, 16, 0));
    let event = encoded(&pb::Event {
        seq: 9,
        ..Default::default()
    });
    // No active plugin: the requests go unchanged, and the shadow (which rewrites) disagrees.
    assert_eq!(
        resume(
            &policies,
            SUBSCRIBE,
            std::slice::from_ref(&request),
            Some(&event)
        ),
        sluice_contract::resume::ResumeAnswer::Unchanged
    );
    let shadow = policies.slot(SlotKind::Resumer).shadow().expect("shadow");
    assert!(
        eventually(Duration::from_secs(10), || shadow
            .stats
            .shadow_compared
            .load(Relaxed)
            == 1)
        .await,
        "the shadow saw the resume"
    );
    assert_eq!(shadow.stats.shadow_agreed.load(Relaxed), 0);

    // The same plugin active: the shadow agrees.
    load_plugin(&policies, file, Some(SlotKind::Resumer), false)
        .await
        .expect("active loads");
    replayed(resume(
        &policies,
        SUBSCRIBE,
        std::slice::from_ref(&request),
        Some(&event),
    ));
    assert!(
        eventually(Duration::from_secs(10), || shadow
            .stats
            .shadow_compared
            .load(Relaxed)
            == 2)
        .await,
        "the shadow saw the second resume"
    );
    assert_eq!(shadow.stats.shadow_agreed.load(Relaxed), 1);
    assert_eq!(sluice_policy::slot::agreement(&shadow), "50.0% of 2");
}

#[test]
fn the_resume_self_test_samples_are_real_feed_messages() {
    use prost::Message as _;

    let samples = sluice_policy::world::resumer::sample_resume_requests();
    let first = &samples[0];
    assert_eq!(first.method, SUBSCRIBE);
    assert_eq!(first.requests[0].len(), 16);
    let request = pb::SubscribeRequest::decode(first.requests[0].as_slice()).unwrap();
    assert_eq!(
        request,
        pb::SubscribeRequest {
            from_seq: 7,
            rate: 100.0,
            payload_bytes: 16,
            count: 0,
            topic: "t".to_owned(),
        }
    );
    let event = pb::Event::decode(first.last_response.as_deref().unwrap()).unwrap();
    assert_eq!(event.seq, 41);
    assert_eq!(event.topic, "t");
    assert!(samples[1].last_response.is_none());
    for sample in &samples {
        sluice_policy::types::check_resume(&sample.requests, sample).expect("valid as they are");
    }
}

/// Asserts that a load was refused with a message mentioning every needle; returns the error.
fn refusal(result: Result<sluice_policy::Loaded, PolicyError>, needles: &[&str]) -> PolicyError {
    let error = result.expect_err("refused");
    let message = error.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    error
}

/// A scorer that records what reaches it and takes 20 us per row: a batch of 100,000 rows
/// would hold the router for 2 s.
#[derive(Default)]
struct RecordingScorer {
    calls: std::sync::atomic::AtomicU64,
    most_rows: std::sync::atomic::AtomicU64,
    budgets: parking_lot::Mutex<Vec<Duration>>,
}

impl sluice_policy::Scorer for RecordingScorer {
    fn score_within(
        &self,
        columns: u32,
        values: &[f32],
        budget: Duration,
    ) -> Result<Vec<f32>, String> {
        let rows = values.len() / columns.max(1) as usize;
        self.calls.fetch_add(1, Relaxed);
        self.most_rows.fetch_max(rows as u64, Relaxed);
        self.budgets.lock().push(budget);
        std::thread::sleep(Duration::from_micros(20) * rows as u32);
        Ok(vec![0.5; rows])
    }

    fn model(&self) -> String {
        "recording".to_owned()
    }
}

/// A Sluice routing through policies whose router plugins score with `scorer`.
async fn sluice_with_scorer(
    config: Config,
    scorer: Arc<RecordingScorer>,
) -> (sluice_proxy::ProxyHandle, Arc<Policies>) {
    config.validate().expect("test config is valid");
    let plugins = config.plugins.clone();
    let policies = tokio::task::spawn_blocking(move || {
        Policies::with_scorer(&plugins, scorer as Arc<dyn sluice_policy::Scorer>)
    })
    .await
    .unwrap()
    .expect("policies load");
    let proxy = sluice_proxy::Proxy::bind_with_policies(
        Arc::new(config),
        policies.router(),
        policies.resumer(),
    )
    .await
    .expect("sluice binds")
    .spawn();
    (proxy, policies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_flooding_the_scorer_is_refused_before_the_model_and_keeps_its_deadline() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;
    let mut config = several_candidates(&upstream);
    let deadline = Duration::from_millis(200);
    config.plugins.router.deadline = Some(deadline);
    let scorer = Arc::new(RecordingScorer::default());
    let (proxy, policies) = sluice_with_scorer(config, Arc::clone(&scorer)).await;
    warm(&proxy).await;
    let loaded = load_plugin(&policies, built.join("test-scorer-flood.wasm"), None, false)
        .await
        .expect("the flooding router passes its self-test: it falls back on the refusal");
    for _ in 0..5 {
        let decision = routed_stream(&proxy, &policies).await;
        assert!(!decision.fallback, "{decision:?}");
        assert_eq!(
            *decision.policy,
            format!("test-scorer-flood@v{}", loaded.info.version)
        );
        assert!(
            decision
                .reason
                .starts_with("scorer-flood: fallback: batch of 100000 rows refused: at most one row per candidate"),
            "the plugin's own fallback, with the host's reason: {}",
            decision.reason
        );
    }
    assert_eq!(
        scorer.calls.load(Relaxed),
        0,
        "the model never ran on the flood (self-test included)"
    );
    let plugin = policies.slot(SlotKind::Router).active().expect("active");
    assert_eq!(plugin.stats.calls.load(Relaxed), 5);
    assert_eq!(
        plugin.stats.timeouts.load(Relaxed),
        0,
        "every call ended within its {deadline:?} deadline"
    );
    assert_eq!(plugin.stats.failures.load(Relaxed), 0);
    assert!(!plugin.is_disabled());

    // A router that scores one row per candidate still reaches the model, with the time left
    // in its call as the budget.
    load_plugin(&policies, built.join("router.wasm"), None, false)
        .await
        .expect("the default router loads");
    let mut most_candidates = 0;
    for _ in 0..3 {
        let decision = routed_stream(&proxy, &policies).await;
        assert!(!decision.fallback, "{decision:?}");
        most_candidates = most_candidates.max(decision.candidates);
    }
    assert!(scorer.calls.load(Relaxed) >= 1, "the default router scored");
    let most_rows = scorer.most_rows.load(Relaxed);
    assert!(
        most_rows >= 1 && most_rows <= most_candidates.max(16) as u64,
        "{most_rows} rows for at most {most_candidates} candidates (16 in the self-test)"
    );
    let budgets = scorer.budgets.lock().clone();
    assert!(
        budgets.iter().all(|b| !b.is_zero() && *b <= deadline * 10),
        "budgets within the call's deadline (ten times it in the self-test): {budgets:?}"
    );
    proxy.shutdown().await;
}

/// Routes `streams` probe streams one after another through a router slot holding
/// `test-flaky` (self-test off: it fails every other call by design); returns the slot's
/// plugin and how many calls it had when its breaker disabled it, if it did.
async fn flaky_routes(
    built: &Path,
    upstream: &sluice_feed::FeedHandle,
    failure_rate: Option<f64>,
    streams: usize,
) -> (Arc<sluice_policy::Plugin>, Option<u64>, Arc<Policies>) {
    let mut config = several_candidates(upstream);
    config.plugins.router.self_test = Some(false);
    config.plugins.router.failure_rate = failure_rate;
    let (proxy, policies) = sluice_with_policies(config).await;
    warm(&proxy).await;
    load_plugin(&policies, built.join("test-flaky.wasm"), None, false)
        .await
        .expect("flaky loads without its self-test");
    let plugin = policies.slot(SlotKind::Router).active().expect("active");
    let mut disabled_at = None;
    for _ in 0..streams {
        let decision = routed_stream(&proxy, &policies).await;
        if disabled_at.is_some() {
            // Disabled: the built-in answers without asking the plugin.
            assert_eq!(&*decision.policy, "builtin", "{decision:?}");
        } else if plugin.is_disabled() {
            disabled_at = Some(plugin.stats.calls.load(Relaxed));
        }
    }
    proxy.shutdown().await;
    (plugin, disabled_at, policies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_every_other_call_is_disabled_by_its_failure_rate() {
    let Some(built) = built_plugins() else { return };
    let upstream = feed("up").await;

    // The consecutive-failure breaker alone (a rate of 1 is never exceeded): never a second
    // failure in a row, so the plugin is never disabled, however many calls fail.
    let (plugin, disabled_at, _) = flaky_routes(&built, &upstream, Some(1.0), 40).await;
    assert_eq!(disabled_at, None);
    assert!(!plugin.is_disabled());
    assert_eq!(plugin.stats.calls.load(Relaxed), 40);
    assert_eq!(
        plugin.stats.failures.load(Relaxed),
        20,
        "half of them failed"
    );

    // The default rate breaker: more than half of at least 20 calls in 10 s failed.
    let (plugin, disabled_at, policies) = flaky_routes(&built, &upstream, None, 30).await;
    assert!(plugin.is_disabled(), "disabled by the rate breaker");
    assert_eq!(
        disabled_at,
        Some(21),
        "at the first failure once 20 calls were made: 11 of 21"
    );
    assert_eq!(plugin.stats.calls.load(Relaxed), 21, "never called again");
    let disabled: Vec<_> = policies
        .events()
        .since(0)
        .into_iter()
        .filter(|e| e.kind == EventKind::Disabled)
        .collect();
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert!(
        disabled[0]
            .message
            .contains("11 of the last 21 calls failed (over 50% in 10s)"),
        "{}",
        disabled[0].message
    );
    let enabled = policies.enable(SlotKind::Router).expect("re-enable");
    assert_eq!(enabled.name, "test-flaky");
    assert!(
        !plugin.is_disabled(),
        "a fresh start: the window was cleared"
    );
}

/// `SLUICE_ORT_LIB`, or `None` (after saying why) when the test must skip.
fn onnx_runtime() -> Option<std::path::PathBuf> {
    match std::env::var_os("SLUICE_ORT_LIB") {
        Some(library) => Some(library.into()),
        None if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") => {
            panic!("SLUICE_ORT_LIB must be set (run `cargo xtask test`)")
        }
        None => {
            eprintln!("skipped: no SLUICE_ORT_LIB; run `cargo xtask test`");
            None
        }
    }
}

#[test]
fn the_onnx_scorer_keeps_to_the_budget_of_the_call_that_asks() {
    use sluice_policy::Scorer as _;

    let Some(library) = onnx_runtime() else {
        return;
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/models/router-v1.onnx");
    let scorer = sluice_scorer::OnnxScorer::open(&sluice_config::ScorerConfig {
        model: Some(model),
        library: Some(library),
        sessions: 1,
        // Far beyond any budget below: the caller's budget is what must bound each call.
        deadline: Duration::from_secs(60),
        ..sluice_config::ScorerConfig::default()
    });
    assert_eq!(scorer.unavailable(), None, "{:?}", scorer.status());
    let row = [0.5_f32; 18];
    assert_eq!(
        scorer
            .score_within(18, &row, Duration::from_secs(1))
            .unwrap()
            .len(),
        1
    );
    let refused = scorer.score_within(18, &row, Duration::ZERO).unwrap_err();
    assert!(refused.contains("no time left"), "{refused}");

    // A batch big enough to take a while unbounded, so the stop shows.
    let big = vec![0.5_f32; 18 * 400_000];
    let started = std::time::Instant::now();
    assert_eq!(
        scorer
            .score_within(18, &big, Duration::from_secs(60))
            .unwrap()
            .len(),
        400_000
    );
    let unbounded = started.elapsed();
    assert!(
        unbounded >= Duration::from_millis(40),
        "the batch took {unbounded:?}"
    );

    // Past its budget the run is stopped inside ONNX Runtime (which checks between operators,
    // so it ends with the operator running at the deadline), not judged late once it finished.
    let budget = Duration::from_millis(5);
    let stopped = scorer.score_within(18, &big, budget).unwrap_err();
    assert_eq!(stopped, "scoring stopped at its 5ms deadline");

    // The only session busy with a long run: a call with a short budget answers at once.
    let status_before = scorer.status().timeouts;
    let busy = Arc::clone(&scorer);
    let long_run = std::thread::spawn(move || busy.score_within(18, &big, Duration::from_secs(60)));
    let mut answered = None;
    let waited = std::time::Instant::now();
    while answered.is_none() && waited.elapsed() < Duration::from_secs(10) {
        let started = std::time::Instant::now();
        if let Err(error) = scorer.score_within(18, &row, budget)
            && error.contains("busy")
        {
            answered = Some(started.elapsed());
        }
    }
    let answered = answered.expect("a call found the session busy while the long run went on");
    assert!(answered < Duration::from_millis(500), "waited {answered:?}");
    assert_eq!(long_run.join().unwrap().unwrap().len(), 400_000);
    assert!(scorer.status().timeouts > status_before);
}

#[test]
fn breaker_rate_and_cache_size_settings_are_read_defaulted_and_checked() {
    let endpoint = "[[endpoints]]\nid = \"a\"\nurl = \"http://127.0.0.1:7000\"\n";
    let config = Config::from_toml(&format!(
        "{endpoint}[plugins]\ncache_max_bytes = 2097152\n[plugins.router]\n\
         failure_rate = 0.25\nfailure_window = \"30s\"\nfailure_min_calls = 8\n"
    ))
    .expect("valid");
    assert_eq!(config.plugins.cache_max_bytes, 2 * 1024 * 1024);
    let router = &config.plugins.router;
    assert_eq!(router.failure_rate_to_disable(), 0.25);
    assert_eq!(router.failure_rate_window(), Duration::from_secs(30));
    assert_eq!(router.failure_rate_min_calls(), 8);
    let defaults = &config.plugins.scaler;
    assert_eq!(defaults.failure_rate_to_disable(), 0.5);
    assert_eq!(defaults.failure_rate_window(), Duration::from_secs(10));
    assert_eq!(defaults.failure_rate_min_calls(), 20);
    assert_eq!(
        Config::from_toml(endpoint).unwrap().plugins.cache_max_bytes,
        512 * 1024 * 1024
    );
    for (table, key, value) in [
        ("plugins.router", "failure_rate", "0"),
        ("plugins.router", "failure_rate", "1.5"),
        ("plugins.scaler", "failure_window", "\"10ms\""),
        ("plugins.anomaly", "failure_min_calls", "0"),
        ("plugins", "cache_max_bytes", "1000"),
    ] {
        let error = Config::from_toml(&format!("{endpoint}[{table}]\n{key} = {value}\n"))
            .expect_err("refused")
            .to_string();
        assert!(error.contains(&format!("{table}.{key}")), "{error}");
    }
}
