//! The ONNX scorer: real ONNX Runtime (`libonnxruntime` from the `onnxruntime` wheel, found
//! through `SLUICE_ORT_LIB`), real models written by `tests/python/scorer_model.py` with
//! `onnx.helper`, golden scores from the Python `onnxruntime` package, and the default router
//! plugin calling the scorer on the data path.
//!
//! ONNX Runtime is loaded once per process, so the missing-library case runs `sluice run` as a
//! child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{ScorerConfig, SlotKind};
use sluice_policy::{Policies, Scorer};
use sluice_scorer::{OnnxScorer, ScorerError};
use sluice_tests::plugins::{built_plugins, plugins_config};
use sluice_tests::*;

/// `SLUICE_PYTHON` (with onnx, numpy and onnxruntime) and `SLUICE_ORT_LIB`, or `None` to skip.
fn environment() -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("SLUICE_PYTHON").map(PathBuf::from);
    let library = std::env::var_os("SLUICE_ORT_LIB").map(PathBuf::from);
    match (python, library) {
        (Some(python), Some(library)) => Some((python, library)),
        _ if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") => {
            panic!("SLUICE_PYTHON and SLUICE_ORT_LIB must be set (run `cargo xtask test`)")
        }
        _ => {
            eprintln!("skipped: no SLUICE_PYTHON / SLUICE_ORT_LIB; run `cargo xtask test`");
            None
        }
    }
}

/// Columns of the default router plugin's feature vector (v1).
const ROUTER_FEATURES: u32 = 18;

/// Writes a model with `scorer_model.py`; returns the golden JSON when asked for.
fn make_model(
    python: &Path,
    out: &Path,
    features: u32,
    outputs: u32,
    seed: u32,
    golden: bool,
) -> Option<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/scorer_model.py");
    let golden_path = out.with_extension("golden.json");
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(out)
        .args(["--features", &features.to_string()])
        .args(["--outputs", &outputs.to_string()])
        .args(["--seed", &seed.to_string()]);
    if golden {
        command.arg("--golden").arg(&golden_path);
    }
    let output = command.output().expect("python runs");
    assert!(
        output.status.success(),
        "scorer_model.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    golden.then(|| {
        serde_json::from_slice(&std::fs::read(&golden_path).expect("golden file"))
            .expect("golden JSON")
    })
}

fn config(model: &Path, library: &Path) -> ScorerConfig {
    ScorerConfig {
        model: Some(model.to_owned()),
        library: Some(library.to_owned()),
        reload_interval: Duration::from_millis(50),
        deadline: SCORING_DEADLINE,
        ..ScorerConfig::default()
    }
}

/// The scorer's deadline, and the router plugin's around it. Generous: debug builds on a busy
/// machine (the abuse test's attacks run beside these tests); the bench measures the real
/// latency. With the router's 1 ms default, a loaded machine makes every call late, the router
/// slot's breaker falls back to the built-in policy, and nothing is scored.
const SCORING_DEADLINE: Duration = Duration::from_millis(250);

/// The plugins with the shipped router (`router.wasm` from `built`), which asks the scorer
/// whenever it has two candidates, given [`SCORING_DEADLINE`] per call.
fn shipped_router(built: &Path) -> sluice_config::PluginsConfig {
    let mut plugins = plugins_config();
    plugins.router.file = Some(built.join("router.wasm"));
    plugins.router.deadline = Some(SCORING_DEADLINE);
    plugins
}

/// Replaces `path` with `bytes` at once (write then rename), so a reload never reads half a file.
fn replace(path: &Path, bytes: &[u8]) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, bytes).expect("write");
    std::fs::rename(&staging, path).expect("rename");
}

/// Sluice routing through the policy slots with `scorer`, once `connections` are open.
async fn routed_with(
    scorer: &Arc<OnnxScorer>,
    plugins: sluice_config::PluginsConfig,
    config: sluice_config::Config,
    connections: usize,
) -> (sluice_proxy::ProxyHandle, Arc<Policies>) {
    let for_plugins: Arc<dyn Scorer> = Arc::clone(scorer) as Arc<dyn Scorer>;
    let policies =
        tokio::task::spawn_blocking(move || Policies::with_scorer(&plugins, for_plugins))
            .await
            .unwrap()
            .unwrap();
    let proxy = sluice_proxy::Proxy::bind_with_policies(
        Arc::new(config),
        policies.router(),
        policies.resumer(),
    )
    .await
    .unwrap()
    .spawn();
    assert!(
        eventually(Duration::from_secs(10), || proxy.snapshot().connections
            == connections)
        .await
    );
    (proxy, policies)
}

#[test]
fn scores_agree_with_onnxruntime_in_python_on_golden_inputs() {
    let Some((python, library)) = environment() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mlp.onnx");
    let golden = make_model(&python, &model, 20, 1, 1, true).expect("golden");
    let scorer = OnnxScorer::open(&config(&model, &library));
    assert_eq!(scorer.unavailable(), None, "{:?}", scorer.status());
    let values: Vec<f32> = serde_json::from_value(golden["values"].clone()).unwrap();
    let expected: Vec<f32> = serde_json::from_value(golden["scores"].clone()).unwrap();
    let scores = scorer.score(20, &values).expect("scored");
    assert_eq!(scores.len(), expected.len());
    assert_eq!(expected.len(), 16);
    for (row, (got, want)) in scores.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() < 1e-5,
            "row {row}: Rust/ORT {got} vs Python {want}"
        );
    }
    // One row at a time gives the same as in a batch.
    let single = scorer.score(20, &values[..20]).expect("one row");
    assert!((single[0] - expected[0]).abs() < 1e-5);
    let status = scorer.status();
    let info = status.model.expect("a model");
    assert_eq!(info.name, "mlp");
    assert_eq!(info.features, 20);
    assert_eq!(info.version.len(), 12);
    assert_eq!(scorer.model(), format!("mlp@{}", info.version));
    assert_eq!(status.calls, 2);
    assert_eq!(status.failures, 0);
    // A batch of the wrong width is refused and counted.
    let refused = scorer.score(5, &values[..10]).expect_err("wrong width");
    assert!(refused.contains("rows of 20 features"), "{refused}");
    assert_eq!(scorer.status().failures, 1);
}

#[test]
fn a_broken_or_misshapen_model_is_refused_and_the_previous_one_keeps_answering() {
    let Some((python, library)) = environment() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("router.onnx");
    make_model(&python, &model, 5, 1, 7, false);
    let scorer = OnnxScorer::open(&config(&model, &library));
    let before = scorer.status().model.expect("loaded");
    let row = [0.5f32, 3.0, 0.0, 0.0, 1.0];
    let first = scorer.score(5, &row).expect("scored");

    // Garbage bytes: refused with the reason; the loaded model still answers.
    replace(&model, b"definitely not protobuf");
    let error = scorer.reload().expect_err("garbage refused");
    assert!(matches!(error, ScorerError::Model { .. }), "{error}");
    assert!(
        error.to_string().contains("not a usable ONNX model"),
        "{error}"
    );
    assert_eq!(scorer.score(5, &row).expect("old model"), first);
    let status = scorer.status();
    assert_eq!(status.model.as_ref(), Some(&before));
    assert!(
        status
            .last_error
            .unwrap()
            .contains("not a usable ONNX model")
    );

    // A valid model of the wrong shape (three outputs per row): refused before the swap.
    let other = dir.path().join("three.onnx");
    make_model(&python, &other, 5, 3, 7, false);
    replace(&model, &std::fs::read(&other).unwrap());
    let error = scorer.reload().expect_err("wrong shape refused");
    assert!(matches!(error, ScorerError::Shape { .. }), "{error}");
    assert!(error.to_string().contains("float32 [rows, 1]"), "{error}");
    assert_eq!(scorer.score(5, &row).expect("old model"), first);

    // A good new model replaces it, and its error is cleared.
    let good = dir.path().join("good.onnx");
    make_model(&python, &good, 5, 1, 8, false);
    replace(&model, &std::fs::read(&good).unwrap());
    let after = scorer.reload().expect("new model loads");
    assert_ne!(after.version, before.version);
    assert_ne!(scorer.score(5, &row).expect("new model"), first);
    assert!(scorer.status().last_error.is_none());
    assert_eq!(scorer.status().loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_model_falls_back_to_the_built_in_router_and_says_why_until_fixed() {
    let Some((python, library)) = environment() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("router.onnx");
    std::fs::write(&model, b"corrupt").unwrap();
    let scorer = OnnxScorer::open(&config(&model, &library));
    let why = scorer.unavailable().expect("unavailable");
    assert!(why.contains("not a usable ONNX model"), "{why}");

    let feed = feed("up").await;
    let plugins = plugins_config();
    // A connection open from the start, so that placing the stream asks the router.
    let mut config = config_for(&[&feed]);
    config.classes.event.min_connections = 1;
    let (proxy, policies) = routed_with(&scorer, plugins, config, 1).await;
    let mut client = client(proxy.addr()).await;
    let mut stream = client
        .subscribe(as_monitor(subscribe("a", 100.0, 8, 3), "m"))
        .await
        .expect("the built-in router places the stream")
        .into_inner();
    let mut seen = 0;
    while let Some(event) = stream.message().await.unwrap() {
        assert_eq!(event.seq, seen);
        seen += 1;
    }
    assert_eq!(seen, 3);
    let decision = policies.router().recent(1).pop().expect("a decision");
    assert!(decision.fallback);
    assert!(
        decision.reason.contains("scorer unavailable")
            && decision.reason.contains("not a usable ONNX model"),
        "{}",
        decision.reason
    );
    let shown = policies.scorer().status();
    assert!(
        shown["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a usable ONNX model")),
        "{shown}"
    );

    // A good file appears: the watcher picks it up and the model answers again.
    let watch = scorer.watch();
    let good = dir.path().join("good.onnx");
    make_model(&python, &good, 5, 1, 3, false);
    replace(&model, &std::fs::read(&good).unwrap());
    assert!(eventually(Duration::from_secs(10), || scorer.unavailable().is_none()).await);
    watch.abort();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reloading_the_model_under_flowing_streams_loses_nothing() {
    let Some((python, library)) = environment() else {
        return;
    };
    let Some(built) = built_plugins() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("router.onnx");
    make_model(&python, &model, ROUTER_FEATURES, 1, 11, false);
    let scorer = OnnxScorer::open(&config(&model, &library));
    let first = scorer.status().model.expect("loaded");
    let watch = scorer.watch();

    let plugins = shipped_router(&built);
    let feeds = [feed("a").await, feed("b").await];
    let mut config = config_for(&[&feeds[0], &feeds[1]]);
    config.classes.event.min_connections = 2;
    let (proxy, policies) = routed_with(&scorer, plugins, config, 2).await;
    assert!(policies.slot(SlotKind::Router).active().is_some());

    let mut client = client(proxy.addr()).await;
    let mut readers = Vec::new();
    let mut open = |n: usize, client: &mut sluice_feed::pb::feed_client::FeedClient<_>| {
        let request = as_monitor(subscribe(&format!("t{n}"), 200.0, 16, 400), "m");
        let mut client = client.clone();
        readers.push(tokio::spawn(async move {
            let mut stream = client.subscribe(request).await?.into_inner();
            let mut next = 0u64;
            while let Some(event) = stream.message().await? {
                assert_eq!(event.seq, next, "a gap in stream t{n}");
                next += 1;
            }
            Ok::<u64, tonic::Status>(next)
        }));
    };
    for n in 0..10 {
        open(n, &mut client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_before = scorer.status().calls;
    assert!(calls_before > 0, "the router plugin never asked the scorer");

    // Swap the model while the streams flow, and keep opening streams through the swap.
    let next = dir.path().join("next.onnx");
    make_model(&python, &next, ROUTER_FEATURES, 1, 12, false);
    replace(&model, &std::fs::read(&next).unwrap());
    for n in 10..20 {
        open(n, &mut client);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || scorer
            .status()
            .model
            .is_some_and(|m| m.version != first.version))
        .await,
        "the new model was not swapped in: {:?}",
        scorer.status()
    );
    for n in 20..30 {
        open(n, &mut client);
    }
    for reader in readers {
        let received = bounded(Duration::from_secs(30), "stream", reader)
            .await
            .expect("reader task")
            .expect("the stream ends cleanly");
        assert_eq!(received, 400, "every event of every stream");
    }
    let status = scorer.status();
    assert!(status.calls > calls_before);
    assert_eq!(status.failures, 0, "{status:?}");
    assert_eq!(status.loads, 2);
    watch.abort();
    proxy.shutdown().await;
}

#[test]
fn a_missing_runtime_library_is_a_clear_error_and_the_host_still_serves() {
    let Some((python, _library)) = environment() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("router.onnx");
    make_model(&python, &model, 5, 1, 1, false);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime.block_on(feed("up"));
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [store]\npath = \":memory:\"\n\n[scorer]\nmodel = \"{}\"\nlibrary = \"{}\"\n\n\
             [[endpoints]]\nid = \"up\"\nurl = \"http://{}\"\n",
            model.display(),
            dir.path().join("missing/libonnxruntime.so").display(),
            feed.addr
        ),
    )
    .unwrap();
    let sluice = sluice_tests::process::SluiceProcess::start(&config_path);
    let admin: std::net::SocketAddr = sluice
        .admin
        .trim_start_matches("http://")
        .parse()
        .expect("admin address");
    runtime.block_on(async {
        let status =
            sluice_tests::admin::request(admin, "GET", "/api/v1/scorer", None, Vec::new()).await;
        assert_eq!(status.status, 200);
        let error = status.json["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("ONNX Runtime unavailable") && error.contains("does not exist"),
            "{}",
            status.text
        );
        // Streams are still served, by the built-in router, which says why.
        let mut client = client(sluice.addr).await;
        let mut stream = client
            .subscribe(as_monitor(subscribe("a", 100.0, 8, 2), "m"))
            .await
            .expect("served")
            .into_inner();
        let mut seen = 0;
        while stream.message().await.unwrap().is_some() {
            seen += 1;
        }
        assert_eq!(seen, 2);
        let plugins =
            sluice_tests::admin::request(admin, "GET", "/api/v1/plugins", None, Vec::new()).await;
        assert_eq!(
            plugins.json["scorer"]["last_error"],
            status.json["last_error"]
        );
    });
    drop(sluice);
}

/// Opens `count` short Subscribe streams as monitor `m`, eight at a time, and reads each to its
/// end; returns how many ended cleanly.
async fn short_streams(addr: std::net::SocketAddr, tag: &str, count: usize) -> usize {
    let client = client(addr).await;
    let mut clean = 0;
    for batch in 0..count.div_ceil(8) {
        let mut readers = Vec::new();
        for n in batch * 8..((batch + 1) * 8).min(count) {
            let mut client = client.clone();
            let request = as_monitor(subscribe(&format!("{tag}{n}"), 200.0, 32, 4), "m");
            readers.push(tokio::spawn(async move {
                let mut stream = client.subscribe(request).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok::<(), tonic::Status>(())
            }));
        }
        for reader in readers {
            let ended = bounded(Duration::from_secs(10), "short stream", reader).await;
            clean += usize::from(matches!(ended, Ok(Ok(()))));
        }
    }
    clean
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_outcomes_train_a_model_that_runs_in_shadow_and_is_promoted() {
    let Some((python, library)) = environment() else {
        return;
    };
    let Some(built) = built_plugins() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The active model: an untrained network over the router's feature vector.
    let model = dir.path().join("router.onnx");
    make_model(&python, &model, ROUTER_FEATURES, 1, 5, false);
    let shadow = dir.path().join("candidate.onnx");
    let scorer = OnnxScorer::open(&ScorerConfig {
        shadow_model: Some(shadow.clone()),
        ..config(&model, &library)
    });
    let active = scorer.status().model.expect("the active model loads");
    assert!(
        scorer.status().shadow.is_some_and(|s| s.model.is_none()),
        "no shadow file yet"
    );

    // Two endpoints: one fast, one 30 ms slower to answer; the router explores both.
    let fast = feed("fast").await;
    let slow = feed_with(sluice_feed::FeedConfig {
        name: "slow".to_owned(),
        latency: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let mut config = config_for(&[&fast, &slow]);
    config.classes.event.min_connections = 2;
    config.learning.observe_for = Duration::from_secs(1);
    config.learning.max_records_per_second = 1000;
    config.store.path = dir.path().join("sluice.db");
    let mut plugins = shipped_router(&built);
    plugins.router.config.insert("explore".into(), "0.5".into());
    let (proxy, policies) = routed_with(&scorer, plugins, config.clone(), 2).await;
    let analytics =
        sluice_analytics::Analytics::open(Arc::new(config), proxy.view(), Arc::clone(&policies))
            .unwrap();

    assert_eq!(short_streams(proxy.addr(), "a", 96).await, 96);
    // Ended streams are finished observations: the next learning run stores them.
    let mut recorded = Vec::new();
    for _ in 0..50 {
        analytics.learn_once().await;
        recorded = analytics.store().outcomes(0, 1000).unwrap();
        if recorded.len() >= 80 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recorded.len() >= 80,
        "{} outcomes recorded; scorer {:?}; router plugin {:?}",
        recorded.len(),
        scorer.status(),
        policies
            .slot(sluice_config::SlotKind::Router)
            .active()
            .map(|plugin| format!("{:?}", plugin.stats))
    );
    let endpoints: std::collections::BTreeSet<&str> =
        recorded.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints.len(), 2, "both endpoints explored: {endpoints:?}");
    for record in &recorded {
        assert_eq!(record.columns, ROUTER_FEATURES);
        assert_eq!(record.features.len(), ROUTER_FEATURES as usize);
        assert!(!record.failed, "{record:?}");
        let ttfm = record.first_message_ms.expect("a first message");
        assert!((0.0..1.0).contains(&record.quality), "{record:?}");
        if record.endpoint == "feed-1" {
            assert!(ttfm >= 30.0, "the slow endpoint's delay: {record:?}");
        }
        assert!(record.predicted.is_some(), "the active model scored it");
        assert!(record.shadow_predicted.is_none(), "no shadow ran yet");
    }

    // Train on what was recorded.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/training/train_router.py"
    );
    let store_path = dir.path().join("sluice.db");
    let output = Command::new(&python)
        .arg(script)
        .args(["--store".as_ref(), store_path.as_os_str()])
        .args(["--out".as_ref(), shadow.as_os_str()])
        .args(["--min-rows", "50", "--epochs", "600"])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "train_router.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(summary["rows"].as_u64(), Some(recorded.len() as u64));
    // Latency is the signal here: the trained model beats predicting the mean.
    assert!(
        summary["held_out_mae"].as_f64() < summary["baseline_mae"].as_f64(),
        "{summary}"
    );

    // The trained model loads as the shadow and is compared on new decisions.
    let trained = scorer.reload_shadow().expect("the trained model loads");
    assert_eq!(trained.features, ROUTER_FEATURES as usize);
    assert_eq!(short_streams(proxy.addr(), "b", 48).await, 48);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(analytics.learn_once().await > 0);
    let compared = scorer.status().shadow.expect("shadow status");
    assert!(compared.compared > 0, "{compared:?}");
    assert!(compared.agreement.is_some() && compared.shadow_error.is_some());
    // The trained model predicts the observed quality better than the untrained one.
    assert!(
        compared.shadow_error < compared.active_error,
        "{compared:?}"
    );
    let stored = analytics.store().outcomes(0, 1000).unwrap();
    assert!(stored.iter().any(|r| r.shadow_predicted.is_some()));

    // Promotion: the shadow answers, its file replaced the model file, the old one is kept.
    let promoted = scorer.promote().expect("promoted");
    assert_eq!(promoted.model.version, trained.version);
    let status = scorer.status();
    assert_eq!(status.model.expect("active").version, trained.version);
    assert!(status.shadow.is_some_and(|s| s.model.is_none()));
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&shadow).unwrap()
    );
    let previous = promoted.previous.expect("the replaced file is kept");
    assert_ne!(
        std::fs::read(previous).unwrap(),
        std::fs::read(&model).unwrap()
    );
    assert_ne!(active.version, trained.version);
    assert!(scorer.promote().is_err(), "nothing left to promote");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_model_loads_and_steers_the_router_off_a_slow_failing_endpoint() {
    let Some((_python, library)) = environment() else {
        return;
    };
    let Some(built) = built_plugins() else {
        return;
    };
    let shipped = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/models/router-v1.onnx"
    ));
    let scorer = OnnxScorer::open(&config(shipped, &library));
    let info = scorer.status().model.expect("the shipped model loads");
    assert_eq!(info.features, ROUTER_FEATURES as usize);
    let plugins = shipped_router(&built);
    let for_plugins: Arc<dyn Scorer> = Arc::clone(&scorer) as Arc<dyn Scorer>;
    let policies =
        tokio::task::spawn_blocking(move || Policies::with_scorer(&plugins, for_plugins))
            .await
            .unwrap()
            .unwrap();
    // The slow, failing connection is the emptiest: the heuristic alone would like its room.
    let candidate = |id: u64, endpoint: &str, active: u32, latency_ms: u64, errors: f64| {
        sluice_contract::route::Candidate {
            connection_id: id,
            endpoint_id: Arc::from(endpoint),
            region: Arc::from("local"),
            priority: 0,
            active_streams: active,
            max_streams: 8,
            latency: Duration::from_millis(latency_ms),
            error_rate: errors,
            age: Duration::from_secs(60),
            endpoint_health: sluice_contract::health::Health::Healthy,
            endpoint_breaker: sluice_contract::breaker::BreakerState::Closed,
        }
    };
    let candidates = [
        candidate(1, "slow", 0, 12, 0.02),
        candidate(2, "steady", 4, 7, 0.0),
        candidate(3, "fast", 4, 5, 0.0),
    ];
    let monitor =
        sluice_contract::route::MonitorProfile::new("m", sluice_config::TrafficClass::Event, false);
    let request = sluice_contract::route::RouteRequest {
        monitor: &monitor,
        method: SUBSCRIBE,
        stream: 0,
        candidates: &candidates,
    };
    let decision = {
        use sluice_contract::route::Router;
        policies.router().route(&request).expect("a decision")
    };
    assert_eq!(decision.index, 2, "{}", decision.reason);
    assert!(
        decision.reason.starts_with("router: conn 3 on fast"),
        "{}",
        decision.reason
    );
    assert!(decision.scored.is_some(), "the scorer was asked");
    assert!(scorer.status().calls > 0);
}
