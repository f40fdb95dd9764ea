//! The scaler and analytics loops against a real pool: a load ramp scales a group up and the
//! quiet after it scales it down without breaking a stream; an injected latency spike becomes an
//! anomaly insight; a killed and restarted host keeps its history; a broken scaler plugin falls
//! back to the built-in plan.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sluice_analytics::Analytics;
use sluice_analytics::records::{InsightKind, unix_ms_now};
use sluice_analytics::sampler;
use sluice_config::{Config, MethodConfig, ResumeMode, TrafficClass};
use sluice_tests::fault::{Fault, FaultProxy};
use sluice_tests::pb::EchoRequest;
use sluice_tests::plugins::{built_plugins, plugins_config, sluice_with_policies};
use sluice_tests::process::SluiceProcess;
use sluice_tests::*;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(60);

/// A config whose history lives in `dir` and whose loops run fast.
fn fast_loops(config: &mut Config, dir: &std::path::Path, period: Duration) {
    config.store.path = dir.join("sluice.db");
    config.scaling.period = period;
    config.analytics.period = period;
}

/// Follows a Subscribe stream until `stop`, checking every sequence number arrives once and in
/// order. Returns the messages read, or what went wrong.
fn follow(
    mut stream: tonic::Streaming<pb::Event>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let mut expected = 0;
        while !stop.load(Relaxed) {
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Ok(Some(event))) if event.seq == expected => expected += 1,
                Ok(Ok(Some(event))) => {
                    return Err(format!("expected seq {expected}, got {}", event.seq));
                }
                Ok(Ok(None)) => return Err(format!("stream ended at seq {expected}")),
                Ok(Err(status)) => {
                    return Err(format!("stream failed at seq {expected}: {status}"));
                }
                Err(_) => return Err(format!("no message for 5 s after seq {expected}")),
            }
        }
        Ok(expected)
    })
}

#[tokio::test]
async fn a_load_ramp_scales_up_within_two_periods_and_down_after_the_cooldown_without_breaking_streams()
 {
    let Some(dir) = built_plugins() else { return };
    let feed = feed("a").await;
    let store = tempfile::tempdir().unwrap();
    let period = Duration::from_millis(500);
    let mut config = config_for(&[&feed]);
    fast_loops(&mut config, store.path(), period);
    config.analytics.enabled = false;
    config.scaling.up_cooldown = Duration::ZERO;
    config.scaling.down_cooldown = Duration::from_millis(1500);
    config.pool.max_connections = 10;
    let realtime = &mut config.classes.realtime;
    realtime.max_streams_per_connection = 8;
    realtime.min_connections = 1;
    realtime.max_connections = Some(6);
    config.monitors = vec![monitor("rt", TrafficClass::Realtime)];
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }];
    config.plugins = plugins_config();
    config.plugins.resumer.file = Some(dir.join("feed-resumer.wasm"));
    config.plugins.scaler.file = Some(dir.join("scaler.wasm"));
    for (key, value) in [
        ("scale_up_cooldown_ms", "0"),
        ("scale_down_cooldown_ms", "1500"),
        ("predict", "off"),
    ] {
        config
            .plugins
            .scaler
            .config
            .insert(key.into(), value.into());
    }
    let config = Arc::new(config);
    let (proxy, policies) = sluice_with_policies((*config).clone()).await;
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), policies).unwrap();
    let loops = analytics.spawn();

    // Watch the caps the whole time.
    let view = proxy.view();
    let watching = Arc::new(AtomicBool::new(true));
    let caps = {
        let watching = Arc::clone(&watching);
        tokio::spawn(async move {
            let (mut most_live, mut most_open) = (0, 0);
            while watching.load(Relaxed) {
                let group = view.group_loads(Duration::from_secs(1))
                    [TrafficClass::Realtime.index()]
                .clone();
                most_live = most_live.max(group.connections);
                most_open = most_open.max(view.snapshot().connections);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (most_live, most_open)
        })
    };

    // The ramp: four steps of one connection's worth of streams each. One stream of each step
    // lives through the ramp and the scale-down; so the kept streams sit on different
    // connections, and shrinking to one connection must move them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut kept = Vec::new();
    let mut extra = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ramp_started = unix_ms_now();
    for step in 0..4 {
        let mut c = client(proxy.addr()).await;
        let stream =
            subscribe_on(&mut c, subscribe(&format!("kept{step}"), 50.0, 16, 0), "rt").await;
        kept.push(follow(stream, Arc::clone(&stop)));
        for i in 0..7 {
            let mut client = client(proxy.addr()).await;
            let stream = subscribe_on(
                &mut client,
                subscribe(&format!("ramp{step}-{i}"), 20.0, 16, 0),
                "rt",
            )
            .await;
            extra.push((client, stream));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ramp_ended = unix_ms_now();
    let grew = eventually(Duration::from_secs(20), || {
        analytics
            .scaling(16)
            .iter()
            .any(|r| r.class == "realtime" && r.applied > 0)
    })
    .await;
    let records = analytics.scaling(16);
    assert!(grew, "no scale-up after the ramp: {records:#?}");
    let up = records.iter().rev().find(|r| r.applied > 0).unwrap();
    let two_periods = 2 * period.as_millis() as i64;
    assert!(
        up.ts_ms <= ramp_ended + two_periods,
        "scaled up {} ms after the ramp ended (ramp took {} ms; two periods are {two_periods} ms): {up:#?}",
        up.ts_ms - ramp_ended,
        ramp_ended - ramp_started
    );
    assert!(up.reason.contains("realtime"), "{}", up.reason);
    assert_eq!(up.metrics["connections"], serde_json::json!(up.from));

    // Quiet: the ramp's streams end; the group shrinks one connection per cooldown (the 4 kept
    // streams fill under 30% of two connections, the default plugin's scale-down threshold)
    // down to its minimum of one, while the kept streams move off the drained connections.
    let shrink_started = Instant::now();
    drop(extra);
    let shrank = eventually(Duration::from_secs(30), || {
        let group =
            &proxy.view().group_loads(Duration::from_secs(1))[TrafficClass::Realtime.index()];
        group.connections <= 1 && group.held <= 1
    })
    .await;
    let records = analytics.scaling(64);
    assert!(shrank, "the group did not shrink: {records:#?}");
    let downs: Vec<_> = records.iter().filter(|r| r.applied < 0).collect();
    assert!(downs.len() >= 2, "{records:#?}");
    // Scale-downs are at least the cooldown apart.
    let mut times: Vec<i64> = downs.iter().map(|r| r.ts_ms).collect();
    times.sort_unstable();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 1400,
            "scale-downs {} ms apart",
            pair[1] - pair[0]
        );
    }
    assert!(shrink_started.elapsed() >= Duration::from_millis(1400));

    // Let the kept streams run on the remaining connection, then check they never broke.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    for reader in kept {
        let read = bounded(LIMIT, "kept stream", reader).await.unwrap();
        assert!(read.is_ok(), "a kept stream broke during scaling: {read:?}");
    }
    assert!(
        proxy.snapshot().stats.migrations_total > 0,
        "the drained connections carried kept streams"
    );
    watching.store(false, Relaxed);
    let (most_live, most_open) = caps.await.unwrap();
    assert!(
        most_live <= 6,
        "realtime held {most_live} connections, over its max of 6"
    );
    assert!(
        most_open <= 10,
        "{most_open} connections open, over the global cap of 10"
    );
    // Everything is in the store too. The loops stop first: the scaler keeps running while the
    // kept streams finish, and a record it adds meanwhile must be counted on both sides.
    loops.shutdown().await;
    let records = analytics.scaling(64);
    let stored = analytics.store().scaling(0, 100).unwrap();
    assert_eq!(stored.len(), records.len(), "{records:#?}");
}

#[tokio::test]
async fn an_injected_latency_spike_becomes_an_anomaly_insight_within_two_periods() {
    let feed = feed("a").await;
    let fault = FaultProxy::start(feed.addr).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let period = Duration::from_secs(1);
    let mut config = config_with_endpoint("a", &format!("http://{}", fault.addr()));
    fast_loops(&mut config, store.path(), period);
    config.scaling.enabled = false;
    config.analytics.window_samples = 30;
    let config = Arc::new(config);
    let (proxy, policies) = sluice_with_policies((*config).clone()).await;
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), policies).unwrap();
    let loops = analytics.spawn();

    // Steady unary calls: each is a new stream with a time to response headers.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
        let mut c = client(proxy.addr()).await;
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let request = as_monitor(
                    EchoRequest {
                        payload: vec![1; 16].into(),
                        ..Default::default()
                    },
                    "m",
                );
                if c.echo(request).await.is_ok() {
                    calls.fetch_add(1, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Warm-up: the detector needs 10 samples of history (one a second).
    let warmed = eventually(Duration::from_secs(40), || {
        analytics.history().window(sampler::LATENCY, 100).len() >= 15
    })
    .await;
    assert!(warmed, "no latency samples");
    let spike = unix_ms_now();
    fault.set(Fault::Latency(Duration::from_millis(150)));
    let latency_metrics = [sampler::LATENCY, sampler::LATENCY_P99];
    let found = eventually(Duration::from_secs(15), || {
        analytics.insights(64).iter().any(|i| {
            i.kind == InsightKind::Anomaly
                && i.last_seen_ms >= spike
                && i.metric
                    .as_deref()
                    .is_some_and(|m| latency_metrics.contains(&m))
        })
    })
    .await;
    stop.store(true, Relaxed);
    let _ = load.await;
    let insights = analytics.insights(64);
    assert!(found, "no latency anomaly after the spike: {insights:#?}");
    let first = insights
        .iter()
        .filter(|i| {
            i.kind == InsightKind::Anomaly
                && i.last_seen_ms >= spike
                && i.metric
                    .as_deref()
                    .is_some_and(|m| latency_metrics.contains(&m))
        })
        .map(|i| {
            if i.ts_ms >= spike {
                i.ts_ms
            } else {
                i.last_seen_ms
            }
        })
        .min()
        .unwrap();
    // The spike shows in the next 1 s sample; the analytics loop sees it within two periods.
    let allowed = 2 * period.as_millis() as i64 + 1000;
    assert!(
        first - spike <= allowed,
        "the anomaly came {} ms after the spike (allowed {allowed} ms)",
        first - spike
    );
    assert!(calls.load(Relaxed) > 100);
    loops.shutdown().await;
}

#[tokio::test]
async fn killing_and_restarting_the_host_keeps_insights_scaling_history_and_rollups() {
    let Some(dir) = built_plugins() else { return };
    let feed = feed("a").await;
    let store = tempfile::tempdir().unwrap();
    let config_file = store.path().join("sluice.toml");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
path = "{db}"

[scaling]
period = "200ms"
up_cooldown = "0s"

[analytics]
period = "200ms"
# Any pool of two or more connections counts as under-multiplexed: an insight at once.
low_multiplexing = 1000

[classes.realtime]
min_connections = 2
max_streams_per_connection = 2

[plugins]
cache_dir = "{cache}"

[plugins.scaler]
file = "{scaler}"

[plugins.scaler.config]
scale_up_cooldown_ms = "0"
predict = "off"

[[endpoints]]
id = "a"
url = "http://{feed}"

[[monitors]]
id = "rt"
class = "realtime"
"#,
        db = store.path().join("sluice.db").display(),
        cache = sluice_tests::plugins::shared_cache().display(),
        scaler = dir.join("scaler.wasm").display(),
        feed = feed.addr,
    );
    std::fs::write(&config_file, toml).unwrap();
    let host = SluiceProcess::start(&config_file);
    let admin: std::net::SocketAddr = host.admin.trim_start_matches("http://").parse().unwrap();

    // Fill the realtime group so that the scaler grows it.
    let mut c = client(host.addr).await;
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(subscribe_on(&mut c, subscribe(&format!("t{i}"), 20.0, 8, 0), "rt").await);
    }
    let get = |path: &'static str| async move {
        admin::request(admin, "GET", path, None, Vec::new()).await
    };
    let mut scaled = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !scaled {
        scaled = get("/api/v1/scaling").await.json["scaling"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["applied"].as_i64() > Some(0)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scaled, "no scale-up recorded");
    // The analytics loop runs on its own period: the insight may follow the scale-up.
    let has_insight = |insights: &serde_json::Value| {
        insights["insights"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["title"] == "Low multiplexing"))
    };
    let mut insights = get("/api/v1/insights").await.json;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !has_insight(&insights) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        insights = get("/api/v1/insights").await.json;
    }
    assert!(has_insight(&insights), "{insights:#}");
    // The minute so far is written every 10 samples (one a second).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = get("/api/v1/scaling?since=0").await.json["scaling"]
        .as_array()
        .unwrap()
        .len();
    drop(streams);
    host.kill();

    let host = SluiceProcess::start(&config_file);
    let admin: std::net::SocketAddr = host.admin.trim_start_matches("http://").parse().unwrap();
    let get = |path: &'static str| async move {
        admin::request(admin, "GET", path, None, Vec::new()).await
    };
    let scaling = get("/api/v1/scaling?since=0").await.json;
    let kept = scaling["scaling"].as_array().unwrap();
    assert!(kept.len() >= before && before > 0, "{scaling:#}");
    assert!(kept.iter().any(|r| r["applied"].as_i64() > Some(0)));
    let insights = get("/api/v1/insights?since=0").await.json;
    assert!(
        insights["insights"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["title"] == "Low multiplexing"),
        "{insights:#}"
    );
    let rollups = get("/api/v1/metrics/pool.connections?resolution=minute").await;
    assert_eq!(rollups.status, 200, "{}", rollups.text);
    let points = rollups.json["points"].as_array().unwrap();
    assert!(
        !points.is_empty(),
        "no minute rollups after the restart: {}",
        rollups.text
    );
    assert!(
        points.iter().any(|p| p["value"].as_f64() >= Some(2.0)),
        "{}",
        rollups.text
    );
    host.kill();
}

#[tokio::test]
async fn a_broken_scaler_plugin_falls_back_to_the_builtin_plan_and_is_visible() {
    let Some(dir) = built_plugins() else { return };
    let feed = feed("a").await;
    for mode in ["invalid", "trap", "loop"] {
        let store = tempfile::tempdir().unwrap();
        let mut config = config_for(&[&feed]);
        fast_loops(&mut config, store.path(), Duration::from_secs(3600));
        config.plugins = plugins_config();
        config.plugins.scaler.file = Some(dir.join("test-bad-scaler.wasm"));
        config
            .plugins
            .scaler
            .config
            .insert("mode".into(), mode.into());
        // Loading would refuse it otherwise: the self-test runs the plugin on sample input.
        config.plugins.scaler.self_test = Some(false);
        config.plugins.scaler.deadline = Some(Duration::from_millis(20));
        config.classes.event.min_connections = 3;
        let config = Arc::new(config);
        let (proxy, policies) = sluice_with_policies((*config).clone()).await;
        let analytics =
            Analytics::open(Arc::clone(&config), proxy.view(), Arc::clone(&policies)).unwrap();
        let warmed = eventually(Duration::from_secs(10), || {
            proxy.view().group_loads(Duration::from_secs(1))[TrafficClass::Event.index()]
                .connections
                == 3
        })
        .await;
        assert!(warmed, "{mode}: the minimum connections did not open");
        // Nothing is recorded: the built-in plan holds (its cooldown runs from start), and the
        // plugin's failure is counted.
        let records = bounded(LIMIT, "scaler run", analytics.scale_once()).await;
        assert!(records.is_empty(), "{mode}: {records:#?}");
        let plugin = policies
            .slot(sluice_config::SlotKind::Scaler)
            .active()
            .expect("loaded");
        let failures = plugin.stats.failures.load(Relaxed);
        assert!(failures >= 1, "{mode}: the failure was not counted");
        let plan = analytics.last_plan().expect("a plan was asked for");
        assert!(
            plan.reasoning.starts_with("built-in thresholds")
                && plan.reasoning.contains("[fallback: test-bad-scaler"),
            "{mode}: {plan:?}"
        );
        assert_eq!(
            proxy.view().group_loads(Duration::from_secs(1))[TrafficClass::Event.index()]
                .connections,
            3,
            "{mode}: the group changed"
        );
    }
}

#[tokio::test]
async fn threshold_rules_flag_an_exhausted_pool_idle_connections_and_a_dominant_monitor() {
    let feed = feed("a").await;
    let store = tempfile::tempdir().unwrap();
    let mut config = config_for(&[&feed]);
    fast_loops(&mut config, store.path(), Duration::from_secs(3600));
    // Four connections held at start: the whole global cap.
    config.pool.max_connections = 4;
    config.classes.event.min_connections = 3;
    config.classes.event.max_connections = Some(3);
    config.classes.realtime.min_connections = 1;
    config.classes.realtime.max_connections = Some(1);
    config.classes.realtime.max_streams_per_connection = 100;
    config.monitors = ["big", "small1", "small2"]
        .map(|id| monitor(id, TrafficClass::Realtime))
        .to_vec();
    let config = Arc::new(config);
    let (proxy, policies) = sluice_with_policies((*config).clone()).await;
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), policies).unwrap();
    let warmed = eventually(Duration::from_secs(10), || {
        proxy.snapshot().connections == 4
    })
    .await;
    assert!(warmed);
    // "big" holds 10 of 12 open calls.
    let mut c = client(proxy.addr()).await;
    let mut streams = Vec::new();
    for (monitor, n) in [("big", 10), ("small1", 1), ("small2", 1)] {
        for i in 0..n {
            streams.push(
                subscribe_on(
                    &mut c,
                    subscribe(&format!("{monitor}{i}"), 5.0, 8, 0),
                    monitor,
                )
                .await,
            );
        }
    }
    for _ in 0..3 {
        analytics.sample_once().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = analytics.analyze_once().await;
    let find = |title: &str| found.iter().find(|i| i.title == title).cloned();
    let exhausted = find("Connection pool near exhaustion").unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(
        exhausted.severity,
        sluice_analytics::records::Severity::Critical
    );
    assert_eq!(exhausted.value, 1.0);
    let idle = find("Many idle connections").unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(idle.kind, InsightKind::Recommendation);
    assert!(
        idle.value >= 0.7,
        "3 of 4 connections carry nothing: {idle:?}"
    );
    let dominant = find("Monitor big holds 83% of streams").unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(dominant.kind, InsightKind::Recommendation);
    // Seen again within `repeat_after`: the same insight, counted, not a new one.
    analytics.sample_once().await;
    let again = analytics.analyze_once().await;
    let repeated = again
        .iter()
        .find(|i| i.id == exhausted.id)
        .expect("seen again");
    assert_eq!(repeated.occurrences, 2);
    assert_eq!(
        analytics.store().insights(0, 100).unwrap().len(),
        found.len()
    );
    drop(streams);
}
