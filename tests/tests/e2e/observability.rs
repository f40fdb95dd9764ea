//! Observability over the admin listener: `/metrics` checked with the reference Prometheus
//! parser (Python `prometheus-client`), the `/ws` live feed with a real WebSocket client, and
//! the stats, connections and monitors routes, all against a running Sluice with traffic.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_admin::AdminHandle;
use sluice_analytics::Analytics;
use sluice_config::TrafficClass;
use sluice_feed::FeedHandle;
use sluice_proxy::ProxyHandle;
use sluice_tests::admin::{Observed, observed, request};
use sluice_tests::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TOKEN: &str = "obs-token";

/// Sluice with two endpoints, its analytics engine and its admin API, with streams open from
/// a configured monitor and an unconfigured one.
struct Running {
    admin: AdminHandle,
    proxy: ProxyHandle,
    analytics: Arc<Analytics>,
    _feeds: [FeedHandle; 2],
    _store: tempfile::TempDir,
    _streams: Vec<tonic::Streaming<sluice_feed::pb::Event>>,
}

async fn running() -> Running {
    let feeds = [feed("east").await, feed("west").await];
    let store = tempfile::tempdir().unwrap();
    let mut config = config_for(&[&feeds[0], &feeds[1]]);
    config.store.path = store.path().join("sluice.db");
    config
        .monitors
        .push(monitor("known", TrafficClass::Realtime));
    let Observed {
        admin,
        proxy,
        analytics,
        ..
    } = observed(config, TOKEN).await;
    let mut client = client(proxy.addr()).await;
    let mut streams = Vec::new();
    for (monitor, topic) in [("known", "a"), ("known", "b"), ("stranger", "c")] {
        let request = as_monitor(subscribe(topic, 50.0, 16, 0), monitor);
        let mut stream = client.subscribe(request).await.unwrap().into_inner();
        bounded(Duration::from_secs(5), "first event", stream.message())
            .await
            .unwrap()
            .unwrap();
        streams.push(stream);
    }
    for _ in 0..2 {
        analytics.sample_once().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        admin,
        proxy,
        analytics,
        _feeds: feeds,
        _store: store,
        _streams: streams,
    }
}

fn parse_with_prometheus_client(text: &str) -> serde_json::Value {
    let python = match std::env::var("SLUICE_PYTHON") {
        Ok(python) => python,
        Err(_) if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") => {
            panic!("SLUICE_PYTHON must be set (run `cargo xtask test`)")
        }
        Err(_) => "python3".to_owned(),
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/parse_metrics.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("parser output is JSON")
}

fn label_values(family: &serde_json::Value, label: &str) -> Vec<String> {
    let mut values: Vec<String> = family["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["labels"][label].as_str().map(str::to_owned))
        .collect();
    values.sort();
    values.dedup();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_with_bounded_labels() {
    let running = running().await;
    let addr = running.admin.addr();
    let refused = request(addr, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(refused.status, 401);
    let answer = request(addr, "GET", "/metrics", Some(TOKEN), Vec::new()).await;
    assert_eq!(answer.status, 200);
    let text = answer.text.clone();
    let families = parse_with_prometheus_client(&text);

    // Counters: the parser names the family without `_total`, the sample with it.
    let downstream = &families["sluice_downstream_streams"];
    assert_eq!(downstream["type"], "counter");
    assert_eq!(
        downstream["samples"][0]["name"],
        "sluice_downstream_streams_total"
    );
    assert_eq!(downstream["samples"][0]["value"], 3.0);
    assert_eq!(
        families["sluice_downstream_streams_active"]["type"],
        "gauge"
    );
    assert_eq!(
        families["sluice_downstream_streams_active"]["samples"][0]["value"],
        3.0
    );
    assert_eq!(families["sluice_uptime_seconds"]["type"], "gauge");
    let score = families["sluice_health_score"]["samples"][0]["value"]
        .as_f64()
        .unwrap();
    assert!((0.0..=100.0).contains(&score));
    assert_eq!(
        families["sluice_connections_max"]["samples"][0]["value"],
        40.0
    );

    // Groups, endpoints and monitors as labels, with bounded values.
    assert_eq!(
        label_values(&families["sluice_group_streams"], "group"),
        ["event", "realtime", "state"]
    );
    assert_eq!(families["sluice_group_streams_started"]["type"], "counter");
    assert_eq!(
        label_values(&families["sluice_endpoint_health"], "endpoint"),
        ["feed-0", "feed-1"]
    );
    let healthy: f64 = families["sluice_endpoint_health"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["state"] == "healthy")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(healthy, 2.0, "both endpoints healthy");
    let calls = &families["sluice_monitor_calls_open"];
    assert_eq!(label_values(calls, "monitor"), ["_other", "known"]);
    let open = |monitor: &str| {
        calls["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["labels"]["monitor"] == monitor)
            .map(|s| s["value"].as_f64().unwrap())
    };
    assert_eq!(open("known"), Some(2.0));
    assert_eq!(
        open("_other"),
        Some(1.0),
        "unconfigured monitors are summed"
    );
    // Only endpoint and configured-monitor breakers: connection ids would grow without bound.
    let scopes = label_values(&families["sluice_breaker_state"], "scope");
    assert_eq!(scopes, ["endpoint", "monitor"]);
    assert!(
        !text.contains("stranger"),
        "an unconfigured monitor's id leaked"
    );
    assert_eq!(
        label_values(&families["sluice_policy_fallbacks"], "slot"),
        ["anomaly", "resumer", "router", "scaler"]
    );
    // Times are in seconds.
    for name in families.as_object().unwrap().keys() {
        assert!(
            !name.ends_with("_ms") && !name.contains("millis"),
            "{name} is not in seconds"
        );
    }
    running.admin.shutdown().await;
    running.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_pushes_a_frame_about_once_a_second() {
    let running = running().await;
    let url = format!("ws://{}/ws", running.admin.addr());

    // Without a token the upgrade is refused.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // A browser offers the token as a subprotocol; the server answers with `sluice.v1`.
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("sluice.v1, bearer.{hex}")).unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        sluice_admin::live::PROTOCOL
    );
    let started = std::time::Instant::now();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let message = bounded(Duration::from_secs(5), "a frame", socket.next())
            .await
            .expect("the socket stays open")
            .expect("a readable message");
        let text = message.into_text().expect("frames are text");
        let frame: serde_json::Value = serde_json::from_str(&text).expect("frames are JSON");
        frames.push(frame);
    }
    let took = started.elapsed();
    // The first frame comes at once, then one per period: 3 frames in about 2 s.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "3 frames took {took:?}"
    );
    for frame in &frames {
        assert_eq!(frame["type"], "tick");
        assert_eq!(frame["overview"]["stats"]["downstream_streams_active"], 3);
        assert_eq!(frame["endpoints"].as_array().unwrap().len(), 2);
        assert!(frame["endpoints"][0]["health"]["health"] == "healthy");
        assert!(frame["breakers"].as_array().unwrap().len() >= 2);
        assert_eq!(frame["groups"].as_array().unwrap().len(), 3);
        assert!(!frame["connections"].as_array().unwrap().is_empty());
        assert_eq!(frame["plugins"].as_array().unwrap().len(), 4);
        assert!(!frame["decisions"].as_array().unwrap().is_empty());
        let reason = frame["decisions"][0]["reason"].as_str().unwrap();
        assert!(!reason.is_empty());
        let heatmap = &frame["analytics"]["heatmap"];
        assert_eq!(heatmap["rows"].as_array().unwrap().len(), 3);
        assert_eq!(heatmap["rows"][0]["values"].as_array().unwrap().len(), 60);
    }
    let lit = frames[2]["analytics"]["heatmap"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["values"].as_array().unwrap().clone())
        .filter(|v| !v.is_null())
        .count();
    assert!(lit > 0, "the heatmap has the sampled seconds");
    drop(socket);
    running.analytics.sample_once().await;
    running.admin.shutdown().await;
    running.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_connections_and_monitors_describe_the_pool() {
    let running = running().await;
    let addr = running.admin.addr();
    let get = |path: &'static str| request(addr, "GET", path, Some(TOKEN), Vec::new());

    let stats = get("/api/v1/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert_eq!(stats.json["health"]["score"], 100, "{}", stats.text);
    assert_eq!(stats.json["health"]["status"], "healthy");
    assert_eq!(stats.json["stats"]["downstream_streams_active"], 3);
    assert_eq!(stats.json["global_cap"], 40);
    let held = stats.json["efficiency"]["connections_held"]
        .as_u64()
        .unwrap();
    assert_eq!(held, running.proxy.snapshot().connections as u64);

    let connections = get("/api/v1/connections").await;
    let list = connections.json["connections"].as_array().unwrap();
    assert_eq!(list.len() as u64, held);
    let streams: u64 = list.iter().map(|c| c["streams"].as_u64().unwrap()).sum();
    assert_eq!(streams, 3);
    for connection in list {
        assert!(["feed-0", "feed-1"].contains(&connection["endpoint"].as_str().unwrap()));
        assert_eq!(connection["breaker"], "closed");
        assert!(connection["max_streams"].as_u64().unwrap() > 0);
    }

    let monitors = get("/api/v1/monitors").await;
    let rows = monitors.json["monitors"].as_array().unwrap();
    let known = rows.iter().find(|m| m["id"] == "known").unwrap();
    assert_eq!(known["configured"], true);
    assert_eq!(known["class"], "realtime");
    assert_eq!(known["open_calls"], 2);
    assert_eq!(known["breaker"], "closed");
    // Unconfigured monitors are counted together: their names are the callers' to invent.
    assert!(rows.iter().all(|m| m["id"] != "stranger"), "{rows:?}");
    let stranger = rows
        .iter()
        .find(|m| m["id"] == "(unconfigured monitors)")
        .unwrap();
    assert_eq!(stranger["configured"], false);
    assert_eq!(stranger["open_calls"], 1);
    assert!(
        stranger["traffic"].is_null(),
        "unconfigured ids get no profile"
    );
    // The known monitor's measured traffic: two streams of 50 events/s (the meters tick once a
    // second and their averages build up over seconds).
    let mut traffic = serde_json::Value::Null;
    for _ in 0..50 {
        let monitors = get("/api/v1/monitors").await;
        let rows = monitors.json["monitors"].as_array().unwrap().clone();
        traffic = rows.iter().find(|m| m["id"] == "known").unwrap()["traffic"].clone();
        if traffic["message_rate"].as_f64().is_some_and(|r| r > 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = traffic["message_rate"].as_f64().unwrap_or_default();
    assert!(rate > 1.0 && rate <= 100.0, "{traffic}");
    // Events carry a 16-byte payload plus their sequence number and timestamp.
    let size = traffic["mean_message_bytes"].as_f64().unwrap_or_default();
    assert!((16.0..64.0).contains(&size), "{traffic}");
    let sensitivity = traffic["latency_sensitivity"].as_f64().unwrap_or_default();
    assert!(
        (0.6..0.9).contains(&sensitivity),
        "realtime prior: {traffic}"
    );

    // The router's decisions, per monitor, newest first, with their reasons. (The stranger's
    // first stream opened its group's connection; its second is placed by the router.)
    let mut client = client(running.proxy.addr()).await;
    let second = client
        .subscribe(as_monitor(subscribe("d", 50.0, 16, 0), "stranger"))
        .await
        .unwrap();
    let call: u64 = second
        .metadata()
        .get("x-sluice-stream")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut second = second.into_inner();
    bounded(Duration::from_secs(5), "first event", second.message())
        .await
        .unwrap()
        .unwrap();
    let known = get("/api/v1/decisions?monitor=known").await;
    let known = known.json["decisions"].as_array().unwrap().clone();
    assert!(!known.is_empty());
    assert!(known.iter().all(|d| d["monitor"] == "known"), "{known:?}");
    assert!(
        known
            .iter()
            .all(|d| d["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    let all = get("/api/v1/decisions?limit=100").await;
    let all = all.json["decisions"].as_array().unwrap().clone();
    assert!(all.iter().any(|d| d["monitor"] == "stranger"), "{all:?}");
    assert!(all.len() > known.len());
    let newest_first: Vec<i64> = all.iter().map(|d| d["ts_ms"].as_i64().unwrap()).collect();
    assert!(
        newest_first.windows(2).all(|w| w[0] >= w[1]),
        "{newest_first:?}"
    );
    let one = get("/api/v1/decisions?monitor=known&limit=1").await;
    assert_eq!(one.json["decisions"].as_array().unwrap().len(), 1);
    // A call's placement, found by the id its response headers gave it.
    let by_call = format!("/api/v1/decisions?stream={call}");
    let placed = request(addr, "GET", &by_call, Some(TOKEN), Vec::new()).await;
    let placed = placed.json["decisions"].as_array().unwrap().clone();
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert_eq!(placed[0]["monitor"], "stranger");
    assert_eq!(placed[0]["stream"], call);

    // Stopping an endpoint's breaker by hand lowers the score and says why.
    let forced = request(
        addr,
        "POST",
        "/api/v1/breakers/endpoint/feed-0/force-open",
        Some(TOKEN),
        Vec::new(),
    )
    .await;
    assert_eq!(forced.status, 200);
    let stats = get("/api/v1/stats").await;
    let score = stats.json["health"]["score"].as_u64().unwrap();
    assert!(score < 100, "{}", stats.text);
    let reason = stats.json["health"]["deductions"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("endpoint feed-0 is unhealthy"), "{reason}");

    let document = get("/api/v1/openapi.json").await;
    assert_eq!(document.status, 200);
    assert_eq!(document.json["openapi"], "3.1.0");
    running.admin.shutdown().await;
    running.proxy.shutdown().await;
}
