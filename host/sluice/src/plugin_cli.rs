//! `sluice plugin check` (local: compile, type-check, self-test) and `sluice plugin load`
//! (upload to a running host's admin API, over HTTP or HTTPS, as `application/wasm` with the
//! bearer token).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use sluice_config::{PluginsConfig, SlotKind};
use sluice_policy::Policies;

/// Compiles, type-checks and self-tests a component; prints what it is. Errors name the reason.
pub fn check(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // No compile cache: a check must not leave files behind.
    let config = PluginsConfig {
        cache_dir: Some(PathBuf::new()),
        ..PluginsConfig::default()
    };
    let policies = Policies::new(&config)?;
    let name = sluice_policy::plugin_name(file);
    let (info, samples) = policies
        .check(&bytes, &name)
        .with_context(|| format!("{} is not a usable policy plugin", file.display()))?;
    println!("{}: valid {} plugin", file.display(), info.world);
    println!("  world:     sluice:policy/{}@0.3.0", info.world);
    println!("  size:      {} bytes (blake3 {})", info.size, info.hash);
    println!("  exports:   {}", info.exports.join(", "));
    println!("  imports:   {}", info.imports.join(", "));
    println!(
        "  wasi:      {}",
        if info.uses_wasi {
            "imported (given an empty context: no files, sockets or environment; waiting traps)"
        } else {
            "not imported"
        }
    );
    println!(
        "  compile:   {:.1} ms",
        info.compile_time.as_secs_f64() * 1000.0
    );
    println!("  self-test: passed {samples} sample inputs");
    Ok(())
}

/// Options of `sluice plugin load`.
pub struct LoadOptions {
    pub file: PathBuf,
    pub slot: SlotKind,
    pub shadow: bool,
    /// `http://host:port`, `https://host:port`, or `host:port` (plain HTTP).
    pub admin: String,
    pub token: Option<String>,
    /// A PEM CA bundle to verify an `https://` admin API with (else the Mozilla roots).
    pub ca: Option<PathBuf>,
}

/// Where the admin API is: its `host:port` and whether it speaks HTTPS.
struct AdminUrl {
    authority: String,
    https: bool,
}

impl AdminUrl {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let (https, rest) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => {
                bail!("the admin URL {text:?} has scheme {scheme}; use http:// or https://")
            }
            None => (false, text),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("the admin URL {text:?} is not scheme://host:port");
        }
        // Without a port, the scheme's default one.
        let authority = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:{}", if https { 443 } else { 80 })
        } else {
            authority.to_owned()
        };
        Ok(Self { authority, https })
    }

    /// The host part, without port or IPv6 brackets: the name a certificate must carry.
    fn host(&self) -> &str {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Uploads a component to a running host.
pub async fn load(options: LoadOptions) -> anyhow::Result<()> {
    let bytes = std::fs::read(&options.file)
        .with_context(|| format!("cannot read {}", options.file.display()))?;
    let url = AdminUrl::parse(&options.admin)?;
    if options.ca.is_some() && !url.https {
        bail!(
            "--ca verifies an https:// admin API; {} is plain HTTP",
            options.admin
        );
    }
    let name = sluice_policy::plugin_name(&options.file);
    let path = format!(
        "/api/v1/plugins/{}?shadow={}&name={}",
        options.slot,
        options.shadow,
        encode_query(&name)
    );
    let mut request = hyper::Request::post(&path)
        .header(hyper::header::HOST, &url.authority)
        .header(hyper::header::CONTENT_TYPE, "application/wasm");
    if let Some(token) = &options.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(bytes)))?;
    let stream = tokio::net::TcpStream::connect(&url.authority)
        .await
        .with_context(|| format!("cannot reach the admin API at {}", url.authority))?;
    let (status, body) = if url.https {
        let tls = sluice_admin::tls::connect(stream, url.host(), options.ca.as_deref())
            .await
            .with_context(|| {
                let hint = match &options.ca {
                    Some(ca) => format!("verified with the CA in {}", ca.display()),
                    None => "verified with the public web roots; for a self-signed \
                             certificate pass --ca with the CA that signed it"
                        .to_owned(),
                };
                format!(
                    "cannot reach the admin API at https://{} ({hint})",
                    url.authority
                )
            })?;
        send(tls, request).await?
    } else {
        send(stream, request).await?
    };
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let message = json
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| json.to_string());
        bail!(
            "the host refused {}: {status}: {message}",
            options.file.display()
        );
    }
    let plugin = &json["plugin"];
    println!(
        "loaded {} as {} {} v{} in {:.1} ms (self-test {} samples, {} compile)",
        options.file.display(),
        json["slot"].as_str().unwrap_or("?"),
        if options.shadow { "shadow" } else { "active" },
        plugin["version"],
        json["took_ms"].as_f64().unwrap_or(0.0),
        json["self_test_samples"],
        if plugin["cached_compile"].as_bool() == Some(true) {
            "cached"
        } else {
            "fresh"
        },
    );
    Ok(())
}

/// Sends `request` over `io` (plain TCP or TLS) as HTTP/1.1; the status and the whole body.
async fn send<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .context("HTTP handshake with the admin API failed")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("the admin API did not answer")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::AdminUrl;

    #[test]
    fn admin_urls_give_the_authority_the_scheme_and_the_certificate_name() {
        for (text, authority, https, host) in [
            (
                "http://127.0.0.1:9901",
                "127.0.0.1:9901",
                false,
                "127.0.0.1",
            ),
            ("127.0.0.1:9901/", "127.0.0.1:9901", false, "127.0.0.1"),
            (
                "https://admin.example:8443/",
                "admin.example:8443",
                true,
                "admin.example",
            ),
            (
                "https://admin.example",
                "admin.example:443",
                true,
                "admin.example",
            ),
            ("http://localhost", "localhost:80", false, "localhost"),
            ("https://[::1]:9901", "[::1]:9901", true, "::1"),
            ("https://[::1]", "[::1]:443", true, "::1"),
        ] {
            let url = AdminUrl::parse(text).unwrap();
            assert_eq!(
                (url.authority.as_str(), url.https, url.host()),
                (authority, https, host),
                "{text}"
            );
        }
        for text in ["ftp://h:1", "http://h:1/api", "https://"] {
            assert!(AdminUrl::parse(text).is_err(), "{text}");
        }
    }
}
