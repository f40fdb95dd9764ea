//! Shutting down: calls that can finish within the grace period do; the rest end with a clear
//! `UNAVAILABLE`, never a bare reset or a hang.

use std::time::Duration;

use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn shutdown_lets_calls_finish_within_the_grace_period() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.server.shutdown_grace = Duration::from_secs(10);
    let proxy = sluice(config).await;
    let addr = proxy.addr();
    let mut c = client(addr).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 50.0, 8, 20), "m").await;
    stream.message().await.unwrap().unwrap();
    let shutdown = tokio::spawn(proxy.shutdown());
    let mut received = 1;
    while bounded(LIMIT, "stream", stream.message())
        .await
        .unwrap()
        .is_some()
    {
        received += 1;
    }
    assert_eq!(received, 20);
    bounded(LIMIT, "shutdown", shutdown).await.unwrap();
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_ends_endless_streams_with_unavailable() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.server.shutdown_grace = Duration::from_millis(300);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 50.0, 8, 0), "m").await;
    stream.message().await.unwrap().unwrap();
    let shutdown = tokio::spawn(proxy.shutdown());
    let status = bounded(LIMIT, "stream until shutdown", status_at_end(&mut stream)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    bounded(LIMIT, "shutdown", shutdown).await.unwrap();
    assert!(
        upstream_subscriptions_reach(&upstream, 0).await,
        "the upstream stream outlived the shutdown"
    );
}
