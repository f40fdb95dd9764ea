//! The admin API: who may call it (Host and Origin rules, the token, writes without one,
//! HTTPS), JSON errors, plugin uploads and actions, endpoint health, circuit breakers and their
//! overrides, endpoint drains.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_admin::AdminServer;
use sluice_config::{AdminConfig, AdminTls};
use sluice_feed::FeedHandle;
use sluice_policy::Policies;
use sluice_proxy::ProxyHandle;
use sluice_tests::admin::{request, request_json, request_tls, request_with, upload};
use sluice_tests::plugins::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// An admin API over a running Sluice with one feed endpoint.
struct Admin {
    server: sluice_admin::AdminHandle,
    policies: Arc<Policies>,
    proxy: ProxyHandle,
    _feed: FeedHandle,
}

/// An admin listener on a free loopback port with `token`, every other setting the default.
fn admin_config(token: Option<&str>) -> AdminConfig {
    AdminConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        token: token.map(str::to_owned),
        ..AdminConfig::default()
    }
}

async fn admin(token: Option<&str>) -> (sluice_admin::AdminHandle, Arc<Policies>) {
    let admin = admin_with(admin_config(token)).await;
    (admin.server, admin.policies)
}

async fn admin_with(config: AdminConfig) -> Admin {
    admin_with_routes(config, None).await
}

/// The admin API with `config`, and `routes` of an embedding program as `sluice demo` adds.
async fn admin_with_routes(config: AdminConfig, routes: Option<axum::Router>) -> Admin {
    let plugins = plugins_config();
    let policies = tokio::task::spawn_blocking(move || Policies::new(&plugins))
        .await
        .unwrap()
        .unwrap();
    let feed = sluice_tests::feed("feed").await;
    let proxy = sluice_tests::sluice(sluice_tests::config_for(&[&feed])).await;
    let mut server = AdminServer::bind(&config, Arc::clone(&policies), proxy.view())
        .await
        .expect("admin binds");
    if let Some(routes) = routes {
        server = server.with_routes(routes);
    }
    Admin {
        server: server.spawn(),
        policies,
        proxy,
        _feed: feed,
    }
}

#[tokio::test]
async fn every_route_but_health_needs_the_token() {
    let (server, _policies) = admin(Some("s3cret")).await;
    let addr = server.addr();
    let health = request(addr, "GET", "/healthz", None, Vec::new()).await;
    assert_eq!(health.status, 200);
    assert_eq!(
        request(addr, "GET", "/readyz", None, Vec::new())
            .await
            .status,
        200
    );
    let missing = request(addr, "GET", "/api/v1/plugins", None, Vec::new()).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing.json["error"]
            .as_str()
            .unwrap()
            .contains("missing bearer token")
    );
    let wrong = request(addr, "GET", "/api/v1/plugins", Some("guess"), Vec::new()).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json["status"], 401);
    let upload = request(addr, "POST", "/api/v1/plugins/router", None, b"x".to_vec()).await;
    assert_eq!(upload.status, 401, "uploads need the token too");
    for (method, path) in [
        ("GET", "/api/v1/plugins/events"),
        ("POST", "/api/v1/plugins/router/promote"),
        ("POST", "/api/v1/plugins/router/clear"),
    ] {
        let answer = request(addr, method, path, None, Vec::new()).await;
        assert_eq!(answer.status, 401, "{method} {path}");
    }
    // Every documented route: 401 without the token unless the document marks it public.
    let document: serde_json::Value = serde_json::from_str(sluice_admin::OPENAPI).unwrap();
    let mut guarded = 0;
    for (path, methods) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{slot}", "router")
            .replace("{scope}", "endpoint")
            .replace("{action}", "release")
            .replace("{period}", "hourly")
            .replace(['{', '}'], "");
        for (method, operation) in methods.as_object().unwrap() {
            let public = operation["security"] == serde_json::json!([]);
            let method = method.to_uppercase();
            let answer = request(addr, &method, &concrete, None, Vec::new()).await;
            if public {
                assert_ne!(answer.status, 401, "{method} {path} is public");
            } else {
                assert_eq!(answer.status, 401, "{method} {path} needs the token");
                guarded += 1;
            }
        }
    }
    assert!(
        guarded >= 27,
        "only {guarded} guarded operations documented"
    );
    let page = request(addr, "GET", "/", None, Vec::new()).await;
    assert!(page.text.contains("<title>Sluice</title>"));
    let script = request(addr, "GET", "/assets/app.js", None, Vec::new()).await;
    assert!(script.text.contains("new WebSocket"));
    let listed = request(addr, "GET", "/api/v1/plugins", Some("s3cret"), Vec::new()).await;
    assert_eq!(listed.status, 200);
    let slots = listed.json["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4);
    assert_eq!(slots[0]["slot"], "router");
    assert_eq!(slots[0]["builtin"], "p2c-peak-ewma");
    assert!(slots[0]["active"].is_null());
    assert_eq!(slots[3]["slot"], "resumer");
    assert_eq!(slots[3]["builtin"], "replay-unchanged");
    assert!(slots[3]["active"].is_null());
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let Admin {
        server, policies, ..
    } = admin_with(AdminConfig {
        max_upload_bytes: 1024,
        allow_unauthenticated_writes: true,
        ..admin_config(None)
    })
    .await;
    let addr = server.addr();
    let unknown_slot = upload(addr, "/api/v1/plugins/balancer", None, b"x".to_vec()).await;
    assert_eq!(unknown_slot.status, 404);
    assert!(
        unknown_slot.json["error"]
            .as_str()
            .unwrap()
            .contains("router, scaler, anomaly, resumer")
    );
    let empty = upload(addr, "/api/v1/plugins/router", None, Vec::new()).await;
    assert_eq!(empty.status, 400);
    let bad_query = upload(
        addr,
        "/api/v1/plugins/router?shadow=maybe",
        None,
        b"x".to_vec(),
    )
    .await;
    assert_eq!(bad_query.status, 400, "{}", bad_query.text);
    let garbage = upload(addr, "/api/v1/plugins/router", None, b"garbage".to_vec()).await;
    assert_eq!(garbage.status, 422);
    assert!(
        garbage.json["error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component")
    );
    let no_shadow = request(
        addr,
        "POST",
        "/api/v1/plugins/router/promote",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(no_shadow.status, 409);
    assert!(
        no_shadow.json["error"]
            .as_str()
            .unwrap()
            .contains("no shadow")
    );
    // The built-in scorer has no shadow model to promote either.
    let no_model = request(addr, "POST", "/api/v1/scorer/promote", None, Vec::new()).await;
    assert_eq!(no_model.status, 409, "{}", no_model.text);
    assert!(
        no_model.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no shadow model")),
        "{}",
        no_model.text
    );
    let bad_action = request(
        addr,
        "POST",
        "/api/v1/plugins/router/explode",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(bad_action.status, 404);
    let too_big = upload(addr, "/api/v1/plugins/router", None, vec![0; 4096]).await;
    assert_eq!(too_big.status, 413);
    assert!(too_big.json["error"].is_string(), "{}", too_big.text);
    let wrong_method = request(addr, "GET", "/api/v1/plugins/router", None, Vec::new()).await;
    assert_eq!(wrong_method.status, 405);
    assert!(
        wrong_method.json["error"].is_string(),
        "{}",
        wrong_method.text
    );
    // JSON bodies: malformed, the wrong shape, the wrong content type, an unknown version.
    let bad_json = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/activate",
        None,
        "{\"hash\": ",
    )
    .await;
    assert_eq!(bad_json.status, 400, "{}", bad_json.text);
    let message = bad_json.json["error"].as_str().expect("a message");
    assert!(message.contains("parse"), "{message}");
    let wrong_shape = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/shadow",
        None,
        "{\"version\": 1}",
    )
    .await;
    assert_eq!(wrong_shape.status, 400, "{}", wrong_shape.text);
    assert!(
        wrong_shape.json["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `version`")
    );
    let not_json = request(
        addr,
        "POST",
        "/api/v1/plugins/router/activate",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(not_json.status, 415, "{}", not_json.text);
    assert!(not_json.json["error"].is_string());
    let unknown_version = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/activate",
        None,
        "{\"hash\": \"00\"}",
    )
    .await;
    assert_eq!(unknown_version.status, 409, "{}", unknown_version.text);
    assert!(
        unknown_version.json["error"]
            .as_str()
            .unwrap()
            .contains("no earlier version")
    );
    let nowhere = request(addr, "GET", "/api/v1/nothing", None, Vec::new()).await;
    assert_eq!(nowhere.status, 404);
    assert!(nowhere.json["error"].is_string());
    assert!(
        policies
            .slot(sluice_config::SlotKind::Router)
            .active()
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_upload_and_roll_back_through_the_api() {
    let Some(built) = built_plugins() else { return };
    let (server, policies) = admin(Some("t")).await;
    let addr = server.addr();
    let first = std::fs::read(built.join("test-pick-first.wasm")).unwrap();
    let last = std::fs::read(built.join("test-pick-last.wasm")).unwrap();
    let loaded = upload(addr, "/api/v1/plugins/router?name=first", Some("t"), first).await;
    assert_eq!(loaded.status, 201, "{}", loaded.text);
    assert_eq!(loaded.json["plugin"]["name"], "first");
    assert_eq!(loaded.json["plugin"]["version"], 1);
    assert_eq!(loaded.json["self_test_samples"], 3);
    let shadow = upload(
        addr,
        "/api/v1/plugins/router?name=last&shadow=true",
        Some("t"),
        last,
    )
    .await;
    assert_eq!(shadow.status, 201, "{}", shadow.text);
    let listed = request(addr, "GET", "/api/v1/plugins", Some("t"), Vec::new()).await;
    assert_eq!(listed.json["slots"][0]["active"]["plugin"]["name"], "first");
    assert_eq!(listed.json["slots"][0]["shadow"]["plugin"]["name"], "last");
    let promoted = request(
        addr,
        "POST",
        "/api/v1/plugins/router/promote",
        Some("t"),
        Vec::new(),
    )
    .await;
    assert_eq!(promoted.status, 200, "{}", promoted.text);
    assert_eq!(
        policies
            .slot(sluice_config::SlotKind::Router)
            .active()
            .unwrap()
            .info()
            .name,
        "last"
    );
    let rolled = request(
        addr,
        "POST",
        "/api/v1/plugins/router/rollback",
        Some("t"),
        Vec::new(),
    )
    .await;
    assert_eq!(rolled.json["active"]["name"], "first");
    let wrong_world = std::fs::read(built.join("scaler.wasm")).unwrap();
    let refused = upload(addr, "/api/v1/plugins/router", Some("t"), wrong_world).await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.json["error"]
            .as_str()
            .unwrap()
            .contains("targets the scaler world")
    );
    let events = request(addr, "GET", "/api/v1/plugins/events", Some("t"), Vec::new()).await;
    let kinds: Vec<&str> = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "activated",
            "shadow_loaded",
            "promoted",
            "rolled_back",
            "load_failed"
        ]
    );

    // Earlier versions by content hash: `last` again, then `first` made active and `last`
    // the shadow, both from the history.
    let last_again = upload(
        addr,
        "/api/v1/plugins/router?name=last",
        Some("t"),
        std::fs::read(built.join("test-pick-last.wasm")).unwrap(),
    )
    .await;
    assert_eq!(last_again.status, 201, "{}", last_again.text);
    let listed = request(addr, "GET", "/api/v1/plugins", Some("t"), Vec::new()).await;
    let history = listed.json["slots"][0]["history"].as_array().unwrap();
    let first_hash = history
        .iter()
        .find(|p| p["name"] == "first")
        .expect("first is in the history")["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let last_hash = last_again.json["plugin"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let activated = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/activate",
        Some("t"),
        &format!("{{\"hash\": \"{first_hash}\"}}"),
    )
    .await;
    assert_eq!(activated.status, 200, "{}", activated.text);
    assert_eq!(activated.json["active"]["name"], "first");
    let shadowed = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/shadow",
        Some("t"),
        &format!("{{\"hash\": \"{last_hash}\"}}"),
    )
    .await;
    assert_eq!(shadowed.status, 200, "{}", shadowed.text);
    let router = policies.slot(sluice_config::SlotKind::Router);
    assert_eq!(router.active().unwrap().info().hash, first_hash);
    assert_eq!(router.shadow().unwrap().info().hash, last_hash);
    assert!(router.history().is_empty());

    // The resumer slot takes uploads like the others, and lists what it got.
    let resumer = std::fs::read(built.join("feed-resumer.wasm")).unwrap();
    let loaded = upload(
        addr,
        "/api/v1/plugins/resumer?name=feed",
        Some("t"),
        resumer,
    )
    .await;
    assert_eq!(loaded.status, 201, "{}", loaded.text);
    assert_eq!(loaded.json["slot"], "resumer");
    assert_eq!(loaded.json["plugin"]["world"], "resumer");
    assert_eq!(loaded.json["self_test_samples"], 3);
    let listed = request(addr, "GET", "/api/v1/plugins", Some("t"), Vec::new()).await;
    assert_eq!(listed.json["slots"][3]["slot"], "resumer");
    assert_eq!(listed.json["slots"][3]["active"]["plugin"]["name"], "feed");
    server.shutdown().await;
}

#[tokio::test]
async fn breakers_can_be_forced_open_and_released_and_endpoints_drained() {
    let Admin {
        server,
        proxy,
        _feed: _upstream,
        ..
    } = admin_with(AdminConfig {
        max_upload_bytes: 1024,
        ..admin_config(Some("t"))
    })
    .await;
    let addr = server.addr();
    let token = Some("t");
    for (method, path) in [
        ("GET", "/api/v1/endpoints"),
        ("GET", "/api/v1/breakers"),
        ("POST", "/api/v1/breakers/endpoint/feed-0/force-open"),
        ("POST", "/api/v1/endpoints/feed-0/drain"),
    ] {
        let answer = request(addr, method, path, None, Vec::new()).await;
        assert_eq!(answer.status, 401, "{method} {path}");
    }
    let endpoints = request(addr, "GET", "/api/v1/endpoints", token, Vec::new()).await;
    assert_eq!(endpoints.status, 200);
    assert_eq!(endpoints.json["endpoints"][0]["id"], "feed-0");
    assert_eq!(
        endpoints.json["endpoints"][0]["health"]["health"],
        "healthy"
    );
    assert_eq!(endpoints.json["endpoints"][0]["breaker"]["state"], "closed");

    let mut c = sluice_tests::client(proxy.addr()).await;
    let echo = || sluice_tests::as_monitor(sluice_tests::pb::EchoRequest::default(), "m");
    c.echo(echo()).await.expect("echo before");

    let forced = request(
        addr,
        "POST",
        "/api/v1/breakers/endpoint/feed-0/force-open",
        token,
        Vec::new(),
    )
    .await;
    assert_eq!(forced.status, 200, "{:?}", forced.json);
    assert_eq!(forced.json["breaker"]["state"], "forced-open");
    let refused = c.echo(echo()).await.expect_err("endpoint forced open");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("feed-0: endpoint circuit breaker is forced-open"),
        "{refused:?}"
    );
    let released = request(
        addr,
        "POST",
        "/api/v1/breakers/endpoint/feed-0/release",
        token,
        Vec::new(),
    )
    .await;
    assert_eq!(released.json["breaker"]["state"], "closed");
    c.echo(echo()).await.expect("echo after release");
    let events = request(
        addr,
        "GET",
        "/api/v1/breakers/events?since=0",
        token,
        Vec::new(),
    )
    .await;
    let causes: Vec<&str> = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cause"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "forced open by an operator",
            "override released by an operator"
        ]
    );

    // `m` is not in [[monitors]]: it shares the one breaker of every unconfigured monitor,
    // which an operator can act on like any other; unknown names and scopes are 404.
    let monitor = request(
        addr,
        "POST",
        "/api/v1/breakers/monitor/%28unconfigured%20monitors%29/disable",
        token,
        Vec::new(),
    )
    .await;
    assert_eq!(monitor.json["breaker"]["name"], "(unconfigured monitors)");
    assert_eq!(monitor.json["breaker"]["state"], "disabled");
    for path in [
        "/api/v1/breakers/monitor/nobody/disable",
        "/api/v1/breakers/monitor/m/disable",
        "/api/v1/breakers/galaxy/feed-0/disable",
        "/api/v1/breakers/endpoint/feed-0/explode",
        "/api/v1/endpoints/nowhere/drain",
    ] {
        let answer = request(addr, "POST", path, token, Vec::new()).await;
        assert_eq!(answer.status, 404, "{path}: {:?}", answer.json);
        assert!(answer.json["error"].is_string());
    }
    let bad_since = request(
        addr,
        "GET",
        "/api/v1/breakers/events?since=x",
        token,
        Vec::new(),
    )
    .await;
    assert_eq!(bad_since.status, 400);

    let drained = request(
        addr,
        "POST",
        "/api/v1/endpoints/feed-0/drain",
        token,
        Vec::new(),
    )
    .await;
    assert_eq!(drained.status, 200);
    assert_eq!(drained.json["draining_connections"], 1);
    // A drained connection takes no new streams: the next call opens a new one, and the
    // drained one closes since no stream is left on it.
    c.echo(echo()).await.expect("echo after drain");
    assert_eq!(proxy.snapshot().stats.connections_opened_total, 2);
    assert!(
        sluice_tests::eventually(std::time::Duration::from_secs(5), || proxy
            .snapshot()
            .connections
            == 1)
        .await,
        "the drained connection closed"
    );
    server.shutdown().await;
}

/// The scaler's and analytics engine's routes over a running pool: groups, scaling, insights,
/// predictions, metric history, decision samples, alerts and reports, with their errors.
#[tokio::test]
async fn analytics_routes_serve_history_insights_and_reports() {
    let feed = sluice_tests::feed("feed").await;
    let store = tempfile::tempdir().unwrap();
    let mut config = sluice_tests::config_for(&[&feed]);
    config.store.path = store.path().join("sluice.db");
    config.classes.event.min_connections = 2;
    // Two idle connections: "Low multiplexing" at the first analytics run.
    config.analytics.low_multiplexing = 1000.0;
    let sluice_tests::admin::Observed {
        admin: server,
        proxy,
        analytics,
        ..
    } = sluice_tests::admin::observed(config, "t").await;
    let addr = server.addr();
    let warmed = sluice_tests::eventually(Duration::from_secs(10), || {
        proxy.snapshot().connections == 2
    })
    .await;
    assert!(warmed);
    for _ in 0..3 {
        analytics.sample_once().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    analytics.analyze_once().await;
    analytics.scale_once().await;
    let get = |path: &'static str| request(addr, "GET", path, Some("t"), Vec::new());

    assert_eq!(
        request(addr, "GET", "/api/v1/insights", None, Vec::new())
            .await
            .status,
        401
    );
    let groups = get("/api/v1/groups").await;
    assert_eq!(groups.status, 200, "{}", groups.text);
    let event = &groups.json["groups"][1];
    assert_eq!(event["class"], "event");
    assert_eq!(event["connections"], 2);
    assert_eq!(event["min_connections"], 2);
    assert_eq!(groups.json["global_cap"], 40);

    let insights = get("/api/v1/insights").await;
    assert_eq!(insights.status, 200);
    let first = &insights.json["insights"][0];
    assert_eq!(first["title"], "Low multiplexing", "{}", insights.text);
    assert_eq!(first["kind"], "recommendation");
    let stored = get("/api/v1/insights?since=0").await;
    assert_eq!(stored.json["insights"][0]["title"], "Low multiplexing");

    let scaling = get("/api/v1/scaling").await;
    assert_eq!(scaling.status, 200);
    assert!(scaling.json["scaling"].as_array().unwrap().is_empty());
    assert!(
        scaling.json["last_plan"]["reasoning"]
            .as_str()
            .unwrap()
            .starts_with("built-in thresholds"),
        "{}",
        scaling.text
    );

    let names = get("/api/v1/metrics").await;
    assert!(
        names.json["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "pool.connections")
    );
    let series = get("/api/v1/metrics/pool.connections").await;
    let points = series.json["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{}", series.text);
    assert!(points.iter().all(|p| p["value"] == 2.0));
    assert_eq!(get("/api/v1/metrics/no.such").await.status, 404);
    let bad = get("/api/v1/metrics/pool.connections?resolution=hour").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json["error"].as_str().unwrap().contains("resolution"));
    assert_eq!(get("/api/v1/insights?limit=many").await.status, 400);

    let predictions = get("/api/v1/predictions").await;
    assert_eq!(predictions.status, 200);
    assert!(
        predictions.json["prediction"].is_null(),
        "no forecast without history"
    );
    assert_eq!(get("/api/v1/decisions").await.status, 200);
    let alerts = get("/api/v1/alerts").await;
    assert_eq!(alerts.status, 200);
    assert!(alerts.json["alerts"].is_array());

    let report = get("/api/v1/reports/hourly").await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(report.json["period"], "hourly");
    let html = get("/api/v1/reports/daily?format=html").await;
    assert_eq!(html.status, 200);
    assert!(html.text.contains("<html") && !html.text.contains("<script"));
    let unknown = get("/api/v1/reports/monthly").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json["error"].as_str().unwrap().contains("hourly"));
    assert_eq!(get("/api/v1/reports").await.status, 200);

    // Without the engine the routes say so.
    let (bare, _policies) = admin(None).await;
    let answer = request(bare.addr(), "GET", "/api/v1/insights", None, Vec::new()).await;
    assert_eq!(answer.status, 503);
    assert!(answer.json["error"].as_str().unwrap().contains("analytics"));
    bare.shutdown().await;
    server.shutdown().await;
}

/// The error message of an answer.
fn error_of(answer: &sluice_tests::admin::Answer) -> &str {
    answer.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error in {}", answer.text))
}

/// The state of endpoint `feed-0`'s breaker, read through the API.
async fn feed_breaker(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    let endpoints = request(addr, "GET", "/api/v1/endpoints", token, Vec::new()).await;
    assert_eq!(endpoints.status, 200, "{}", endpoints.text);
    endpoints.json["endpoints"][0]["breaker"]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A page on another site cannot make the API act, whether or not a token is configured, while
/// a page from the API's own origin can.
#[tokio::test]
async fn cross_origin_writes_are_refused_with_or_without_a_token() {
    for token in [None, Some("t")] {
        let admin = admin_with(AdminConfig {
            allow_unauthenticated_writes: true,
            ..admin_config(token)
        })
        .await;
        let addr = admin.server.addr();
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("origin", "http://evil.example")];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        let force_open = "/api/v1/breakers/endpoint/feed-0/force-open";
        let refused = request_with(addr, "POST", force_open, &headers, Vec::new()).await;
        assert_eq!(refused.status, 403, "token {token:?}: {}", refused.text);
        let message = error_of(&refused);
        assert!(
            message.contains("\"http://evil.example\"")
                && message.contains("admin.allowed_origins"),
            "{message}"
        );
        assert_eq!(
            feed_breaker(addr, token).await,
            "closed",
            "nothing was done"
        );
        let mut wasm = headers.clone();
        wasm.push(("content-type", "application/wasm"));
        let upload =
            request_with(addr, "POST", "/api/v1/plugins/router", &wasm, b"x".to_vec()).await;
        assert_eq!(upload.status, 403, "{}", upload.text);
        // A look-alike of the API's own origin is another origin.
        let port = addr.port();
        let look_alike = format!("http://127.0.0.1:{port}.evil.example");
        headers[0] = ("origin", look_alike.as_str());
        let refused = request_with(addr, "POST", force_open, &headers, Vec::new()).await;
        assert_eq!(refused.status, 403, "{}", refused.text);

        // The same request from the dashboard's own origin goes through.
        let own = format!("http://{addr}");
        headers[0] = ("origin", own.as_str());
        let forced = request_with(addr, "POST", force_open, &headers, Vec::new()).await;
        assert_eq!(forced.status, 200, "{}", forced.text);
        assert_eq!(forced.json["breaker"]["state"], "forced-open");
        admin.server.shutdown().await;
    }
}

/// DNS rebinding: a page on `evil.example`, whose name now resolves to 127.0.0.1, sends `Host:
/// evil.example:PORT`. Refused on every route, the health checks and `/ws` included, with no
/// token configured; the listener's own names and `admin.allowed_hosts` are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_hosts_are_refused_on_reads_and_on_the_websocket() {
    let admin = admin_with(AdminConfig {
        allowed_hosts: vec!["sluice.internal".into()],
        ..admin_config(None)
    })
    .await;
    let addr = admin.server.addr();
    let port = addr.port();
    let evil = format!("evil.example:{port}");
    for path in [
        "/api/v1/stats",
        "/api/v1/plugins",
        "/metrics",
        "/",
        "/healthz",
        "/nowhere",
    ] {
        let answer = request_with(addr, "GET", path, &[("host", &evil)], Vec::new()).await;
        assert_eq!(answer.status, 421, "{path}: {}", answer.text);
        let message = error_of(&answer);
        assert!(
            message.contains(&format!("\"{evil}\"")) && message.contains("admin.allowed_hosts"),
            "{message}"
        );
    }
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
        "sluice.internal".to_owned(),
    ] {
        let answer =
            request_with(addr, "GET", "/api/v1/stats", &[("host", &host)], Vec::new()).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.text);
    }

    let url = format!("ws://{addr}/ws");
    let mut rebound = url.as_str().into_client_request().unwrap();
    rebound
        .headers_mut()
        .insert("host", HeaderValue::from_str(&evil).unwrap());
    match tokio_tungstenite::connect_async(rebound).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 421);
        }
        other => panic!("expected 421, got {other:?}"),
    }
    let mut cross_site = url.as_str().into_client_request().unwrap();
    cross_site
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    match tokio_tungstenite::connect_async(cross_site).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    admin.server.shutdown().await;
}

/// What a browser on the dashboard's own page sends (its Origin) and what curl, the CLI and
/// Prometheus send (no Origin) are served, the WebSocket included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_and_origin_less_requests_are_served() {
    let admin = admin_with(admin_config(None)).await;
    let addr = admin.server.addr();
    let own = format!("http://{addr}");
    let localhost = format!("http://localhost:{}", addr.port());
    for headers in [vec![], vec![("origin", own.as_str())]] {
        let stats = request_with(addr, "GET", "/api/v1/stats", &headers, Vec::new()).await;
        assert_eq!(stats.status, 200, "{headers:?}: {}", stats.text);
        assert!(stats.json["health"]["score"].is_u64(), "{}", stats.text);
    }
    let host = format!("localhost:{}", addr.port());
    let page = request_with(
        addr,
        "GET",
        "/api/v1/endpoints",
        &[("host", &host), ("origin", &localhost)],
        Vec::new(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    // Health checks skip the Origin rule.
    let health = request_with(
        addr,
        "GET",
        "/healthz",
        &[("origin", "http://evil.example")],
        Vec::new(),
    )
    .await;
    assert_eq!(health.status, 200, "{}", health.text);

    let mut browser = format!("ws://{addr}/ws").into_client_request().unwrap();
    browser
        .headers_mut()
        .insert("origin", HeaderValue::from_str(&own).unwrap());
    for request in [
        browser,
        format!("ws://{addr}/ws").into_client_request().unwrap(),
    ] {
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let first = sluice_tests::bounded(Duration::from_secs(5), "a frame", socket.next())
            .await
            .expect("the socket stays open")
            .expect("a message");
        let frame: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(frame["type"], "tick");
    }
    admin.server.shutdown().await;
}

/// Without a token, reads are served but every write, the embedding program's included, is
/// refused with a message naming both fixes, until `allow_unauthenticated_writes` says so.
#[tokio::test]
async fn writes_without_a_token_need_the_explicit_flag() {
    let embedded = || {
        axum::Router::new().route(
            "/api/v1/demo/endpoints/{name}/stop",
            axum::routing::post(|| async { "stopped" }),
        )
    };
    let admin = admin_with_routes(admin_config(None), Some(embedded())).await;
    let addr = admin.server.addr();
    assert_eq!(feed_breaker(addr, None).await, "closed", "reads are served");
    for path in [
        "/api/v1/breakers/endpoint/feed-0/force-open",
        "/api/v1/endpoints/feed-0/drain",
        "/api/v1/plugins/router/clear",
        "/api/v1/scorer/promote",
        "/api/v1/demo/endpoints/slow/stop",
    ] {
        let answer = request(addr, "POST", path, None, Vec::new()).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.text);
        let message = error_of(&answer);
        for fix in [
            "admin.token",
            "SLUICE_ADMIN_TOKEN",
            "admin.allow_unauthenticated_writes = true",
        ] {
            assert!(message.contains(fix), "{path}: {message}");
        }
    }
    let uploaded = upload(addr, "/api/v1/plugins/router", None, b"x".to_vec()).await;
    assert_eq!(uploaded.status, 401, "{}", uploaded.text);
    let activated = request_json(
        addr,
        "POST",
        "/api/v1/plugins/router/activate",
        None,
        "{\"hash\": \"00\"}",
    )
    .await;
    assert_eq!(activated.status, 401, "{}", activated.text);
    assert_eq!(feed_breaker(addr, None).await, "closed", "nothing was done");
    admin.server.shutdown().await;

    let admin = admin_with_routes(
        AdminConfig {
            allow_unauthenticated_writes: true,
            ..admin_config(None)
        },
        Some(embedded()),
    )
    .await;
    let addr = admin.server.addr();
    let forced = request(
        addr,
        "POST",
        "/api/v1/breakers/endpoint/feed-0/force-open",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.text);
    assert_eq!(feed_breaker(addr, None).await, "forced-open");
    let stopped = request(
        addr,
        "POST",
        "/api/v1/demo/endpoints/slow/stop",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!((stopped.status, stopped.text.as_str()), (200, "stopped"));
    admin.server.shutdown().await;
}

/// An upload must say it is a component: any other content type is 415 before the body is
/// looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_the_wasm_content_type() {
    let Some(built) = built_plugins() else { return };
    let (server, policies) = admin(Some("t")).await;
    let addr = server.addr();
    let component = std::fs::read(built.join("test-pick-first.wasm")).unwrap();
    for content_type in [
        Some("application/json"),
        Some("application/octet-stream"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut headers = vec![("authorization", "Bearer t")];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }
        let answer = request_with(
            addr,
            "POST",
            "/api/v1/plugins/router?name=first",
            &headers,
            component.clone(),
        )
        .await;
        assert_eq!(answer.status, 415, "{content_type:?}: {}", answer.text);
        assert!(
            error_of(&answer).contains("Content-Type: application/wasm"),
            "{}",
            answer.text
        );
    }
    let router = policies.slot(sluice_config::SlotKind::Router);
    assert!(router.active().is_none());
    let loaded = upload(
        addr,
        "/api/v1/plugins/router?name=first",
        Some("t"),
        component,
    )
    .await;
    assert_eq!(loaded.status, 201, "{}", loaded.text);
    assert_eq!(router.active().unwrap().info().name, "first");
    server.shutdown().await;
}

/// `[admin.tls]`: the API answers over HTTPS (its own origin is then `https://`), plain HTTP
/// gets no answer, and `sluice plugin load --ca` uploads to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_and_the_cli_uploads_over_it() {
    let Some(built) = built_plugins() else { return };
    let pki = sluice_tests::TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("admin.pem"),
        dir.path().join("admin.key"),
    );
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let admin = admin_with(AdminConfig {
        tls: Some(AdminTls {
            cert_file: cert,
            key_file: key,
        }),
        ..admin_config(Some("t"))
    })
    .await;
    let addr = admin.server.addr();
    assert_eq!(admin.server.url(), format!("https://{addr}"));

    let bearer = [("authorization", "Bearer t")];
    let listed = request_tls(addr, &ca, "GET", "/api/v1/plugins", &bearer, Vec::new()).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json["slots"].as_array().unwrap().len(), 4);
    let https = format!("https://{addr}");
    let http = format!("http://{addr}");
    for (origin, status) in [(https.as_str(), 200), (http.as_str(), 403)] {
        let answer = request_tls(
            addr,
            &ca,
            "GET",
            "/api/v1/stats",
            &[bearer[0], ("origin", origin)],
            Vec::new(),
        )
        .await;
        assert_eq!(answer.status, status, "{origin}: {}", answer.text);
    }
    let page = request_tls(addr, &ca, "GET", "/", &[], Vec::new()).await;
    assert!(page.text.contains("<title>Sluice</title>"), "{}", page.text);

    // Plain HTTP to the TLS port: the handshake fails, no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    let file = built.join("test-pick-last.wasm");
    let load = |ca: Option<std::path::PathBuf>| {
        let mut command = std::process::Command::new(sluice_tests::process::binary("sluice"));
        command
            .args([
                "plugin", "load", "--slot", "router", "--token", "t", "--admin",
            ])
            .arg(format!("https://{addr}"))
            .arg(&file)
            .env_remove("SLUICE_ADMIN_TOKEN");
        if let Some(ca) = ca {
            command.arg("--ca").arg(ca);
        }
        tokio::task::spawn_blocking(move || {
            let output = command.output().expect("sluice runs");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.success(), text)
        })
    };
    let (ok, text) = load(None).await.unwrap();
    assert!(!ok, "the test CA is not a public one: {text}");
    assert!(
        text.contains("TLS handshake failed") && text.contains("--ca"),
        "{text}"
    );
    let (ok, text) = load(Some(ca.clone())).await.unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("as router active v1"), "{text}");
    let router = admin.policies.slot(sluice_config::SlotKind::Router);
    assert_eq!(router.active().unwrap().info().name, "test-pick-last");
    admin.server.shutdown().await;
}
