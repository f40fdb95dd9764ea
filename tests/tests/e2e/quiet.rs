//! Quiet streams are not dead ones: subscriptions whose first event comes long after their
//! headers (a narrow filter on a Geyser stream) leave their endpoint's breakers closed, its
//! health `healthy` and new streams on it, while a method that asks to be held to its first
//! message (`[[methods]] first_message_timeout`) still is, and a stream that breaks after its
//! headers still counts as the failure it is.
//!
//! The breakers' timers are shortened (a 300 ms first-message timeout, 200 ms slow calls) so
//! that a first event after 1.5 s is as late, for them, as one after 15 s with the defaults.

use std::time::Duration;

use sluice_config::{Config, MethodConfig};
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_feed::FeedHandle;
use sluice_tests::*;

/// How long each quiet subscription waits for its first event.
const QUIET_FOR: &str = "1500";

/// A primary and a secondary endpoint, with breakers that judge a stream within 300 ms and
/// trip on 5 failures or 5 slow calls.
fn sharp(primary: &FeedHandle, secondary: &FeedHandle) -> Config {
    let mut config = config_with_endpoint("primary", &format!("http://{}", primary.addr));
    config.endpoints.push(sluice_config::EndpointConfig {
        priority: 1,
        ..endpoint("secondary", &format!("http://{}", secondary.addr))
    });
    config.breakers.first_message_timeout = Duration::from_millis(300);
    for table in [
        &mut config.breakers.connection,
        &mut config.breakers.endpoint,
    ] {
        table.slow_call_duration = Some(Duration::from_millis(200));
        table.minimum_volume = Some(5);
    }
    config
}

/// Checks that the primary's endpoint breaker opened at some point.
fn assert_primary_breaker_opened(proxy: &sluice_proxy::ProxyHandle) {
    let opened = proxy
        .breaker_events(0)
        .into_iter()
        .any(|e| e.to == BreakerState::Open && &*e.name == "primary");
    assert!(opened, "events: {:?}", proxy.breaker_events(0));
}

/// Opens ten quiet subscriptions and waits (up to 10 s) for each one's first event; returns
/// the endpoint each was served by.
async fn ten_quiet_subscriptions(addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = client(addr).await;
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut request = as_monitor(subscribe(&format!("narrow-{i}"), 100.0, 8, 1), "quiet");
        request
            .metadata_mut()
            .insert("x-feed-delay-ms", QUIET_FOR.parse().expect("ascii"));
        let response = client.subscribe(request).await.expect("subscribe");
        let served_by = response
            .metadata()
            .get("x-feed-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        streams.push((served_by, response.into_inner()));
    }
    let mut served = Vec::new();
    for (served_by, mut stream) in streams {
        bounded(Duration::from_secs(10), "the first event", stream.message())
            .await
            .expect("no error")
            .expect("an event");
        served.push(served_by);
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_subscriptions_leave_their_endpoint_healthy_and_in_use() {
    // The plain relay, a resumable method and a shared one each judge their upstream streams.
    let relays = [
        ("plain", None),
        (
            "resumable",
            Some(MethodConfig {
                resume: sluice_config::ResumeMode::ReplayLast,
                ..MethodConfig::new(SUBSCRIBE)
            }),
        ),
        ("shared", Some(shared_subscribe(16))),
    ];
    for (relay, method) in relays {
        let primary = feed("primary").await;
        let secondary = feed("secondary").await;
        let mut config = sharp(&primary, &secondary);
        config.methods.extend(method);
        let proxy = sluice(config).await;
        let served = ten_quiet_subscriptions(proxy.addr()).await;
        assert!(
            served.iter().all(|name| name == "primary"),
            "{relay}: {served:?}"
        );
        let endpoint = &proxy.endpoints()[0];
        assert_eq!(
            endpoint.breaker.state,
            BreakerState::Closed,
            "{relay}: {endpoint:?}"
        );
        assert_eq!(
            endpoint.breaker.consecutive_failures, 0,
            "{relay}: {endpoint:?}"
        );
        assert_eq!(
            endpoint.health.health,
            Health::Healthy,
            "{relay}: {endpoint:?}"
        );
        // New streams still go to the primary.
        let again = ten_quiet_subscriptions(proxy.addr()).await;
        assert!(
            again.iter().all(|name| name == "primary"),
            "{relay}: {again:?}"
        );
        assert_eq!(proxy.endpoints()[0].breaker.state, BreakerState::Closed);
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_held_to_its_first_message_counts_late_ones() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = sharp(&primary, &secondary);
    config.methods.push(MethodConfig {
        first_message_timeout: Some(Duration::from_millis(300)),
        ..MethodConfig::new(SUBSCRIBE)
    });
    let proxy = sluice(config).await;
    // The streams are served all the same; the breaker hears of every late first event.
    let served = ten_quiet_subscriptions(proxy.addr()).await;
    assert_eq!(served.len(), 10);
    assert_primary_breaker_opened(&proxy);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_after_its_headers_still_counts_against_its_endpoint() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let faulty = sluice_tests::fault::FaultProxy::start(primary.addr)
        .await
        .expect("fault proxy");
    let mut config = sharp(&primary, &secondary);
    config.endpoints[0].url = faulty.url();
    // The breaks come well before the first-message deadline, and only a run of failures (not
    // a rate of one in two) may trip the breaker.
    config.breakers.first_message_timeout = Duration::from_secs(10);
    config.breakers.endpoint.failure_rate = Some(0.6);
    config.breakers.endpoint.failure_threshold = Some(5);
    let proxy = sluice(config).await;
    let mut client = client(proxy.addr()).await;
    for i in 0..5 {
        let mut request = as_monitor(subscribe(&format!("doomed-{i}"), 100.0, 8, 1), "quiet");
        request
            .metadata_mut()
            .insert("x-feed-delay-ms", "60000".parse().expect("ascii"));
        // Headers come at once; then the connection is reset under the quiet stream.
        let mut stream = bounded(Duration::from_secs(5), "headers", client.subscribe(request))
            .await
            .expect("subscribe")
            .into_inner();
        faulty.reset_all();
        let ended = bounded(Duration::from_secs(5), "the break", stream.message()).await;
        assert!(ended.is_err(), "stream {i} broke: {ended:?}");
    }
    assert_primary_breaker_opened(&proxy);
    proxy.shutdown().await;
}
