//! Alert notifications reach real webhooks on loopback: once per incident state, with the
//! configured headers, retried through outages and 5xx, given up on without delaying others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use parking_lot::Mutex;
use sluice_analytics::alerts::{Alerter, Conditions, Notification, Notifier, Observation};
use sluice_config::{AlertsConfig, BreakerScope};
use sluice_tests::{bounded, eventually};

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 to everything.
    Ok,
    /// This status to the first `n` requests, 200 afterwards.
    FailFirst(usize, u16),
    /// Always this status.
    Always(u16),
}

/// One request the receiver saw.
#[derive(Clone)]
struct Received {
    status: u16,
    headers: HeaderMap,
    body: serde_json::Value,
}

struct Shared {
    answer: Answer,
    seen: AtomicUsize,
    requests: Mutex<Vec<Received>>,
}

/// A webhook receiver on loopback that records what it gets.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        Self::start_at("127.0.0.1:0".parse().unwrap(), answer).await
    }

    async fn start_at(addr: SocketAddr, answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            answer,
            seen: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn all(&self) -> Vec<Received> {
        self.shared.requests.lock().clone()
    }

    /// The requests answered with 2xx.
    fn accepted(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = shared.seen.fetch_add(1, Ordering::SeqCst);
    let status = match shared.answer {
        Answer::Ok => 200,
        Answer::FailFirst(first, status) if n < first => status,
        Answer::FailFirst(..) => 200,
        Answer::Always(status) => status,
    };
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    shared.requests.lock().push(Received {
        status,
        headers,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

fn alerts_config(webhooks: serde_json::Value, retry: serde_json::Value) -> AlertsConfig {
    serde_json::from_value(serde_json::json!({ "webhooks": webhooks, "retry": retry })).unwrap()
}

fn fast_retry(attempts: u32) -> serde_json::Value {
    serde_json::json!({ "attempts": attempts, "initial_backoff": "50ms", "max_backoff": "200ms" })
}

/// One firing notification for an open endpoint breaker.
fn one_firing(config: &AlertsConfig) -> Notification {
    let mut alerter = Alerter::new(config);
    let open = alerter
        .rules()
        .breaker(BreakerScope::Endpoint, "primary", true);
    let mut fired = alerter.evaluate(&Conditions {
        now_ms: 1_000,
        observations: vec![open],
    });
    assert_eq!(fired.len(), 1);
    fired.remove(0)
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_incident_is_delivered_once_firing_and_once_resolved() {
    let receiver = Receiver::start(Answer::Ok).await;
    let config = alerts_config(
        serde_json::json!([{
            "url": receiver.url(),
            "headers": { "Authorization": "Bearer hook-token" },
            "timeout": "2s",
        }]),
        fast_retry(3),
    );
    let notifier = Notifier::spawn(&config);
    let mut alerter = Alerter::new(&config);
    let rules = alerter.rules().clone();
    let down = |unhealthy: bool| -> Vec<Observation> {
        vec![rules.endpoint("primary", unhealthy, "3 health checks failed")]
    };

    // Unhealthy for 10 minutes, observed every 5 s (the rule's `for` is 5 min); then healthy.
    let mut now_ms = 1_700_000_000_000_i64;
    let started_ms = now_ms;
    for _ in 0..120 {
        let conditions = Conditions {
            now_ms,
            observations: down(true),
        };
        for n in alerter.evaluate(&conditions) {
            notifier.notify(n);
        }
        now_ms += 5_000;
    }
    for _ in 0..20 {
        let conditions = Conditions {
            now_ms,
            observations: down(false),
        };
        for n in alerter.evaluate(&conditions) {
            notifier.notify(n);
        }
        now_ms += 5_000;
    }

    let both = eventually(Duration::from_secs(10), || receiver.all().len() >= 2).await;
    assert!(both, "got {} notifications", receiver.all().len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.all();
    assert_eq!(got.len(), 2, "exactly one firing and one resolved");

    let (firing, resolved) = (&got[0], &got[1]);
    let id = format!("endpoint_unhealthy:endpoint:primary:{started_ms}");
    assert_eq!(firing.body["state"], "firing");
    assert_eq!(resolved.body["state"], "resolved");
    for r in [firing, resolved] {
        assert_eq!(r.body["incident_id"], id.as_str());
        assert_eq!(r.body["rule"], "endpoint_unhealthy");
        assert_eq!(r.body["subject"], "endpoint:primary");
        assert_eq!(r.body["severity"], "critical");
        assert_eq!(r.body["source"], "sluice");
        assert_eq!(r.body["started_ms"], started_ms);
        assert!(r.body["summary"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(header(r, "content-type"), "application/json");
        assert_eq!(header(r, "x-sluice-incident"), id);
        assert_eq!(header(r, "authorization"), "Bearer hook-token");
    }
    assert_eq!(firing.body["value"], 1.0);
    assert_eq!(firing.body["ts_ms"], started_ms + 300_000);
    assert!(
        firing.body["summary"]
            .as_str()
            .unwrap()
            .contains("3 health checks failed"),
        "{}",
        firing.body["summary"]
    );
    assert_eq!(resolved.body["value"], 0.0);
    assert_eq!(resolved.body["ts_ms"], started_ms + 600_000);

    let stats = notifier.stats();
    assert_eq!((stats.delivered, stats.failed, stats.dropped), (2, 0, 0));
    bounded(
        Duration::from_secs(5),
        "notifier shutdown",
        notifier.shutdown(Duration::from_secs(1)),
    )
    .await;
}

#[tokio::test]
async fn delivery_is_retried_until_the_webhook_comes_up() {
    // Reserve a port, then free it: connections are refused until the receiver starts there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = alerts_config(
        serde_json::json!([{ "url": format!("http://{addr}/hook"), "timeout": "1s" }]),
        fast_retry(30),
    );
    let notifier = Notifier::spawn(&config);
    let firing = one_firing(&config);
    let id = firing.incident_id.clone();
    notifier.notify(firing);

    let retried = eventually(Duration::from_secs(5), || notifier.stats().retries >= 2).await;
    assert!(retried, "no retries while the webhook was down");
    assert_eq!(notifier.stats().delivered, 0);

    let receiver = Receiver::start_at(addr, Answer::Ok).await;
    let delivered = eventually(Duration::from_secs(10), || notifier.stats().delivered == 1).await;
    assert!(delivered, "{:?}", notifier.stats());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.all();
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert_eq!(got[0].body["incident_id"], id.as_str());
    assert_eq!(header(&got[0], "x-sluice-incident"), id);
    let stats = notifier.stats();
    assert!(stats.retries >= 2, "{stats:?}");
    assert_eq!((stats.delivered, stats.failed), (1, 0));
    notifier.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn delivery_is_retried_through_503s() {
    let receiver = Receiver::start(Answer::FailFirst(2, 503)).await;
    let config = alerts_config(
        serde_json::json!([{ "url": receiver.url() }]),
        fast_retry(5),
    );
    let notifier = Notifier::spawn(&config);
    notifier.notify(one_firing(&config));

    let delivered = eventually(Duration::from_secs(10), || notifier.stats().delivered == 1).await;
    assert!(delivered, "{:?}", notifier.stats());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), 3, "two 503s, then one success");
    assert_eq!(receiver.accepted().len(), 1);
    let stats = notifier.stats();
    assert_eq!((stats.delivered, stats.failed, stats.retries), (1, 0, 2));
    notifier.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failing_webhook_gives_up_without_delaying_another() {
    let broken = Receiver::start(Answer::Always(500)).await;
    let working = Receiver::start(Answer::Ok).await;
    // Pauses of 0.5-1 s between the broken webhook's attempts.
    let config = alerts_config(
        serde_json::json!([{ "url": broken.url() }, { "url": working.url() }]),
        serde_json::json!({ "attempts": 3, "initial_backoff": "1s", "max_backoff": "1s" }),
    );
    let notifier = Notifier::spawn(&config);
    notifier.notify(one_firing(&config));

    let prompt = eventually(Duration::from_secs(5), || working.accepted().len() == 1).await;
    assert!(prompt, "the working webhook got nothing");
    assert_eq!(
        notifier.stats().failed,
        0,
        "the working webhook waited for the broken one"
    );

    let gave_up = eventually(Duration::from_secs(15), || notifier.stats().failed == 1).await;
    assert!(gave_up, "{:?}", notifier.stats());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broken.all().len(), 3, "one request per attempt");
    assert_eq!(working.all().len(), 1);
    let stats = notifier.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.retries, stats.dropped),
        (1, 1, 2, 0)
    );
    notifier.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn other_4xx_answers_are_not_retried() {
    let receiver = Receiver::start(Answer::Always(404)).await;
    let config = alerts_config(
        serde_json::json!([{ "url": receiver.url() }]),
        fast_retry(5),
    );
    let notifier = Notifier::spawn(&config);
    notifier.notify(one_firing(&config));
    let failed = eventually(Duration::from_secs(5), || notifier.stats().failed == 1).await;
    assert!(failed, "{:?}", notifier.stats());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.all().len(), 1);
    assert_eq!(notifier.stats().retries, 0);
    notifier.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_flushes_queued_notifications() {
    let receiver = Receiver::start(Answer::Ok).await;
    let config = alerts_config(
        serde_json::json!([{ "url": receiver.url() }]),
        fast_retry(3),
    );
    let notifier = Notifier::spawn(&config);
    let mut alerter = Alerter::new(&config);
    let rules = alerter.rules().clone();
    let observations = (0..20)
        .map(|i| rules.breaker(BreakerScope::Monitor, &format!("m{i}"), true))
        .collect();
    for n in alerter.evaluate(&Conditions {
        now_ms: 1,
        observations,
    }) {
        notifier.notify(n);
    }
    bounded(
        Duration::from_secs(10),
        "notifier shutdown",
        notifier.shutdown(Duration::from_secs(5)),
    )
    .await;
    let got = receiver.accepted();
    assert_eq!(got.len(), 20);
    // In order: the alerter orders by rule and subject, the webhook's task keeps that order.
    let subjects: Vec<String> = got
        .iter()
        .map(|r| r.body["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut sorted = subjects.clone();
    sorted.sort();
    assert_eq!(subjects, sorted);
}

/// End to end: an operator forces an endpoint's breaker open on a running pool; the analytics
/// loop's alert rules fire once to the webhook, and resolve once when it is released.
#[tokio::test]
async fn a_forced_open_breaker_alerts_the_webhook_once_through_the_analytics_loop() {
    use sluice_proxy::breaker::Override;
    let receiver = Receiver::start(Answer::Ok).await;
    let feed = sluice_tests::feed("a").await;
    let store = tempfile::tempdir().unwrap();
    let mut config = sluice_tests::config_for(&[&feed]);
    config.store.path = store.path().join("sluice.db");
    config.scaling.enabled = false;
    config.analytics.period = Duration::from_millis(100);
    config.alerts = alerts_config(
        serde_json::json!([{ "url": receiver.url() }]),
        fast_retry(3),
    );
    let config = Arc::new(config);
    let proxy = sluice_tests::sluice((*config).clone()).await;
    let plugins = config.plugins.clone();
    let policies = tokio::task::spawn_blocking(move || sluice_policy::Policies::new(&plugins))
        .await
        .unwrap()
        .unwrap();
    let analytics =
        sluice_analytics::Analytics::open(Arc::clone(&config), proxy.view(), policies).unwrap();
    let loops = analytics.spawn();

    let view = proxy.view();
    view.override_breaker(BreakerScope::Endpoint, "feed-0", Some(Override::ForceOpen))
        .expect("endpoint breaker");
    let fired = eventually(Duration::from_secs(10), || !receiver.accepted().is_empty()).await;
    assert!(fired, "no alert reached the webhook");
    // Many more analytics runs while it stays open: still one notification.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "one incident, one firing notification");
    let body = &accepted[0].body;
    assert_eq!(body["rule"], "breaker_open");
    assert_eq!(body["state"], "firing");
    assert_eq!(body["subject"], "endpoint:feed-0");
    let active = analytics.alerts();
    let firing: Vec<_> = active
        .iter()
        .filter(|a| a.state == sluice_analytics::alerts::AlertState::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{active:#?}");

    view.override_breaker(BreakerScope::Endpoint, "feed-0", None)
        .expect("released");
    let resolved = eventually(Duration::from_secs(10), || receiver.accepted().len() == 2).await;
    assert!(resolved, "no resolved notification");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "one firing and one resolved");
    assert_eq!(accepted[1].body["state"], "resolved");
    assert_eq!(
        accepted[0].body["incident_id"],
        accepted[1].body["incident_id"]
    );
    bounded(Duration::from_secs(10), "loops stop", loops.shutdown()).await;
}
