//! `sluice plugin check` (local: compile, type-check, self-test) and `sluice plugin load`
//! (upload to a running host's admin API).

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
    println!("  world:     sluice:policy/{}@0.2.0", info.world);
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
    pub admin: String,
    pub token: Option<String>,
}

/// Uploads a component to a running host.
pub async fn load(options: LoadOptions) -> anyhow::Result<()> {
    let bytes = std::fs::read(&options.file)
        .with_context(|| format!("cannot read {}", options.file.display()))?;
    let authority = options
        .admin
        .strip_prefix("http://")
        .unwrap_or(&options.admin)
        .trim_end_matches('/')
        .to_owned();
    if options.admin.starts_with("https://") {
        bail!("the admin API is plain HTTP; use http://{authority}");
    }
    let name = sluice_policy::plugin_name(&options.file);
    let path = format!(
        "/api/v1/plugins/{}?shadow={}&name={}",
        options.slot,
        options.shadow,
        encode_query(&name)
    );
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("cannot reach the admin API at {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake with the admin API failed")?;
    tokio::spawn(connection);
    let mut request = hyper::Request::post(&path)
        .header(hyper::header::HOST, &authority)
        .header(hyper::header::CONTENT_TYPE, "application/wasm");
    if let Some(token) = &options.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(bytes)))?;
    let response = sender
        .send_request(request)
        .await
        .context("the admin API did not answer")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
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

fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
