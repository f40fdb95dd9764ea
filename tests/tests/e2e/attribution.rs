//! Attribution: a monitor learns from Sluice's response metadata which endpoint served its call
//! (headers), every endpoint that carried it and how often it was resumed (trailers), and the
//! decision log finds the call's placements by the id it was given.

use std::time::Duration;

use sluice_config::{EndpointConfig, MethodConfig, ResumeMode};
use sluice_feed::FeedHandle;
use sluice_tests::pb::EchoRequest;
use sluice_tests::plugins::sluice_with_policies;
use sluice_tests::*;
use tonic::metadata::MetadataMap;

const LIMIT: Duration = Duration::from_secs(30);

fn text<'a>(metadata: &'a MetadataMap, name: &str) -> &'a str {
    metadata
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {metadata:?}"))
        .to_str()
        .expect("ASCII")
}

/// A primary (region `eu-west`) and a secondary (priority 1, region `us-east`).
fn two_regions(primary: &FeedHandle, secondary: &FeedHandle) -> sluice_config::Config {
    let mut config = config_with_endpoint("primary", &format!("http://{}", primary.addr));
    config.endpoints[0].region = "eu-west".to_owned();
    config.endpoints.push(EndpointConfig {
        priority: 1,
        region: "us-east".to_owned(),
        ..endpoint("secondary", &format!("http://{}", secondary.addr))
    });
    config
}

#[tokio::test]
async fn a_unary_call_names_its_endpoint_region_and_id() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let (proxy, policies) = sluice_with_policies(two_regions(&primary, &secondary)).await;
    let mut c = client(proxy.addr()).await;
    // The first call may open the connection (no router decision); the next is routed.
    c.echo(as_monitor(EchoRequest::default(), "m"))
        .await
        .expect("echo");
    let reply = c
        .echo(as_monitor(EchoRequest::default(), "m"))
        .await
        .expect("echo");
    // A unary response's trailers are merged into its metadata.
    let metadata = reply.metadata();
    assert_eq!(text(metadata, "x-sluice-endpoint"), "primary");
    assert_eq!(text(metadata, "x-sluice-region"), "eu-west");
    assert_eq!(text(metadata, "x-sluice-endpoints"), "primary");
    assert_eq!(text(metadata, "x-sluice-resumes"), "0");
    let id: u64 = text(metadata, "x-sluice-stream").parse().expect("a number");
    let placed: Vec<_> = policies
        .router()
        .recent(256)
        .into_iter()
        .filter(|d| d.stream == id)
        .collect();
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert_eq!(&*placed[0].monitor, "m");
    // Each call has its own id.
    let again = c
        .echo(as_monitor(EchoRequest::default(), "m"))
        .await
        .expect("echo");
    assert_ne!(text(again.metadata(), "x-sluice-stream"), id.to_string());
}

#[tokio::test]
async fn a_resumed_stream_lists_every_endpoint_and_its_resumes_in_its_trailers() {
    let mut primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = two_regions(&primary, &secondary);
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }];
    let (proxy, _policies) = sluice_with_policies(config).await;
    let mut c = client(proxy.addr()).await;
    let response = c
        .subscribe(as_monitor(subscribe("t", 200.0, 8, 200), "m"))
        .await
        .expect("subscribe");
    assert_eq!(text(response.metadata(), "x-sluice-endpoint"), "primary");
    let mut stream = response.into_inner();
    for _ in 0..20 {
        stream.message().await.unwrap().unwrap();
    }
    // GOAWAY: the stream moves to the secondary, and (the replayed request asking for 200
    // events again) ends there.
    primary.goaway();
    bounded(LIMIT, "the stream's end", async {
        while stream.message().await.expect("no error").is_some() {}
    })
    .await;
    let trailers = stream.trailers().await.expect("trailers").expect("some");
    assert_eq!(text(&trailers, "x-sluice-endpoints"), "primary,secondary");
    assert_eq!(text(&trailers, "x-sluice-resumes"), "1");
}

#[tokio::test]
async fn subscribers_of_a_shared_stream_are_told_its_endpoint_and_its_opener() {
    let primary = feed("primary").await;
    let secondary = feed("secondary").await;
    let mut config = two_regions(&primary, &secondary);
    config.methods = vec![shared_subscribe(64)];
    let (proxy, _policies) = sluice_with_policies(config).await;
    let mut c = client(proxy.addr()).await;
    let first = c
        .subscribe(as_monitor(subscribe("shared", 50.0, 8, 0), "m"))
        .await
        .expect("first subscriber");
    let second = c
        .subscribe(as_monitor(subscribe("shared", 50.0, 8, 0), "m"))
        .await
        .expect("second subscriber");
    assert!(upstream_subscriptions_reach(&primary, 1).await);
    for response in [&first, &second] {
        assert_eq!(text(response.metadata(), "x-sluice-endpoint"), "primary");
        assert_eq!(text(response.metadata(), "x-sluice-region"), "eu-west");
    }
    assert_eq!(
        text(first.metadata(), "x-sluice-stream"),
        text(second.metadata(), "x-sluice-stream"),
        "both ride the placement the first call made"
    );
}
