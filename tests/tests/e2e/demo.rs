//! `sluice demo` as the README's quick start promises it: a router component renamed into the
//! demo's plugin folder takes over while the demo's monitors stream, with no restart and no
//! broken stream.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::admin::request;
use sluice_tests::process::SluiceProcess;
use sluice_tests::{as_monitor, bounded, client, eventually_async, subscribe};

/// The demo's admin API, read as JSON.
async fn get(admin: SocketAddr, path: &str) -> serde_json::Value {
    let answer = request(admin, "GET", path, None, Vec::new()).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.text);
    answer.json
}

/// The demo's stats counter `name`.
async fn counter(admin: SocketAddr, name: &str) -> u64 {
    get(admin, "/api/v1/stats").await["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{name} is a number"))
}

/// The active router plugin's label (`router@v1`), if one is active.
async fn active_router(admin: SocketAddr) -> Option<String> {
    let plugins = get(admin, "/api/v1/plugins").await;
    let slots = plugins["slots"].as_array()?;
    let router = slots.iter().find(|s| s["slot"] == "router")?;
    router["active"]["label"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_renamed_into_the_demo_folder_takes_over_while_monitors_stream() {
    let Some(built) = sluice_tests::plugins::built_plugins() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugins folder");
    let store = work.path().join("sluice.db");
    let demo = SluiceProcess::demo(&[
        "--duration".as_ref(),
        "90s".as_ref(),
        "--no-history".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--plugins".as_ref(),
        plugins.as_os_str(),
    ]);
    let admin: SocketAddr = demo
        .admin
        .trim_start_matches("http://")
        .parse()
        .expect("the demo prints its admin address");

    // The demo's monitors stream through the built-in router first.
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            counter(admin, "downstream_streams_active").await >= 20
        })
        .await,
        "the demo's twenty monitors stream"
    );
    assert_eq!(active_router(admin).await, None, "the folder starts empty");
    let bytes_before = counter(admin, "bytes_to_monitors_total").await;

    // Renamed in, as an operator would drop it: written beside the target, then moved.
    let staging = plugins.join(".router.wasm.partial");
    std::fs::copy(built.join("test-pick-first.wasm"), &staging).expect("staging copy");
    std::fs::rename(&staging, plugins.join("router.wasm")).expect("rename into the folder");
    assert!(
        eventually_async(Duration::from_secs(15), || async {
            active_router(admin).await.is_some()
        })
        .await,
        "the renamed router became active"
    );

    // The next stream is placed by it. It comes as `rt-0`, of the realtime class, whose group
    // has a free slot (six monitors, four streams a connection): a stream that opens a new
    // connection is not a router's decision. The demo keeps the router's 1 ms deadline, which
    // a call can overrun on a loaded 2-core machine (the decision then names the router and
    // its timeout, and the built-in policy decides): up to five streams, until one is the
    // router's own answer.
    let mut decisions = serde_json::Value::Null;
    for _ in 0..5 {
        let mut probe = client(demo.addr).await;
        let mut stream = bounded(
            Duration::from_secs(10),
            "probe subscription",
            probe.subscribe(as_monitor(subscribe("probe", 1000.0, 8, 1), "rt-0")),
        )
        .await
        .expect("probe opens")
        .into_inner();
        while bounded(Duration::from_secs(10), "probe message", stream.message())
            .await
            .expect("probe succeeds")
            .is_some()
        {}
        decisions = get(admin, "/api/v1/decisions?monitor=rt-0&limit=1").await;
        let reason = decisions["decisions"][0]["reason"]
            .as_str()
            .unwrap_or_default();
        if !reason.ends_with("timeout]") {
            break;
        }
    }
    let decision = &decisions["decisions"][0];
    assert_eq!(decision["reason"], "pick-first", "{decision}");
    let label = active_router(admin).await.expect("still active");
    assert_eq!(
        decision["policy"].as_str(),
        Some(label.as_str()),
        "{decision}"
    );

    // The monitors kept streaming through the swap, and none of them broke.
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            counter(admin, "bytes_to_monitors_total").await > bytes_before
        })
        .await,
        "messages keep reaching the monitors"
    );
    assert_eq!(counter(admin, "upstream_failures_total").await, 0);
    assert!(counter(admin, "downstream_streams_active").await >= 20);
}
