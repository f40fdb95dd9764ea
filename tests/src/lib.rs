//! Shared helpers for the end-to-end tests: start real feed servers and a real Sluice on
//! loopback, and talk to them with real tonic clients.
//!
//! Every helper binds port 0 on 127.0.0.1, so tests run in parallel without clashing, and every
//! wait is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{Config, EndpointConfig, MethodConfig, MonitorConfig, TrafficClass};
use sluice_feed::pb::feed_client::FeedClient;
use sluice_feed::{FeedConfig, FeedHandle};
use sluice_proxy::{Proxy, ProxyHandle};
use tonic::transport::Channel;

pub use sluice_feed::pb;

pub mod abuse;
pub mod admin;
pub mod etcd;
pub mod fault;
pub mod measure;
pub mod plugins;
pub mod process;
pub mod soak;
pub mod starts;
pub mod yellowstone;

/// Largest message the test clients accept.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The method path of the feed's Subscribe.
pub const SUBSCRIBE: &str = "/sluice.feed.v1.Feed/Subscribe";

/// Starts a feed server named `name` with default behaviour.
pub async fn feed(name: &str) -> FeedHandle {
    feed_with(FeedConfig {
        name: name.to_owned(),
        ..Default::default()
    })
    .await
}

/// Starts a feed server with `config`.
pub async fn feed_with(config: FeedConfig) -> FeedHandle {
    sluice_feed::spawn(([127, 0, 0, 1], 0).into(), config, None)
        .await
        .expect("feed server starts")
}

/// A config with one endpoint per feed, listening on a free loopback port.
pub fn config_for(feeds: &[&FeedHandle]) -> Config {
    let mut config = Config::default();
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.shutdown_grace = Duration::from_millis(200);
    config.endpoints = feeds
        .iter()
        .enumerate()
        .map(|(i, feed)| endpoint(&format!("feed-{i}"), &format!("http://{}", feed.addr)))
        .collect();
    config
}

/// An endpoint entry with defaults.
pub fn endpoint(id: &str, url: &str) -> EndpointConfig {
    EndpointConfig::new(id, url)
}

/// A monitor entry.
pub fn monitor(id: &str, class: TrafficClass) -> MonitorConfig {
    MonitorConfig::new(id, class)
}

/// A method rule that shares Subscribe streams.
pub fn shared_subscribe(buffer: usize) -> MethodConfig {
    MethodConfig {
        share: true,
        share_buffer_messages: buffer,
        ..MethodConfig::new(SUBSCRIBE)
    }
}

/// Validates `config` and starts a Sluice with it.
pub async fn sluice(config: Config) -> ProxyHandle {
    config.validate().expect("test config is valid");
    Proxy::bind(Arc::new(config))
        .await
        .expect("sluice binds")
        .spawn()
}

/// A client on its own HTTP/2 connection to `addr`.
pub async fn client(addr: SocketAddr) -> FeedClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("client connects");
    FeedClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Opens a Subscribe stream as `monitor` on a client connection of its own.
pub async fn open_subscription(
    addr: SocketAddr,
    monitor: &str,
    request: pb::SubscribeRequest,
) -> tonic::Streaming<pb::Event> {
    subscribe_on(&mut client(addr).await, request, monitor).await
}

/// Opens a Subscribe stream as `monitor` on `client`'s connection.
pub async fn subscribe_on(
    client: &mut FeedClient<Channel>,
    request: pb::SubscribeRequest,
    monitor: &str,
) -> tonic::Streaming<pb::Event> {
    client
        .subscribe(as_monitor(request, monitor))
        .await
        .expect("subscribe")
        .into_inner()
}

/// Wraps `message` in a request that names the calling monitor.
pub fn as_monitor<T>(message: T, monitor: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-sluice-monitor",
        monitor.parse().expect("ascii monitor id"),
    );
    request
}

/// A Subscribe request.
pub fn subscribe(topic: &str, rate: f64, payload_bytes: u32, count: u64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_seq: 0,
        rate,
        payload_bytes,
        count,
        topic: topic.to_owned(),
    }
}

/// Reads a stream to its end and returns the status it ended with; panics if it ended with OK.
pub async fn status_at_end<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended with OK instead of an error status"),
            Err(status) => return status,
        }
    }
}

/// A config whose only endpoint is `url`, listening on a free loopback port.
pub fn config_with_endpoint(id: &str, url: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.endpoints = vec![endpoint(id, url)];
    config
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a condition that has to wait itself (an HTTP request): polls it every
/// 100 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually_async<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::time::timeout_at(deadline, condition()).await == Ok(true) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 5 s for `feed` to have exactly `n` Subscribe streams open; whether it did.
pub async fn upstream_subscriptions_reach(feed: &FeedHandle, n: u64) -> bool {
    eventually(Duration::from_secs(5), || {
        feed.stats.snapshot().subscribe_active == n
    })
    .await
}

/// Runs `future` with a hard limit so that a hang fails the test instead of stalling CI.
pub async fn bounded<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 it signed,
/// all PEM, generated fresh for a test.
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// The CA, to sign more certificates.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    /// Generates a CA and a server certificate.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer,
        }
    }

    /// A client certificate the CA signed with `dns_name` as its subject alternative name (and
    /// common name), and its key, PEM.
    pub fn client_cert(&self, dns_name: &str) -> (String, String) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(vec![dns_name.to_owned()]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, dns_name);
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTP/2 upstream that accepts every stream and never answers: a stand-in for a provider
/// that hangs. It records what it received and which streams were reset.
pub struct BlackHole {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Request headers of every stream received, in order.
    pub requests: Arc<parking_lot::Mutex<Vec<http::HeaderMap>>>,
    /// Streams the client reset (e.g. on a deadline or a cancel).
    pub resets: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    /// Starts one on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with_stream_limit(u32::MAX).await
    }

    /// Starts one that advertises SETTINGS_MAX_CONCURRENT_STREAMS = `limit`.
    pub async fn start_with_stream_limit(limit: u32) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let resets = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (req, res) = (Arc::clone(&requests), Arc::clone(&resets));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (requests, resets) = (Arc::clone(&req), Arc::clone(&res));
                tokio::spawn(async move {
                    let handshake = h2::server::Builder::new()
                        .max_concurrent_streams(limit)
                        .handshake::<_, bytes::Bytes>(tcp);
                    let Ok(mut conn) = handshake.await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        requests.lock().push(request.headers().clone());
                        let resets = Arc::clone(&resets);
                        tokio::spawn(async move {
                            let _body = request;
                            if std::future::poll_fn(|cx| respond.poll_reset(cx))
                                .await
                                .is_ok()
                            {
                                resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        });
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            resets,
            task,
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The outcome of a raw gRPC call made with [`raw_grpc_call`].
#[derive(Debug)]
pub struct RawOutcome {
    /// `grpc-status` from the trailers (or the trailers-only headers).
    pub grpc_status: Option<String>,
    /// `grpc-message`, percent-decoding not applied.
    pub grpc_message: Option<String>,
    /// How long the call took.
    pub elapsed: Duration,
}

/// A gRPC call opened with a bare HTTP/2 client: its HEADERS are sent, its body is the caller's
/// to send (or to withhold).
pub struct RawCall {
    /// The response, once the server answers.
    pub response: h2::client::ResponseFuture,
    /// The request body.
    pub body: h2::SendStream<bytes::Bytes>,
    /// Drives the connection; dropping the call leaves it to end with the connection.
    pub connection: tokio::task::JoinHandle<()>,
}

/// Opens a call on `path` with `extra` headers on a connection of its own, without sending any
/// of its body.
pub async fn open_raw_call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawCall {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send_request, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send_request = send_request.ready().await.expect("ready");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let (response, body) = send_request
        .send_request(request.body(()).expect("request"), false)
        .expect("send");
    RawCall {
        response,
        body,
        connection,
    }
}

/// Makes one gRPC call with a bare HTTP/2 client (no client-side deadline enforcement), sending
/// `extra` headers and one empty message.
pub async fn raw_grpc_call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawOutcome {
    let started = tokio::time::Instant::now();
    let RawCall {
        response,
        mut body,
        connection: _,
    } = open_raw_call(addr, path, extra).await;
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send body");
    let response = response.await.expect("response");
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut grpc_status = header(response.headers(), "grpc-status");
    let mut grpc_message = header(response.headers(), "grpc-message");
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Ok(Some(trailers)) = body.trailers().await {
        grpc_status = header(&trailers, "grpc-status").or(grpc_status);
        grpc_message = header(&trailers, "grpc-message").or(grpc_message);
    }
    RawOutcome {
        grpc_status,
        grpc_message,
        elapsed: started.elapsed(),
    }
}
