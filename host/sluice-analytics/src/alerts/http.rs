//! One webhook POST: a fresh HTTP/1.1 connection (TLS for `https://`) per attempt.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The webhook URL cannot be used.
    #[error("invalid webhook URL {url:?}: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The TCP connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// HTTP failed (handshake, request or response).
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    /// The attempt took longer than the webhook's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The webhook answered with a status other than 2xx.
    #[error("webhook answered HTTP {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
}

impl DeliveryError {
    /// Whether another attempt may succeed: connection errors, timeouts, 5xx and 429 are
    /// retried; other 4xx answers and unusable URLs are not.
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Url { .. } | DeliveryError::Request(_) => false,
            DeliveryError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            DeliveryError::Connect(_)
            | DeliveryError::Tls(_)
            | DeliveryError::Http(_)
            | DeliveryError::Timeout(_) => true,
        }
    }

    /// The pause the webhook asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A parsed webhook, ready to be posted to.
pub(super) struct Target {
    /// The URL as configured, for logs.
    pub url: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// The client TLS config for `https://` webhooks: the Mozilla roots, HTTP/1.1, the `ring`
/// provider (no process-wide default needed).
pub(super) fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Target {
    /// Parses `url` and `headers`; `tls` is used for `https://` URLs.
    pub fn new<'a>(
        url: &str,
        headers: impl IntoIterator<Item = (&'a String, &'a String)>,
        timeout: Duration,
        tls: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, rustls::Error>,
    ) -> Result<Self, DeliveryError> {
        let bad = |problem: String| DeliveryError::Url {
            url: url.to_owned(),
            problem,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host".into()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host".into()));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let origin_form: Uri = path.parse().map_err(|e| bad(format!("{e}")))?;
        let mut parsed = Vec::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| bad(format!("header {name:?}: {e}")))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| bad(format!("header {name}: {e}")))?;
            parsed.push((name, value));
        }
        let tls = if https {
            let config = tls().map_err(|e| bad(format!("TLS: {e}")))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| bad(format!("TLS server name: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| bad(format!("{e}")))?,
            host,
            port,
            uri: origin_form,
            headers: parsed,
            timeout,
            tls,
        })
    }

    /// One attempt within the webhook's timeout: `Ok` on a 2xx answer.
    pub async fn post(&self, incident_id: &str, body: Bytes) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.timeout, self.post_inner(incident_id, body)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }

    async fn post_inner(&self, incident_id: &str, body: Bytes) -> Result<(), DeliveryError> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.authority.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "sluice-alerts")
            .header("x-sluice-incident", incident_id);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(body))?;

        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(DeliveryError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let status_and_headers = match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(DeliveryError::Tls)?;
                send(TokioIo::new(stream), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        let (status, retry_after) = status_and_headers;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status {
                status,
                retry_after,
            })
        }
    }
}

/// Aborts the connection task when the attempt ends or is dropped (e.g. on timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Option<Duration>), DeliveryError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok((response.status(), retry_after))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn target(url: &str, headers: &[(&str, &str)]) -> Result<Target, DeliveryError> {
        let headers: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Target::new(url, &headers, Duration::from_secs(1), tls_config)
    }

    #[test]
    fn urls_are_parsed_for_connecting() {
        let t = target("https://hooks.example.com/a/b?x=1", &[("X-Key", "v")]).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.com", 443));
        assert_eq!(t.uri.to_string(), "/a/b?x=1");
        assert_eq!(t.authority, "hooks.example.com");
        assert!(t.tls.is_some());
        assert_eq!(t.headers.len(), 1);

        let t = target("http://[::1]:8080", &[]).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.uri.to_string(), "/");
        assert_eq!(t.authority, "[::1]:8080");
        assert!(t.tls.is_none());

        assert!(target("ftp://h/", &[]).is_err());
        assert!(target("/relative", &[]).is_err());
        assert!(target("http://h/", &[("bad name", "v")]).is_err());
        assert!(target("http://h/", &[("X", "a\nb")]).is_err());
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |code: u16| DeliveryError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: None,
        };
        assert!(status(500).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(400).retryable());
        assert!(!status(404).retryable());
        assert!(DeliveryError::Timeout(Duration::from_secs(1)).retryable());
        assert!(DeliveryError::Connect(std::io::ErrorKind::ConnectionRefused.into()).retryable());
    }
}
