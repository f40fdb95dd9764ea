//! `[server]`: the listener monitors connect to, and every limit Sluice puts on what a monitor
//! may send it. One buggy or hostile client must not take the pool down for the others, so each
//! input a client controls (connections, streams, header bytes, time, buffered request bytes)
//! has a bound here with a safe default.
//!
//! This module describes the listener and checks the values; the data plane enforces them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, TrafficClass, invalid, require_file};

/// The listener monitors connect to.
///
/// Its [`Default`] is the one source of its defaults: serde fills a table's missing keys from
/// it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the gRPC listener. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// Serve TLS to monitors instead of plaintext HTTP/2 (h2c).
    pub tls: Option<ServerTls>,
    /// Largest gRPC message accepted in either direction, in bytes. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Refuse monitors that are not listed in `[[monitors]]` (otherwise they get `default_class`).
    pub reject_unknown_monitors: bool,
    /// Class given to monitors that do not name themselves or are not listed. Default `event`.
    pub default_class: TrafficClass,
    /// Maximum concurrent streams one monitor connection may open. Default 1024.
    pub max_concurrent_streams: u32,
    /// How long a shutdown waits for open streams before cutting them. Default 10 s.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
    /// A monitor connection with no open stream for this long is closed (GOAWAY). This also
    /// sheds peers that connect and never send a complete request. Default 5 min.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Monitor connections open at once, over every peer. One more is answered with GOAWAY
    /// right after the HTTP/2 handshake, and the calls it sent get `RESOURCE_EXHAUSTED`.
    /// Default 4096.
    pub max_connections: usize,
    /// Monitor connections open at once from one peer IP address. Default 256.
    pub max_connections_per_peer: usize,
    /// Streams (calls) one monitor id may have open at once; one more gets
    /// `RESOURCE_EXHAUSTED`. `[[monitors]] max_streams` overrides it for a monitor. Default 1024.
    pub max_streams_per_monitor: usize,
    /// Largest request header list (HPACK-decoded names and values) the listener accepts, in
    /// bytes. Default 16 KiB, as tonic's.
    pub max_header_list_bytes: u32,
    /// Time a call has, from its HEADERS, to deliver its first complete request message (or to
    /// end its request stream). A call that sends nothing for this long ends with
    /// `DEADLINE_EXCEEDED`; it never counts against an endpoint. Default 10 s.
    #[serde(with = "crate::duration")]
    pub request_timeout: Duration,
    /// Request bytes Sluice may hold, over all calls, while it reads whole request messages
    /// before admission (shared and resumable methods). A call that would go over gets
    /// `RESOURCE_EXHAUSTED`. Per call, no more than the call's HTTP/2 window is ever buffered.
    /// Default 64 MiB.
    pub max_buffered_request_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: None,
            max_message_bytes: 16 * 1024 * 1024,
            reject_unknown_monitors: false,
            default_class: TrafficClass::Event,
            max_concurrent_streams: 1024,
            shutdown_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 4096,
            max_connections_per_peer: 256,
            max_streams_per_monitor: 1024,
            max_header_list_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            max_buffered_request_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A certificate and key served to monitors, and optionally the CA their own certificates must
/// chain to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle that monitors' client certificates must chain to (mutual TLS). When set, a
    /// monitor without a valid certificate cannot connect, and a certificate names its monitor:
    /// its first DNS subject alternative name, else its common name, is the monitor id, and an
    /// `x-sluice-monitor` header that names another monitor is refused.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Longest monitor id, in bytes.
pub const MAX_MONITOR_ID_BYTES: usize = 128;

/// Checks a monitor id, as configured in `[[monitors]]` or sent in `x-sluice-monitor`: 1 to
/// [`MAX_MONITOR_ID_BYTES`] bytes of ASCII letters, digits and `.`, `_`, `-`, `:`, `/`, `@`.
/// Ids end up in logs, metrics labels and alerts, so anything else is refused.
pub fn check_monitor_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MONITOR_ID_BYTES {
        return Err(format!(
            "must be 1 to {MAX_MONITOR_ID_BYTES} bytes long (it has {})",
            id.len()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@')))
    {
        Some(bad) => Err(format!(
            "has {bad:?}; ids take letters, digits and . _ - : / @"
        )),
        None => Ok(()),
    }
}

impl crate::Config {
    /// What is valid but risky in this config, one sentence each, for `sluice check-config`
    /// and the start-up log. Today: a listener other hosts can reach while monitors are neither
    /// token- nor certificate-authenticated, so any caller can claim a monitor's name (its
    /// class, its limits, its breaker).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let server = &self.server;
        let certified = server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        if !server.listen.ip().is_loopback() && !certified {
            let open: Vec<&str> = self
                .monitors
                .iter()
                .filter(|m| m.token.is_none())
                .map(|m| m.id.as_str())
                .collect();
            if self.monitors.is_empty() || !open.is_empty() {
                let who = if open.is_empty() {
                    "no monitor is configured, so every caller is served".to_owned()
                } else {
                    format!("monitors without a token: {}", open.join(", "))
                };
                warnings.push(format!(
                    "server.listen ({}) is reachable from other hosts and monitors are neither \
                     token- nor certificate-authenticated ({who}): any caller can claim their \
                     names. Set a `token` per [[monitors]] entry, or `[server.tls] \
                     client_ca_file`, and `reject_unknown_monitors = true`.",
                    server.listen
                ));
            }
        }
        warnings
    }

    pub(crate) fn validate_server(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        let positive = [
            ("server.max_message_bytes", server.max_message_bytes),
            ("server.max_connections", server.max_connections),
            (
                "server.max_connections_per_peer",
                server.max_connections_per_peer,
            ),
            (
                "server.max_streams_per_monitor",
                server.max_streams_per_monitor,
            ),
            (
                "server.max_buffered_request_bytes",
                server.max_buffered_request_bytes,
            ),
            (
                "server.max_concurrent_streams",
                server.max_concurrent_streams as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if server.max_connections_per_peer > server.max_connections {
            return Err(invalid(
                "server.max_connections_per_peer",
                format!(
                    "must be at most server.max_connections ({})",
                    server.max_connections
                ),
            ));
        }
        // Below a few hundred bytes not even a gRPC call's own headers fit.
        if server.max_header_list_bytes < 1024 {
            return Err(invalid(
                "server.max_header_list_bytes",
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            ("server.idle_timeout", server.idle_timeout),
            ("server.request_timeout", server.request_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if let Some(tls) = &server.tls {
            require_file("server.tls.cert_file", &tls.cert_file)?;
            require_file("server.tls.key_file", &tls.key_file)?;
            if let Some(ca) = &tls.client_ca_file {
                require_file("server.tls.client_ca_file", ca)?;
            }
        }
        for (i, monitor) in self.monitors.iter().enumerate() {
            check_monitor_id(&monitor.id)
                .map_err(|problem| invalid(format!("monitors[{i}].id"), problem))?;
            if monitor.max_streams == Some(0) {
                return Err(invalid(
                    format!("monitors[{i}].max_streams"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}
