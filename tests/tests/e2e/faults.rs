//! Peers that misbehave: garbage on either side, upstreams and monitors that vanish. Each
//! affected call gets a clear status and every other call carries on.

use std::time::Duration;

use sluice_tests::pb::EchoRequest;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_monitor_sending_garbage_is_dropped_and_others_are_served() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    // Sheds the peer that sends a valid preface and then stalls mid-frame.
    config.server.idle_timeout = Duration::from_millis(500);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 100.0, 8, 0), "good").await;
    stream.message().await.unwrap().unwrap();

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(garbage).await.unwrap();
        let mut buf = vec![0; 1024];
        // The proxy answers with at most an HTTP/2 GOAWAY, then closes the connection.
        let closed = bounded(LIMIT, "garbage connection closes", async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed);
    }
    // The good monitor never noticed.
    for _ in 0..10 {
        bounded(LIMIT, "good stream", stream.message())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(proxy.snapshot().stats.downstream_streams_active, 1);
}

#[tokio::test]
async fn an_upstream_sending_garbage_gives_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await;
            let _ = tcp.shutdown().await;
        }
    });
    let config = config_with_endpoint("junk", &format!("http://{addr}"));
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let status = bounded(
        LIMIT,
        "call",
        c.echo(as_monitor(EchoRequest::default(), "m")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("junk") && status.message().contains("HTTP/2"),
        "{status:?}"
    );
    assert_eq!(proxy.snapshot().connections, 0);
    server.abort();
}

#[tokio::test]
async fn an_upstream_that_dies_mid_stream_ends_its_streams_and_traffic_moves_on() {
    let doomed = feed("doomed").await;
    let survivor = feed("survivor").await;
    let mut config = config_for(&[&doomed, &survivor]);
    // One stream per connection: the two streams land on different endpoints.
    config.classes.event.max_streams_per_connection = 1;
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut streams = Vec::new();
    for i in 0..2 {
        let response = c
            .subscribe(as_monitor(subscribe(&format!("t{i}"), 100.0, 8, 0), "m"))
            .await
            .unwrap();
        let name = response
            .metadata()
            .get(sluice_feed::headers::FEED_NAME)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        streams.push((name, response.into_inner()));
    }
    assert_ne!(
        streams[0].0, streams[1].0,
        "streams were spread over both endpoints"
    );
    drop(doomed);
    for (name, stream) in &mut streams {
        let outcome = bounded(LIMIT, "stream after the upstream died", async {
            for _ in 0..20 {
                stream.message().await?;
            }
            Ok::<_, tonic::Status>(())
        })
        .await;
        if name == "doomed" {
            let status = outcome.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        } else {
            outcome.expect("the stream on the surviving endpoint is unaffected");
        }
    }
    // New calls go to the endpoint that is still there.
    for _ in 0..3 {
        let reply = bounded(
            LIMIT,
            "echo",
            c.echo(as_monitor(EchoRequest::default(), "m")),
        )
        .await;
        reply.expect("served by the survivor");
    }
    assert!(proxy.snapshot().stats.upstream_failures_total >= 1);
}

#[tokio::test]
async fn a_monitor_that_vanishes_releases_its_upstream_stream() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    {
        let mut c = client(proxy.addr()).await;
        let mut stream = subscribe_on(&mut c, subscribe("t", 100.0, 8, 0), "m").await;
        stream.message().await.unwrap().unwrap();
        // Dropping the client and its channel closes the TCP connection under the stream.
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            upstream.stats.snapshot().subscribe_active == 0
                && proxy.snapshot().stats.upstream_streams_active == 0
        })
        .await,
        "{:?}",
        upstream.stats.snapshot()
    );
}
