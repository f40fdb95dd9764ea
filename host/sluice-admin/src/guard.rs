//! Who may call the admin API, checked before any handler runs:
//!
//! - **Host** (every route): a request must name, in `Host`, a host this listener answers to:
//!   its listen address with the bound port, for a loopback address also `localhost`,
//!   `127.0.0.1` and `[::1]` with that port, and `admin.allowed_hosts`. Anything else is 421.
//!   This is what stops DNS rebinding: a page on `evil.example` whose name now resolves to
//!   127.0.0.1 still sends `Host: evil.example`, token or no token.
//! - **Origin** (every route but `/healthz` and `/readyz`): a request that carries `Origin` (a
//!   browser's) must come from the listener's own origin (its scheme, `http` or `https`, with
//!   an allowed host) or from `admin.allowed_origins`; anything else is 403. Requests without
//!   `Origin` (curl, the CLI, Prometheus) pass: a browser always sends it on the cross-site
//!   requests that could do harm (writes and WebSocket upgrades).
//! - **Token** (the API routes and the embedding program's): with `admin.token` set, every one
//!   needs it. Without one, reads are served but writes (any method other than GET, HEAD,
//!   OPTIONS and TRACE) are refused with 401 unless `admin.allow_unauthenticated_writes`.
//!
//! This module decides from the method, the path's being a health check and these headers; it
//! must not look at what a request asks for otherwise, nor hold state beyond the config.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sluice_config::AdminConfig;

use crate::ApiError;

/// Routes that skip the Origin check (not the Host check): probes and load balancers call
/// them, and they reveal nothing.
const HEALTH_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Why a write without a token is refused, with both ways to allow it.
const WRITES_NEED_A_TOKEN: &str = "writes need a bearer token: set admin.token (or \
    SLUICE_ADMIN_TOKEN) and send Authorization: Bearer <token>, or set \
    admin.allow_unauthenticated_writes = true to accept writes without one on this loopback \
    listener";

/// The rules of one listener, fixed when it is bound.
#[derive(Debug)]
pub(crate) struct Guard {
    /// `http` or `https`: the listener's own origins use it.
    scheme: &'static str,
    /// Allowed `Host` values, normalized ([`normalize_authority`]).
    hosts: Vec<String>,
    /// Allowed `Origin` values, normalized ([`normalize_origin`]).
    origins: Vec<String>,
    token: Option<Arc<str>>,
    unauthenticated_writes: bool,
}

impl Guard {
    /// The rules for `config`'s listener, bound at `bound` (whose port replaces a configured
    /// port 0), served over TLS when `tls`.
    pub(crate) fn new(config: &AdminConfig, bound: SocketAddr, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        let port = bound.port();
        let mut hosts = vec![SocketAddr::new(config.listen.ip(), port).to_string()];
        if config.listen.ip().is_loopback() {
            hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(|h| format!("{h}:{port}")));
        }
        hosts.extend(config.allowed_hosts.iter().cloned());
        let mut hosts: Vec<String> = hosts
            .iter()
            .map(|h| normalize_authority(h, scheme))
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut origins: Vec<String> = hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .chain(config.allowed_origins.iter().map(|o| normalize_origin(o)))
            .collect();
        origins.sort();
        origins.dedup();
        Self {
            scheme,
            hosts,
            origins,
            token: config.token.as_deref().map(Arc::from),
            unauthenticated_writes: config.allow_unauthenticated_writes,
        }
    }

    /// Whether `host` (a `Host` header's value) names this listener.
    fn host_allowed(&self, host: &str) -> bool {
        let host = normalize_authority(host, self.scheme);
        self.hosts.contains(&host)
    }

    /// Whether a browser at `origin` (an `Origin` header's value) may call the API.
    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = normalize_origin(origin);
        self.origins.contains(&origin)
    }

    /// The Host and Origin rules, as an error for a refused request.
    fn check_host_and_origin(&self, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers.get(header::HOST).map(|v| v.to_str());
        match host {
            Some(Ok(host)) if self.host_allowed(host) => {}
            Some(Ok(host)) => {
                return Err(ApiError::misdirected(format!(
                    "host {host:?} is not one this admin listener answers to ({}); to allow \
                     it, add it to admin.allowed_hosts",
                    self.hosts.join(", ")
                )));
            }
            Some(Err(_)) => {
                return Err(ApiError::misdirected(
                    "the Host header is not text; name one of this admin listener's hosts",
                ));
            }
            None => {
                return Err(ApiError::misdirected(format!(
                    "the request has no Host header; name one of this admin listener's hosts ({})",
                    self.hosts.join(", ")
                )));
            }
        }
        if HEALTH_PATHS.contains(&path) {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        match origin.to_str() {
            Ok(origin) if self.origin_allowed(origin) => Ok(()),
            Ok(origin) => Err(ApiError::forbidden(format!(
                "origin {origin:?} may not call this admin API: only its own origin \
                 ({}://<an allowed host>) may; to allow another, add it to \
                 admin.allowed_origins",
                self.scheme
            ))),
            Err(_) => Err(ApiError::forbidden("the Origin header is not text")),
        }
    }

    /// The token rule for `request`, as an error for a refused request.
    fn check_token(&self, request: &Request) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            if request.method().is_safe() || self.unauthenticated_writes {
                return Ok(());
            }
            return Err(ApiError::unauthorized(WRITES_NEED_A_TOKEN));
        };
        let headers = request.headers();
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|token| token.as_bytes().to_vec())
            .or_else(|| websocket_token(headers));
        match presented.as_deref() {
            Some(token) if constant_time_eq(token, expected.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
            None => Err(ApiError::unauthorized(
                "missing bearer token (Authorization: Bearer <admin.token>)",
            )),
        }
    }
}

/// Middleware over every route: the Host and Origin rules.
pub(crate) async fn check_host_and_origin(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    guard.check_host_and_origin(request.uri().path(), request.headers())?;
    Ok(next.run(request).await)
}

/// Middleware over the API's routes and the embedding program's: the token rule.
pub(crate) async fn require_token(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    guard.check_token(&request)?;
    Ok(next.run(request).await)
}

/// `host[:port]` as compared: lower case, without the scheme's default port (browsers leave
/// it out, so `localhost` and `localhost:80` are the same host over `http`).
fn normalize_authority(authority: &str, scheme: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    match authority.strip_suffix(default_port) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => authority,
    }
}

/// `scheme://host[:port]` as compared: lower case, without the scheme's default port.
fn normalize_origin(origin: &str) -> String {
    let origin = origin.trim().to_ascii_lowercase();
    match origin.split_once("://") {
        Some((scheme, authority)) => {
            format!("{scheme}://{}", normalize_authority(authority, scheme))
        }
        // `null` (sandboxed pages, files) and anything malformed stay as they are: no allowed
        // origin looks like that.
        None => origin,
    }
}

/// The token a browser offers when opening `/ws`: the subprotocol `bearer.<token as hex>`
/// (browsers cannot set headers on a WebSocket, and hex keeps any token a valid protocol name).
fn websocket_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let hex = offered
        .split(',')
        .find_map(|p| p.trim().strip_prefix("bearer."))?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Method, StatusCode};

    fn config(listen: &str) -> AdminConfig {
        AdminConfig {
            listen: listen.parse().unwrap(),
            ..AdminConfig::default()
        }
    }

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn status(guard: &Guard, path: &str, host: Option<&str>, origin: Option<&str>) -> u16 {
        match guard.check_host_and_origin(path, &headers(host, origin)) {
            Ok(()) => 200,
            Err(error) => error.status().as_u16(),
        }
    }

    #[test]
    fn a_loopback_listener_answers_to_its_loopback_names_with_the_bound_port() {
        let guard = Guard::new(
            &config("127.0.0.1:0"),
            "127.0.0.1:4321".parse().unwrap(),
            false,
        );
        for host in [
            "127.0.0.1:4321",
            "localhost:4321",
            "LocalHost:4321",
            "[::1]:4321",
        ] {
            assert!(guard.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:4321",
            "evil.example",
            "localhost",
            "localhost:4322",
            "127.0.0.1:0",
            "127.0.0.2:4321",
            "localhost.evil.example:4321",
            "",
        ] {
            assert!(!guard.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn a_non_loopback_listener_answers_to_its_address_and_the_listed_hosts_only() {
        let mut config = config("10.1.2.3:9901");
        config.allowed_hosts = vec!["Admin.Internal".into(), "sluice.internal:9901".into()];
        let guard = Guard::new(&config, "10.1.2.3:9901".parse().unwrap(), false);
        for host in [
            "10.1.2.3:9901",
            "admin.internal",
            "ADMIN.internal:80",
            "sluice.internal:9901",
        ] {
            assert!(guard.host_allowed(host), "{host}");
        }
        for host in [
            "localhost:9901",
            "127.0.0.1:9901",
            "sluice.internal",
            "admin.internal:9901",
        ] {
            assert!(!guard.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn ipv6_listen_addresses_are_bracketed_and_default_ports_optional() {
        let guard = Guard::new(&config("[::1]:443"), "[::1]:443".parse().unwrap(), true);
        for host in ["[::1]:443", "[::1]", "localhost", "127.0.0.1:443"] {
            assert!(guard.host_allowed(host), "{host}");
        }
        assert!(guard.origin_allowed("https://localhost"));
        assert!(guard.origin_allowed("https://[::1]:443"));
        assert!(!guard.origin_allowed("http://localhost"));
    }

    #[test]
    fn origins_must_be_the_listeners_own_or_listed() {
        let mut config = config("127.0.0.1:0");
        config.allowed_origins = vec!["https://Console.Example".into()];
        let plain = Guard::new(&config, "127.0.0.1:4321".parse().unwrap(), false);
        for origin in [
            "http://127.0.0.1:4321",
            "http://localhost:4321",
            "http://[::1]:4321",
            "https://console.example",
            "https://console.example:443",
        ] {
            assert!(plain.origin_allowed(origin), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "https://127.0.0.1:4321",
            "http://127.0.0.1:4322",
            "http://console.example",
            "null",
            "http://localhost:4321.evil.example",
        ] {
            assert!(!plain.origin_allowed(origin), "{origin}");
        }
        let tls = Guard::new(&config, "127.0.0.1:4321".parse().unwrap(), true);
        assert!(tls.origin_allowed("https://localhost:4321"));
        assert!(!tls.origin_allowed("http://localhost:4321"));
    }

    #[test]
    fn refusals_have_the_right_status_and_say_how_to_allow() {
        let guard = Guard::new(
            &config("127.0.0.1:0"),
            "127.0.0.1:4321".parse().unwrap(),
            false,
        );
        let host = Some("127.0.0.1:4321");
        assert_eq!(status(&guard, "/api/v1/stats", host, None), 200);
        assert_eq!(
            status(&guard, "/api/v1/stats", host, Some("http://127.0.0.1:4321")),
            200
        );
        assert_eq!(
            status(&guard, "/api/v1/stats", Some("evil.example:4321"), None),
            421
        );
        assert_eq!(status(&guard, "/api/v1/stats", None, None), 421);
        assert_eq!(
            status(&guard, "/api/v1/stats", host, Some("http://evil.example")),
            403
        );
        // Health checks skip the Origin rule, not the Host rule.
        assert_eq!(
            status(&guard, "/healthz", host, Some("http://evil.example")),
            200
        );
        assert_eq!(status(&guard, "/readyz", Some("evil.example"), None), 421);
        let refused = guard
            .check_host_and_origin("/ws", &headers(Some("evil.example:4321"), None))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("\"evil.example:4321\"") && refused.contains("admin.allowed_hosts"),
            "{refused}"
        );
        let refused = guard
            .check_host_and_origin("/ws", &headers(host, Some("http://evil.example")))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("\"http://evil.example\"")
                && refused.contains("admin.allowed_origins"),
            "{refused}"
        );
    }

    fn token_status(guard: &Guard, method: Method, token: Option<&str>) -> StatusCode {
        let mut request = Request::builder().method(method).uri("/api/v1/plugins");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        match guard.check_token(&request) {
            Ok(()) => StatusCode::OK,
            Err(error) => error.status(),
        }
    }

    #[test]
    fn writes_need_a_token_unless_explicitly_allowed() {
        let bound = "127.0.0.1:4321".parse().unwrap();
        let open = Guard::new(&config("127.0.0.1:0"), bound, false);
        assert_eq!(token_status(&open, Method::GET, None), StatusCode::OK);
        assert_eq!(token_status(&open, Method::HEAD, None), StatusCode::OK);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                token_status(&open, method.clone(), None),
                StatusCode::UNAUTHORIZED,
                "{method}"
            );
        }
        let mut allowed = config("127.0.0.1:0");
        allowed.allow_unauthenticated_writes = true;
        let allowed = Guard::new(&allowed, bound, false);
        assert_eq!(token_status(&allowed, Method::POST, None), StatusCode::OK);
        let mut tokened = config("127.0.0.1:0");
        tokened.token = Some("s3cret".into());
        tokened.allow_unauthenticated_writes = true;
        let tokened = Guard::new(&tokened, bound, false);
        assert_eq!(
            token_status(&tokened, Method::POST, None),
            StatusCode::UNAUTHORIZED,
            "the flag does not lift a configured token"
        );
        assert_eq!(
            token_status(&tokened, Method::GET, Some("guess")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            token_status(&tokened, Method::POST, Some("s3cret")),
            StatusCode::OK
        );
        let message = WRITES_NEED_A_TOKEN;
        assert!(
            message.contains("admin.token")
                && message.contains("SLUICE_ADMIN_TOKEN")
                && message.contains("admin.allow_unauthenticated_writes = true"),
            "{message}"
        );
    }

    #[test]
    fn the_websocket_token_is_hex_in_a_subprotocol() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("sluice.v1, bearer.733363726574"),
        );
        assert_eq!(websocket_token(&headers).as_deref(), Some(&b"s3cret"[..]));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer.7"),
        );
        assert_eq!(websocket_token(&headers), None);
    }
}
