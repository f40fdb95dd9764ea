//! Admin API tests' tools: a small HTTP/1.1 client (hyper) and a whole Sluice (proxy routing
//! through the policy slots, analytics engine, admin API) to point it at.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_admin::{AdminHandle, AdminServer};
use sluice_analytics::Analytics;
use sluice_config::{AdminConfig, Config};
use sluice_policy::Policies;
use sluice_proxy::ProxyHandle;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// An admin API answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub json: serde_json::Value,
    /// The raw body.
    pub text: String,
}

/// Sends one request to the admin API at `addr`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    send(addr, method, path, token, None, body).await
}

/// Sends `body` as `Content-Type: application/json`.
pub async fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let body = body.as_bytes().to_vec();
    send(addr, method, path, token, Some("application/json"), body).await
}

/// Uploads a component: `POST path` with `Content-Type: application/wasm`, as the API requires.
pub async fn upload(addr: SocketAddr, path: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
    send(addr, "POST", path, token, Some("application/wasm"), body).await
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut headers = Vec::new();
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization.as_str()));
    }
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type));
    }
    request_with(addr, method, path, &headers, body).await
}

/// Sends a request with `headers` (`Host` defaults to `addr`; one in `headers` replaces it).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    exchange(
        connect(addr).await,
        build(addr, method, path, headers, body),
    )
    .await
}

/// [`request_with`] over HTTPS, trusting the CA certificate in the PEM file `ca`; the
/// certificate must name 127.0.0.1.
pub async fn request_tls(
    addr: SocketAddr,
    ca: &std::path::Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let tls = sluice_admin::tls::connect(connect(addr).await, &addr.ip().to_string(), Some(ca))
        .await
        .expect("TLS handshake with the admin API");
    exchange(tls, build(addr, method, path, headers, body)).await
}

async fn connect(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin API reachable")
}

fn build(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        builder = builder.header(hyper::header::HOST, addr.to_string());
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(body))).expect("request")
}

async fn exchange<IO>(io: IO, request: hyper::Request<Full<Bytes>>) -> Answer
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .expect("admin API answers");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        text,
    }
}

/// A running Sluice with its analytics engine and admin API.
pub struct Observed {
    /// The admin API.
    pub admin: AdminHandle,
    /// The data plane.
    pub proxy: ProxyHandle,
    /// The analytics engine (its loops are not spawned: tests drive them).
    pub analytics: Arc<Analytics>,
    /// The policy slots the proxy routes through.
    pub policies: Arc<Policies>,
}

/// Starts `config`'s Sluice with the analytics engine and an admin API on a free loopback port
/// that needs `token`.
pub async fn observed(config: Config, token: &str) -> Observed {
    let config = Arc::new(config);
    let (proxy, policies) = crate::plugins::sluice_with_policies((*config).clone()).await;
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), Arc::clone(&policies))
        .expect("analytics engine opens");
    let admin_config = AdminConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        token: Some(token.into()),
        ..AdminConfig::default()
    };
    let admin = AdminServer::bind_with_analytics(
        &admin_config,
        Arc::clone(&policies),
        proxy.view(),
        Some(Arc::clone(&analytics)),
    )
    .await
    .expect("admin binds")
    .spawn();
    Observed {
        admin,
        proxy,
        analytics,
        policies,
    }
}
