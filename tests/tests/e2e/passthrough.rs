//! Sluice is transparent: every call type, metadata, statuses, trailers, deadlines and
//! cancellation behave through it exactly as they do against the upstream directly.

use std::time::{Duration, Instant};

use sluice_feed::headers;
use sluice_tests::pb::feed_client::FeedClient;
use sluice_tests::pb::{ChatMessage, EchoRequest};
use sluice_tests::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

const LIMIT: Duration = Duration::from_secs(20);

/// What one pass over the four call types observed (timestamps excluded).
#[derive(Debug, PartialEq)]
struct Observed {
    echo_payload: Vec<u8>,
    echo_text: String,
    events: Vec<(u64, usize, String)>,
    chat: Vec<(u64, String, Vec<u8>)>,
    collected: (u64, u64),
}

async fn exercise(mut client: FeedClient<Channel>) -> Observed {
    let echo = client
        .echo(as_monitor(
            EchoRequest {
                payload: vec![1, 2, 3].into(),
                text: "hello".into(),
            },
            "m1",
        ))
        .await
        .expect("echo")
        .into_inner();
    let mut stream = client
        .subscribe(as_monitor(subscribe("t", 0.0, 32, 50), "m1"))
        .await
        .expect("subscribe")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("event") {
        events.push((event.seq, event.payload.len(), event.topic));
    }
    let outgoing = tokio_stream::iter((0..20u64).map(|seq| ChatMessage {
        seq,
        text: format!("msg {seq}"),
        sent_at_ns: 0,
        payload: vec![seq as u8; seq as usize].into(),
    }));
    let mut replies = client
        .chat(as_monitor(outgoing, "m1"))
        .await
        .expect("chat")
        .into_inner();
    let mut chat = Vec::new();
    while let Some(reply) = replies.message().await.expect("chat reply") {
        chat.push((reply.seq, reply.text, reply.payload.to_vec()));
    }
    let uploads = tokio_stream::iter((0..30u8).map(|i| EchoRequest {
        payload: vec![i; 100].into(),
        text: String::new(),
    }));
    let collected = client
        .collect(as_monitor(uploads, "m1"))
        .await
        .expect("collect")
        .into_inner();
    Observed {
        echo_payload: echo.payload.to_vec(),
        echo_text: echo.text,
        events,
        chat,
        collected: (collected.messages, collected.bytes),
    }
}

#[tokio::test]
async fn all_four_call_types_match_direct() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let direct = bounded(LIMIT, "direct calls", exercise(client(upstream.addr).await)).await;
    let proxied = bounded(LIMIT, "proxied calls", exercise(client(proxy.addr()).await)).await;
    assert_eq!(direct.events.len(), 50);
    assert_eq!(direct.chat.len(), 20);
    assert_eq!(direct.collected.0, 30);
    assert_eq!(direct, proxied);
    assert!(proxy.snapshot().stats.upstream_streams_total >= 4);
}

fn failing_echo(code: i32, message: &str) -> Request<EchoRequest> {
    let mut request = as_monitor(EchoRequest::default(), "m1");
    let md = request.metadata_mut();
    md.insert(headers::FAIL_CODE, code.to_string().parse().unwrap());
    md.insert(headers::FAIL_MESSAGE, message.parse().unwrap());
    md.insert("x-echo-color", "blue".parse().unwrap());
    md.insert(headers::ECHO_TRAILER, "t-1".parse().unwrap());
    request
}

#[tokio::test]
async fn statuses_details_and_trailers_pass_through_unchanged() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let mut statuses = Vec::new();
    for addr in [upstream.addr, proxy.addr()] {
        let mut c = client(addr).await;
        let status = c.echo(failing_echo(5, "no such thing")).await.unwrap_err();
        statuses.push(status);
    }
    for status in &statuses {
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such thing");
        assert_eq!(status.details(), headers::INJECTED_DETAILS);
        assert_eq!(status.metadata().get(headers::DETAIL).unwrap(), "injected");
        assert_eq!(status.metadata().get(headers::TRAILER_ECHO).unwrap(), "t-1");
        assert_eq!(status.metadata().get("x-echo-color").unwrap(), "blue");
    }

    // Every code the upstream can produce comes back as it was sent.
    let mut c = client(proxy.addr()).await;
    for code in [1, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] {
        let status = c.echo(failing_echo(code, "x")).await.unwrap_err();
        assert_eq!(status.code() as i32, code);
    }
}

#[tokio::test]
async fn success_headers_and_trailers_pass_through() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let mut c = client(proxy.addr()).await;
    let mut request = as_monitor(subscribe("t", 0.0, 8, 3), "m1");
    request
        .metadata_mut()
        .insert("x-echo-a", "1".parse().unwrap());
    request
        .metadata_mut()
        .insert(headers::ECHO_TRAILER, "done".parse().unwrap());
    request.metadata_mut().insert_bin(
        "x-echo-blob-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0, 255, 7]),
    );
    let response = bounded(LIMIT, "subscribe", c.subscribe(request))
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-echo-a").unwrap(), "1");
    assert_eq!(
        response
            .metadata()
            .get_bin("x-echo-blob-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 255, 7]
    );
    assert_eq!(response.metadata().get(headers::FEED_NAME).unwrap(), "up");
    let mut stream = response.into_inner();
    let mut count = 0;
    while stream.message().await.unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 3);
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get(headers::TRAILER_ECHO).unwrap(), "done");
}

#[tokio::test]
async fn sluice_enforces_and_forwards_the_deadline() {
    // The upstream never answers, so only Sluice can end the call.
    let hole = BlackHole::start().await;
    let config = config_with_endpoint("hole", &format!("http://{}", hole.addr));
    let proxy = sluice(config).await;
    let outcome = bounded(
        LIMIT,
        "call with a deadline",
        raw_grpc_call(
            proxy.addr(),
            "/any.Service/Method",
            &[("grpc-timeout", "300m"), ("x-sluice-monitor", "m1")],
        ),
    )
    .await;
    assert_eq!(outcome.grpc_status.as_deref(), Some("4"), "{outcome:?}");
    assert!(outcome.elapsed >= Duration::from_millis(290), "{outcome:?}");
    let forwarded = hole.requests.lock()[0]["grpc-timeout"]
        .to_str()
        .unwrap()
        .to_owned();
    let forwarded = sluice_proxy::grpc::timeout::parse(forwarded.as_bytes()).unwrap();
    assert!(
        forwarded <= Duration::from_millis(300) && forwarded > Duration::from_millis(200),
        "{forwarded:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || hole
            .resets
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the upstream stream was not reset at the deadline"
    );
    assert_eq!(proxy.snapshot().stats.deadline_exceeded_total, 1);
}

#[tokio::test]
async fn a_tonic_deadline_ends_the_stream_on_both_sides() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let mut c = client(proxy.addr()).await;
    let mut request = as_monitor(subscribe("t", 20.0, 8, 0), "m1");
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let mut stream = c.subscribe(request).await.unwrap().into_inner();
    let status = bounded(LIMIT, "stream until deadline", status_at_end(&mut stream)).await;
    // Whichever of the client, Sluice or the upstream fires first, the call ends at the deadline.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        upstream_subscriptions_reach(&upstream, 0).await,
        "the upstream stream was not ended after the deadline"
    );
}

#[tokio::test]
async fn a_monitor_cancel_cancels_the_upstream_stream() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let mut c = client(proxy.addr()).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 100.0, 8, 0), "m1").await;
    for _ in 0..3 {
        bounded(LIMIT, "first events", stream.message())
            .await
            .unwrap();
    }
    assert_eq!(upstream.stats.snapshot().subscribe_active, 1);
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = upstream.stats.snapshot();
            s.subscribe_active == 0 && s.subscribe_cancelled == 1
        })
        .await,
        "upstream did not see the cancel: {:?}",
        upstream.stats.snapshot()
    );
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .snapshot()
            .stats
            .upstream_streams_active
            == 0)
        .await
    );

    // A bidi stream cancelled mid-way.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .chat(as_monitor(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "m1",
        ))
        .await
        .unwrap()
        .into_inner();
    tx.send(ChatMessage {
        seq: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    bounded(LIMIT, "chat reply", replies.message())
        .await
        .unwrap();
    drop(replies);
    drop(tx);
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .snapshot()
            .stats
            .downstream_streams_active
            == 0)
        .await
    );
}

#[tokio::test]
async fn a_four_mib_message_gets_through_and_the_limit_is_enforced() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.server.max_message_bytes = 5 * 1024 * 1024;
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = bounded(
        LIMIT,
        "4 MiB echo",
        c.echo(as_monitor(
            EchoRequest {
                payload: payload.clone().into(),
                text: String::new(),
            },
            "m1",
        )),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(reply.payload.len(), payload.len());
    assert!(reply.payload == payload, "payload corrupted");

    let too_big = vec![0u8; 6 * 1024 * 1024];
    let status = bounded(
        LIMIT,
        "oversized echo",
        c.echo(as_monitor(
            EchoRequest {
                payload: too_big.into(),
                text: String::new(),
            },
            "m1",
        )),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("exceeds the limit"), "{status:?}");
    assert_eq!(proxy.snapshot().stats.oversized_messages_total, 1);
}

#[tokio::test]
async fn injected_metadata_reaches_the_server_and_sluice_metadata_does_not() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.endpoints[0]
        .metadata
        .insert("x-token".into(), "provider-secret".into());
    let mut m = monitor("m1", sluice_config::TrafficClass::Realtime);
    m.token = Some("monitor-secret".into());
    config.monitors.push(m);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut request = as_monitor(EchoRequest::default(), "m1");
    request
        .metadata_mut()
        .insert("x-sluice-token", "monitor-secret".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-custom", "kept".parse().unwrap());
    let reply = bounded(LIMIT, "echo", c.echo(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.metadata.get("x-token").map(String::as_str),
        Some("provider-secret")
    );
    assert_eq!(
        reply.metadata.get("x-custom").map(String::as_str),
        Some("kept")
    );
    assert!(!reply.metadata.contains_key("x-sluice-monitor"));
    assert!(!reply.metadata.contains_key("x-sluice-token"));

    // The wrong token is refused before anything reaches the upstream.
    let calls = upstream.stats.snapshot().calls_total;
    let mut request = as_monitor(EchoRequest::default(), "m1");
    request
        .metadata_mut()
        .insert("x-sluice-token", "wrong".parse().unwrap());
    let status = c.echo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(upstream.stats.snapshot().calls_total, calls);
}

#[tokio::test]
async fn many_messages_in_both_directions_arrive_in_order() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let mut c = client(proxy.addr()).await;
    let outgoing = tokio_stream::iter((0..2000u64).map(|seq| ChatMessage {
        seq,
        text: String::new(),
        sent_at_ns: 0,
        payload: vec![7; 300].into(),
    }));
    let replies = bounded(LIMIT, "chat", async {
        c.chat(as_monitor(outgoing, "m1"))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().seq)
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(replies, (0..2000).collect::<Vec<_>>());
}
