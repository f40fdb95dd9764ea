//! Tests with a real tonic client over loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::pb::feed_client::FeedClient;
use crate::pb::{ChatMessage, EchoRequest, Event, SubscribeRequest};
use crate::{
    FEED_SERVICE, FeedConfig, FeedHandle, FeedStatsSnapshot, MAX_MESSAGE_SIZE, TlsIdentity, spawn,
};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(config: FeedConfig) -> FeedHandle {
    spawn(loopback(), config, None).await.unwrap()
}

async fn client(addr: SocketAddr) -> FeedClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FeedClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Waits (up to 5 s) until `check` holds for the server's counters.
async fn eventually(handle: &FeedHandle, check: impl Fn(&FeedStatsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = handle.stats.snapshot();
        if check(&snapshot) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn subscribe(from_seq: u64, count: u64, rate: f64, payload_bytes: u32) -> SubscribeRequest {
    SubscribeRequest {
        from_seq,
        rate,
        payload_bytes,
        count,
        topic: "t1".into(),
    }
}

#[tokio::test]
async fn subscribe_starts_at_from_seq_and_stops_after_count() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let before = crate::service::now_ns();
    let mut stream = client
        .subscribe(subscribe(10, 5, 0.0, 16))
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        assert_eq!(event.payload.len(), 16);
        assert_eq!(event.topic, "t1");
        assert!(event.sent_at_ns >= before);
        seqs.push(event.seq);
    }
    assert_eq!(seqs, vec![10, 11, 12, 13, 14]);
    eventually(&feed, |s| {
        s.events_sent == 5
            && s.subscribe_started == 1
            && s.subscribe_active == 0
            && s.subscribe_cancelled == 0
    })
    .await;
}

#[tokio::test]
async fn subscribe_paces_events_at_the_requested_rate() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let started = Instant::now();
    let mut stream = client
        .subscribe(subscribe(0, 11, 50.0, 0))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(n, 11);
    // The first event goes at once, then one every 20 ms.
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn subscribe_unthrottled_is_fast() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let started = Instant::now();
    let mut stream = client
        .subscribe(subscribe(0, 20_000, 0.0, 8))
        .await
        .unwrap()
        .into_inner();
    let mut expected = 0;
    while let Some(event) = stream.message().await.unwrap() {
        assert_eq!(event.seq, expected);
        expected += 1;
    }
    assert_eq!(expected, 20_000);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cancelled_subscribe_is_counted_and_stops_sending() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let mut stream = client
        .subscribe(subscribe(0, 0, 1000.0, 0))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    eventually(&feed, |s| s.subscribe_active == 1).await;
    drop(stream);
    eventually(&feed, |s| {
        s.subscribe_cancelled == 1 && s.subscribe_active == 0
    })
    .await;
    let sent = feed.stats.snapshot().events_sent;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(feed.stats.snapshot().events_sent, sent);
}

#[tokio::test]
async fn echo_returns_payload_and_metadata_and_echoes_headers() {
    let feed = start(FeedConfig {
        name: "feed-a".into(),
        ..FeedConfig::default()
    })
    .await;
    let mut client = client(feed.addr).await;
    let mut request = Request::new(EchoRequest {
        payload: Bytes::from_static(b"abc"),
        text: "hello".into(),
    });
    request
        .metadata_mut()
        .insert("x-test", "1".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-foo", "bar".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-trailer", "tv".parse().unwrap());
    request.metadata_mut().insert_bin(
        "x-bin-bin",
        tonic::metadata::MetadataValue::from_bytes(b"\x00\x01"),
    );
    let response = client.echo(request).await.unwrap();
    let metadata = response.metadata().clone();
    let reply = response.into_inner();
    assert_eq!(reply.payload, Bytes::from_static(b"abc"));
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.metadata.get("x-test").map(String::as_str), Some("1"));
    assert_eq!(
        reply.metadata.get("x-echo-foo").map(String::as_str),
        Some("bar")
    );
    assert!(!reply.metadata.contains_key("x-bin-bin"));
    // Response headers; tonic merges a unary call's trailers into the same map.
    assert_eq!(metadata.get("x-echo-foo").unwrap(), "bar");
    assert_eq!(metadata.get("x-feed-name").unwrap(), "feed-a");
    assert_eq!(metadata.get("x-trailer-echo").unwrap(), "tv");
    assert_eq!(
        feed.stats.last_metadata_value("x-test").as_deref(),
        Some("1")
    );
    assert_eq!(feed.stats.snapshot().calls_total, 1);
}

#[tokio::test]
async fn streaming_calls_echo_headers_and_trailers() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let mut request = Request::new(subscribe(0, 2, 0.0, 0));
    request
        .metadata_mut()
        .insert("x-echo-a", "1".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-trailer", "end".parse().unwrap());
    let response = client.subscribe(request).await.unwrap();
    assert_eq!(response.metadata().get("x-echo-a").unwrap(), "1");
    let mut stream = response.into_inner();
    while stream.message().await.unwrap().is_some() {}
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("x-trailer-echo").unwrap(), "end");
}

#[tokio::test]
async fn fail_code_header_injects_status_details_and_trailers() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;

    let mut request = Request::new(EchoRequest::default());
    request
        .metadata_mut()
        .insert("x-feed-fail-code", "7".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-feed-fail-message", "nope".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-trailer", "tv".parse().unwrap());
    let status = client.echo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "nope");
    assert_eq!(status.details(), b"detail-bytes");
    assert_eq!(status.metadata().get("x-feed-detail").unwrap(), "injected");
    assert_eq!(status.metadata().get("x-trailer-echo").unwrap(), "tv");

    let mut request = Request::new(subscribe(0, 0, 0.0, 0));
    request
        .metadata_mut()
        .insert("x-feed-fail-code", "14".parse().unwrap());
    let status = client.subscribe(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "injected failure");
    assert_eq!(feed.stats.snapshot().calls_failed_injected, 2);
    assert_eq!(feed.stats.snapshot().subscribe_started, 0);

    let mut request = Request::new(EchoRequest::default());
    request
        .metadata_mut()
        .insert("x-feed-fail-code", "x".parse().unwrap());
    let status = client.echo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn error_rate_fails_an_exact_fraction_of_calls() {
    let feed = start(FeedConfig {
        error_rate: 0.25,
        ..FeedConfig::default()
    })
    .await;
    let mut client = client(feed.addr).await;
    let mut failed = Vec::new();
    for i in 0..8 {
        if let Err(status) = client.echo(EchoRequest::default()).await {
            assert_eq!(status.code(), Code::Unavailable);
            failed.push(i);
        }
    }
    assert_eq!(failed, vec![3, 7]);
}

#[tokio::test]
async fn a_refusing_server_answers_every_call_with_its_status_and_counts_them() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    client.echo(EchoRequest::default()).await.unwrap();
    feed.refuse(Some(crate::Refusal {
        code: Code::ResourceExhausted,
        pushback_ms: Some(750),
    }));
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "750"
    );
    let status = client.subscribe(subscribe(5, 0, 0.0, 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    feed.refuse(Some(crate::Refusal {
        code: Code::Unauthenticated,
        pushback_ms: None,
    }));
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());
    feed.refuse(None);
    client.echo(EchoRequest::default()).await.unwrap();
    let stats = feed.stats.snapshot();
    assert_eq!((stats.calls_total, stats.calls_refused), (5, 3));
}

#[tokio::test]
async fn disconnect_after_ends_streams_with_unavailable() {
    let feed = start(FeedConfig {
        disconnect_after: Some(3),
        ..FeedConfig::default()
    })
    .await;
    let mut client = client(feed.addr).await;

    let mut stream = client
        .subscribe(subscribe(5, 0, 0.0, 0))
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(event)) => seqs.push(event.seq),
            Ok(None) => panic!("stream ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(seqs, vec![5, 6, 7]);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "injected disconnect");

    let mut request = Request::new(subscribe(0, 0, 0.0, 0));
    request
        .metadata_mut()
        .insert("x-feed-disconnect-after", "1".parse().unwrap());
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        Code::Unavailable
    );

    eventually(&feed, |s| {
        s.disconnects_injected == 2 && s.subscribe_cancelled == 0 && s.subscribe_active == 0
    })
    .await;
}

#[tokio::test]
async fn delay_header_and_latency_slow_calls_down() {
    let feed = start(FeedConfig {
        latency: Duration::from_millis(50),
        ..FeedConfig::default()
    })
    .await;
    let mut client = client(feed.addr).await;
    let started = Instant::now();
    let mut request = Request::new(EchoRequest::default());
    request
        .metadata_mut()
        .insert("x-feed-delay-ms", "50".parse().unwrap());
    client.echo(request).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));

    let started = Instant::now();
    let mut request = Request::new(subscribe(0, 3, 0.0, 0));
    request
        .metadata_mut()
        .insert("x-feed-delay-ms", "30".parse().unwrap());
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert!(started.elapsed() >= Duration::from_millis(50 + 90));
}

#[tokio::test]
async fn chat_answers_every_message_and_collect_counts() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let outbound = tokio_stream::iter((0..4).map(|seq| ChatMessage {
        seq,
        text: format!("m{seq}"),
        sent_at_ns: 0,
        payload: Bytes::from(vec![1; seq as usize]),
    }));
    let mut replies = client.chat(outbound).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.text, format!("m{}", reply.seq));
        assert_eq!(reply.payload.len(), reply.seq as usize);
        assert!(reply.sent_at_ns > 0);
        seen.push(reply.seq);
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);

    let outbound = tokio_stream::iter((0..3).map(|_| EchoRequest {
        payload: Bytes::from_static(b"12345"),
        text: "ab".into(),
    }));
    let reply = client.collect(outbound).await.unwrap().into_inner();
    assert_eq!(reply.messages, 3);
    assert_eq!(reply.bytes, 21);
}

#[tokio::test]
async fn four_mib_messages_pass() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let payload = Bytes::from(vec![7_u8; 4 * 1024 * 1024]);
    let reply = client
        .echo(EchoRequest {
            payload: payload.clone(),
            text: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, payload);
    let mut stream = client
        .subscribe(subscribe(0, 2, 0.0, 4 * 1024 * 1024))
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = stream.message().await.unwrap() {
        assert_eq!(event.payload.len(), 4 * 1024 * 1024);
    }
}

#[tokio::test]
async fn connections_are_counted() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    client.echo(EchoRequest::default()).await.unwrap();
    eventually(&feed, |s| {
        s.connections_accepted == 1 && s.connections_open == 1
    })
    .await;
    drop(client);
    eventually(&feed, |s| s.connections_open == 0).await;
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server_and_frees_the_port() {
    let feed = start(FeedConfig::default()).await;
    let addr = feed.addr;
    let mut client = client(addr).await;
    let mut stream = client
        .subscribe(subscribe(0, 0, 100.0, 0))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    drop(feed);

    // The open stream fails instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream did not end after the server stopped");
    assert!(ended.is_err(), "{ended:?}");

    // New connections are refused, and the same port can serve again right away.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let again = spawn(addr, FeedConfig::default(), None).await.unwrap();
    let mut client = self::client(again.addr).await;
    client.echo(EchoRequest::default()).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_ends_subscribe_streams_with_unavailable() {
    let feed = start(FeedConfig::default()).await;
    let mut client = client(feed.addr).await;
    let mut stream = client
        .subscribe(subscribe(0, 0, 100.0, 0))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let stats = feed.stats.clone();
    let shutdown = tokio::spawn(feed.shutdown_with_grace(Duration::from_secs(5)));
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "server shutting down");
    drop(stream);
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stats.snapshot().subscribe_cancelled, 0);
}

#[tokio::test]
async fn serves_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let identity = TlsIdentity {
        cert_pem: cert.cert.pem().into_bytes(),
        key_pem: cert.signing_key.serialize_pem().into_bytes(),
    };
    let feed = spawn(loopback(), FeedConfig::default(), Some(identity))
        .await
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", feed.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FeedClient::new(channel);
    let reply = client
        .echo(EchoRequest {
            payload: Bytes::from_static(b"x"),
            text: "tls".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.text, "tls");
    assert_eq!(feed.stats.snapshot().connections_accepted, 1);

    let bad = TlsIdentity {
        cert_pem: b"not a cert".to_vec(),
        key_pem: b"not a key".to_vec(),
    };
    assert!(
        spawn(loopback(), FeedConfig::default(), Some(bad))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rejects_bad_config() {
    let config = FeedConfig {
        error_rate: 1.5,
        ..FeedConfig::default()
    };
    assert!(matches!(
        spawn(loopback(), config, None).await,
        Err(crate::FeedError::InvalidConfig(_))
    ));
}

/// Bounds a wait in a test.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let reply = health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    reply.status()
}

#[tokio::test]
async fn health_reports_serving_and_follows_set_serving() {
    let feed = start(FeedConfig::default()).await;
    let channel = Endpoint::from_shared(format!("http://{}", feed.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut feed_client = FeedClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: FEED_SERVICE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_watched = async move || {
        within("health watch", watch.message())
            .await
            .unwrap()
            .unwrap()
            .status()
    };
    assert_eq!(next_watched().await, ServingStatus::Serving);
    for service in ["", FEED_SERVICE] {
        assert_eq!(
            health_status(&mut health, service).await,
            ServingStatus::Serving
        );
    }

    feed.set_serving(false).await;
    for service in ["", FEED_SERVICE] {
        assert_eq!(
            health_status(&mut health, service).await,
            ServingStatus::NotServing
        );
    }
    assert_eq!(next_watched().await, ServingStatus::NotServing);
    // Only the health service changes: the feed itself still answers.
    feed_client.echo(EchoRequest::default()).await.unwrap();

    feed.set_serving(true).await;
    for service in ["", FEED_SERVICE] {
        assert_eq!(
            health_status(&mut health, service).await,
            ServingStatus::Serving
        );
    }
    assert_eq!(next_watched().await, ServingStatus::Serving);

    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// One gRPC message frame: uncompressed flag, big-endian length, the encoded message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).unwrap());
    frame.put_slice(&encoded);
    frame.freeze()
}

/// Reads gRPC messages off a raw HTTP/2 response body.
struct GrpcReader {
    body: h2::RecvStream,
    buffer: BytesMut,
}

impl GrpcReader {
    /// The next [`Event`], waiting for DATA frames as needed (each bounded).
    async fn next_event(&mut self) -> Event {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + len {
                    let frame = self.buffer.split_to(5 + len);
                    return Event::decode(&frame[5..]).unwrap();
                }
            }
            let chunk = within("data frame", self.body.data())
                .await
                .expect("stream ended")
                .unwrap();
            self.body
                .flow_control()
                .release_capacity(chunk.len())
                .unwrap();
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test]
async fn goaway_keeps_open_streams_running_and_refuses_new_ones() {
    let mut feed = start(FeedConfig::default()).await;
    let addr = feed.addr;
    // A raw HTTP/2 client, to see the GOAWAY itself (tonic's channel hides it).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = within("handshake", h2::client::handshake(tcp))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut send = within("ready", send.ready()).await.unwrap();
    let request = http::Request::post(format!("http://{addr}/sluice.feed.v1.Feed/Subscribe"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut request_body) = send.send_request(request, false).unwrap();
    request_body
        .send_data(grpc_frame(&subscribe(0, 0, 200.0, 0)), true)
        .unwrap();
    let response = within("response headers", response).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut events = GrpcReader {
        body: response.into_body(),
        buffer: BytesMut::new(),
    };
    let mut last_seq = events.next_event().await.seq;

    feed.goaway();

    // The server's GOAWAY arrives: the connection takes no new streams.
    let refused = within("GOAWAY", async {
        loop {
            match send.clone().ready().await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(
        refused.is_go_away() && refused.is_remote(),
        "unexpected error: {refused:?}"
    );
    assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));

    // The open Subscribe stream keeps flowing after it: events produced after the GOAWAY
    // arrived, in order.
    let goaway_seen_at = crate::service::now_ns();
    let mut after_goaway = 0;
    while after_goaway < 5 {
        let event = events.next_event().await;
        assert_eq!(event.seq, last_seq + 1);
        last_seq = event.seq;
        if event.sent_at_ns > goaway_seen_at {
            after_goaway += 1;
        }
    }
    // New connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(!feed.is_finished());

    // Once its last stream is gone the connection closes, and so does the server.
    drop(events);
    drop(request_body);
    drop(send);
    within("connection close", connection)
        .await
        .unwrap()
        .unwrap();
    within("server end", async {
        while !feed.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eventually(&feed, |s| {
        s.subscribe_active == 0 && s.connections_open == 0
    })
    .await;
    feed.shutdown().await.unwrap();
}
