//! The listener's limits on what a monitor may send, each against a real feed through an
//! in-process Sluice: silent calls end with `DEADLINE_EXCEEDED` and never count against an
//! endpoint; a caller's own tiny deadline never counts against the monitor it claims to be;
//! streams per monitor, connections per peer and header bytes are capped with a clear answer;
//! requests held whole are bounded; shared streams are keyed by the subscribers' credentials;
//! the provider hears of a call only once its request has begun, unless its method says the
//! server speaks first.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sluice_config::{BreakerScope, Config, MonitorConfig, TrafficClass};
use sluice_contract::breaker::BreakerState;
use sluice_tests::*;

/// A call that sends its HEADERS and then nothing (unless the test sends it), held open until
/// dropped.
async fn silent_call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawCall {
    open_raw_call(addr, path, extra).await
}

/// The `grpc-status` a call ended with (trailers-only headers or trailers).
async fn grpc_status_of(call: RawCall) -> Option<String> {
    status_of_response(call.response).await
}

/// The `grpc-status` a call ended with, from its response.
async fn status_of_response(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    let status = |map: &http::HeaderMap| {
        map.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    body.trailers()
        .await
        .ok()
        .flatten()
        .and_then(|t| status(&t))
}

/// Waits (up to 10 s) for `calls` to end, and checks each ended with `DEADLINE_EXCEEDED`.
async fn all_end_with_deadline_exceeded(calls: Vec<RawCall>) {
    let codes = bounded(Duration::from_secs(10), "silent calls end", async {
        let mut codes = Vec::new();
        for call in calls {
            codes.push(grpc_status_of(call).await);
        }
        codes
    })
    .await;
    assert!(
        codes.iter().all(|c| c.as_deref() == Some("4")),
        "every silent call ends with DEADLINE_EXCEEDED: {codes:?}"
    );
}

fn breaker_state(
    proxy: &sluice_proxy::ProxyHandle,
    scope: BreakerScope,
    name: &str,
) -> BreakerState {
    proxy
        .view()
        .breakers()
        .into_iter()
        .find(|b| b.scope == scope && &*b.name == name)
        .unwrap_or_else(|| panic!("a {scope} breaker named {name}"))
        .state
}

/// A config whose breakers and timers trip fast, so that a test sees within seconds what
/// silent calls would do to them.
fn touchy(feed: &sluice_feed::FeedHandle) -> Config {
    let mut config = config_for(&[feed]);
    config.breakers.first_message_timeout = Duration::from_millis(300);
    config.breakers.endpoint.failure_threshold = Some(3);
    config.breakers.monitor.failure_threshold = Some(3);
    config.server.request_timeout = Duration::from_millis(800);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_calls_time_out_without_opening_the_endpoints_breaker() {
    let upstream = feed("up").await;
    let proxy = sluice(touchy(&upstream)).await;
    let mut calls = Vec::new();
    for _ in 0..12 {
        calls.push(silent_call(proxy.addr(), SUBSCRIBE, &[("x-sluice-monitor", "quiet")]).await);
    }
    // Held past the first-message timeout, until the request timeout ends them.
    all_end_with_deadline_exceeded(calls).await;
    let stats = proxy.snapshot().stats;
    assert_eq!(stats.request_timeouts_total, 12);
    let endpoint = &proxy.endpoints()[0];
    assert_eq!(endpoint.breaker.state, BreakerState::Closed);
    assert_eq!(endpoint.breaker.consecutive_failures, 0);
    assert_eq!(
        endpoint.health.health,
        sluice_contract::health::Health::Healthy
    );
    // Served as ever afterwards.
    let mut stream =
        open_subscription(proxy.addr(), "after", subscribe("after", 100.0, 8, 3)).await;
    let mut got = 0;
    while bounded(Duration::from_secs(5), "message", stream.message())
        .await
        .expect("streams")
        .is_some()
    {
        got += 1;
    }
    assert_eq!(got, 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_claiming_a_monitor_with_tiny_deadlines_cannot_lock_it_out() {
    let upstream = feed("up").await;
    let mut config = touchy(&upstream);
    config
        .monitors
        .push(monitor("victim", TrafficClass::Realtime));
    let proxy = sluice(config).await;
    for _ in 0..10 {
        let call = silent_call(
            proxy.addr(),
            SUBSCRIBE,
            &[("x-sluice-monitor", "victim"), ("grpc-timeout", "100m")],
        )
        .await;
        let code = bounded(Duration::from_secs(5), "deadline", grpc_status_of(call)).await;
        assert_eq!(code.as_deref(), Some("4"));
    }
    assert_eq!(
        breaker_state(&proxy, BreakerScope::Monitor, "victim"),
        BreakerState::Closed
    );
    let mut stream =
        open_subscription(proxy.addr(), "victim", subscribe("real", 100.0, 8, 1)).await;
    assert!(
        bounded(Duration::from_secs(5), "message", stream.message())
            .await
            .expect("the real monitor is served")
            .is_some()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_gets_no_more_streams_than_its_limit() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.monitors.push(MonitorConfig {
        max_streams: Some(2),
        ..monitor("capped", TrafficClass::Event)
    });
    let proxy = sluice(config).await;
    let mut client = client(proxy.addr()).await;
    let _one = subscribe_on(&mut client, subscribe("a", 10.0, 8, 0), "capped").await;
    let _two = subscribe_on(&mut client, subscribe("b", 10.0, 8, 0), "capped").await;
    let third = client
        .subscribe(as_monitor(subscribe("c", 10.0, 8, 0), "capped"))
        .await;
    let status = match third {
        Ok(response) => status_at_end(&mut response.into_inner()).await,
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_streams"), "{status:?}");
    assert_eq!(proxy.snapshot().stats.monitor_streams_refused_total, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_peer_cap_get_goaway() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.server.max_connections_per_peer = 2;
    let proxy = sluice(config).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut client = client(proxy.addr()).await;
        let stream = subscribe_on(&mut client, subscribe("k", 100.0, 8, 0), "keeper").await;
        kept.push((client, stream));
    }
    let outcome = bounded(Duration::from_secs(5), "third connection", async {
        let mut refused = client(proxy.addr()).await;
        refused.subscribe(subscribe("x", 10.0, 8, 1)).await
    })
    .await;
    let error = outcome.expect_err("the third connection is refused");
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().contains("server.max_connections_per_peer"),
        "{error:?}"
    );
    assert_eq!(proxy.snapshot().stats.monitor_connections_refused_total, 1);
    // The admitted ones keep streaming.
    for (_, stream) in &mut kept {
        assert!(
            bounded(Duration::from_secs(5), "message", stream.message())
                .await
                .expect("still streaming")
                .is_some()
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_the_limit_are_refused() {
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let big = "v".repeat(20 * 1024);
    let call = silent_call(proxy.addr(), SUBSCRIBE, &[("x-padding", &big)]).await;
    let answer = bounded(Duration::from_secs(5), "refusal", call.response).await;
    match answer {
        Ok(response) => assert_eq!(
            response.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(error) => assert!(error.is_reset() || error.is_go_away(), "{error:?}"),
    }
    assert_eq!(upstream.stats.snapshot().subscribe_active, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_declared_request_on_a_shared_method_is_refused_at_once() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.methods.push(shared_subscribe(64));
    let proxy = sluice(config).await;
    let call = silent_call(proxy.addr(), SUBSCRIBE, &[]).await;
    let RawCall {
        response,
        mut body,
        connection,
    } = call;
    // A gRPC prefix declaring 16 MiB, then a trickle.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(16u32 * 1024 * 1024).to_be_bytes());
    body.send_data(Bytes::from(prefix), false).expect("prefix");
    body.send_data(Bytes::from(vec![7u8; 1024]), false)
        .expect("some bytes");
    let call = RawCall {
        response,
        body,
        connection,
    };
    let code = bounded(Duration::from_secs(5), "refusal", grpc_status_of(call)).await;
    assert_eq!(code.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    assert_eq!(proxy.snapshot().stats.request_buffered_bytes, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_with_different_credentials_never_share() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.methods.push(shared_subscribe(64));
    let proxy = sluice(config).await;
    let mut client = client(proxy.addr()).await;
    let with = |token: &str| {
        let mut request = tonic::Request::new(subscribe("same", 50.0, 8, 0));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let mut alice = client.subscribe(with("alice")).await.unwrap().into_inner();
    let mut alice_again = client.subscribe(with("alice")).await.unwrap().into_inner();
    for stream in [&mut alice, &mut alice_again] {
        bounded(Duration::from_secs(5), "message", stream.message())
            .await
            .unwrap();
    }
    assert!(
        upstream_subscriptions_reach(&upstream, 1).await,
        "same credentials share"
    );
    let mut bob = client.subscribe(with("bob")).await.unwrap().into_inner();
    bounded(Duration::from_secs(5), "message", bob.message())
        .await
        .unwrap();
    assert!(
        upstream_subscriptions_reach(&upstream, 2).await,
        "other credentials get their own upstream stream"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_message_left_unfinished_on_a_resumable_method_times_out() {
    let upstream = feed("up").await;
    let mut config = touchy(&upstream);
    config.methods.push(sluice_config::MethodConfig {
        resume: sluice_config::ResumeMode::ReplayAll,
        ..sluice_config::MethodConfig::new("/sluice.feed.v1.Feed/Chat")
    });
    let proxy = sluice(config).await;
    let mut call = silent_call(proxy.addr(), "/sluice.feed.v1.Feed/Chat", &[]).await;
    // A prefix declaring 1,000 bytes, then ten of them: the rest never comes.
    let mut start = vec![0u8];
    start.extend_from_slice(&1000u32.to_be_bytes());
    start.extend_from_slice(&[1u8; 10]);
    call.body
        .send_data(Bytes::from(start), false)
        .expect("part of a message");
    let code = bounded(
        Duration::from_secs(5),
        "the call ends",
        grpc_status_of(call),
    )
    .await;
    assert_eq!(code.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(proxy.snapshot().stats.request_buffered_bytes, 0);
    assert_eq!(proxy.endpoints()[0].breaker.state, BreakerState::Closed);
    proxy.shutdown().await;
}

const CHAT: &str = "/sluice.feed.v1.Feed/Chat";
const ECHO: &str = "/sluice.feed.v1.Feed/Echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_hears_of_a_call_only_once_its_request_begins_when_asked() {
    let upstream = feed("up").await;
    let mut config = touchy(&upstream);
    for path in [ECHO, SUBSCRIBE] {
        config.methods.push(sluice_config::MethodConfig {
            open_on_request: true,
            ..sluice_config::MethodConfig::new(path)
        });
    }
    config.methods.push(sluice_config::MethodConfig {
        resume: sluice_config::ResumeMode::ReplayLast,
        open_on_request: true,
        ..sluice_config::MethodConfig::new(CHAT)
    });
    let proxy = sluice(config).await;
    // Silent calls on the plain relay (unary and server-streaming) and on a resumable one.
    let mut silent = Vec::new();
    for path in [ECHO, SUBSCRIBE, CHAT, ECHO, SUBSCRIBE, CHAT] {
        silent.push(silent_call(proxy.addr(), path, &[("x-sluice-monitor", "quiet")]).await);
    }
    // One call sends its (empty) message late, well within the request timeout.
    let mut late = silent_call(proxy.addr(), ECHO, &[("x-sluice-monitor", "late")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.stats.snapshot().calls_total,
        0,
        "no call has sent anything yet"
    );
    late.body
        .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("the request");
    let code = bounded(
        Duration::from_secs(5),
        "the late call",
        grpc_status_of(late),
    )
    .await;
    assert_eq!(code.as_deref(), Some("0"), "the late call is served");
    all_end_with_deadline_exceeded(silent).await;
    assert_eq!(
        upstream.stats.snapshot().calls_total,
        1,
        "only the call that sent its request reached the provider"
    );
    assert_eq!(proxy.snapshot().stats.request_buffered_bytes, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_read_before_opening_reaches_the_provider_whole() {
    use prost::Message as _;
    const COLLECT: &str = "/sluice.feed.v1.Feed/Collect";
    let upstream = feed("up").await;
    let mut config = touchy(&upstream);
    config.methods.push(sluice_config::MethodConfig {
        open_on_request: true,
        ..sluice_config::MethodConfig::new(COLLECT)
    });
    let proxy = sluice(config).await;
    let message = |n: u8| {
        let body = sluice_tests::pb::EchoRequest {
            payload: vec![n; 10].into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    };
    let mut call = silent_call(proxy.addr(), COLLECT, &[("x-sluice-monitor", "collector")]).await;
    // Half of the first message: not a start yet.
    let first = message(1);
    let (head, rest) = first.split_at(7);
    call.body
        .send_data(Bytes::copy_from_slice(head), false)
        .expect("part of a message");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.stats.snapshot().calls_total, 0, "half a message");
    // The rest of it and a second message; then a third, and the end.
    let mut more = rest.to_vec();
    more.extend_from_slice(&message(2));
    call.body
        .send_data(Bytes::from(more), false)
        .expect("more of the request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    call.body
        .send_data(Bytes::from(message(3)), true)
        .expect("the end of the request");
    let response = bounded(Duration::from_secs(5), "the reply", call.response)
        .await
        .expect("a response");
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = bounded(Duration::from_secs(5), "reply data", body.data()).await {
        let chunk = chunk.expect("reply bytes");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    assert!(bytes.len() >= 5, "{bytes:?}");
    let reply = sluice_tests::pb::CollectReply::decode(&bytes[5..]).expect("a CollectReply");
    assert_eq!((reply.messages, reply.bytes), (3, 30), "{reply:?}");
    assert_eq!(proxy.snapshot().stats.request_buffered_bytes, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_bidi_call_gets_its_headers_before_it_sends() {
    for resume in [
        sluice_config::ResumeMode::None,
        sluice_config::ResumeMode::ReplayLast,
    ] {
        let upstream = feed("up").await;
        let mut config = touchy(&upstream);
        config.methods.push(sluice_config::MethodConfig {
            resume,
            ..sluice_config::MethodConfig::new(CHAT)
        });
        let proxy = sluice(config).await;
        let call = silent_call(proxy.addr(), CHAT, &[("x-sluice-monitor", "bidi")]).await;
        // The feed answers Chat's headers before any message, and clients (tonic's among
        // them) wait for those before they send: they reach the monitor, which has sent
        // nothing, and the request timeout no longer applies once they have.
        let response = bounded(Duration::from_secs(5), "response headers", call.response)
            .await
            .expect("headers");
        assert_eq!(response.status(), http::StatusCode::OK, "{resume:?}");
        assert!(
            response.headers().get("grpc-status").is_none(),
            "{resume:?}: the stream is open, not ended: {:?}",
            response.headers()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(upstream.stats.snapshot().calls_total, 1, "{resume:?}");
        assert_eq!(
            proxy.snapshot().stats.request_timeouts_total,
            0,
            "{resume:?}: past the request timeout, the call is still open"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_ending_at_once_keeps_the_upstream_connection() {
    let upstream = feed("up").await;
    let proxy = sluice(touchy(&upstream)).await;
    let mut legit =
        open_subscription(proxy.addr(), "legit", subscribe("legit", 50.0, 8, 1_000)).await;
    bounded(Duration::from_secs(5), "first message", legit.message())
        .await
        .expect("the legitimate stream starts");
    // 400 calls on one connection, each with a 1 ms deadline and a full request: Sluice opens
    // each upstream stream, and the call is over a millisecond later.
    let tcp = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (send_request, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let mut responses = Vec::new();
    for _ in 0..400 {
        let mut send_request = send_request.clone().ready().await.expect("ready");
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{ECHO}", proxy.addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-sluice-monitor", "hasty")
            .header("grpc-timeout", "1m")
            .body(())
            .expect("request");
        let (response, mut body) = send_request.send_request(request, false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("body");
        responses.push(response);
    }
    let mut codes = std::collections::BTreeMap::<Option<String>, usize>::new();
    for response in responses {
        let code = bounded(
            Duration::from_secs(5),
            "answer",
            status_of_response(response),
        )
        .await;
        *codes.entry(code).or_default() += 1;
    }
    connection.abort();
    // Each call ended on its deadline (in Sluice, or upstream where it ran out first) or in
    // time; none lost its upstream connection.
    let in_time_or_deadline = ["0", "1", "4"].map(|code| Some(code.to_owned()));
    assert!(
        codes.keys().all(|code| in_time_or_deadline.contains(code)),
        "{codes:?}"
    );
    // The provider never sent Sluice's connection away: the legitimate stream goes on.
    for _ in 0..10 {
        bounded(Duration::from_secs(5), "message", legit.message())
            .await
            .expect("the legitimate stream is unharmed")
            .expect("a message");
    }
    let stats = proxy.snapshot().stats;
    assert_eq!(stats.upstream_failures_total, 0, "{stats:?}");
    assert!(
        stats.upstream_resets_deferred_total > 0,
        "some calls ended before their upstream stream was old enough to reset: {stats:?}"
    );
    assert_eq!(proxy.endpoints()[0].breaker.state, BreakerState::Closed);
    proxy.shutdown().await;
}
