//! The `sluice` binary as a user runs it: config checks with clear errors, `run` serving real
//! traffic and stopping on SIGTERM, and the embedded demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_feed::pb::EchoRequest;
use sluice_feed::pb::feed_client::FeedClient;

/// The `sluice` binary, built from the workspace on first use.
fn sluice_bin() -> std::path::PathBuf {
    sluice_tests::process::binary("sluice")
}

/// Runs `sluice <args>`; whether it succeeded, and stdout followed by stderr.
fn sluice(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let output = Command::new(sluice_bin())
        .args(args)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    sluice(&["check-config".as_ref(), path.as_os_str()])
}

const VALID: &str = r#"
[[endpoints]]
id = "primary"
url = "http://127.0.0.1:7000"
"#;

#[test]
fn a_valid_config_is_accepted_and_summarised() {
    let (ok, text) = check(VALID);
    assert!(ok, "{text}");
    assert!(
        text.contains("is valid") && text.contains("class realtime: up to 18 connections"),
        "{text}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/local.toml");
    let output = Command::new(sluice_bin())
        .arg("check-config")
        .arg(example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_yellowstone_example_config_is_valid_and_says_what_sluice_does() {
    // Its resumer is target/plugins/yellowstone.wasm, relative to the repository root.
    let Some(plugins) = sluice_tests::plugins::built_plugins() else {
        return;
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    if !std::path::Path::new(root)
        .join("target/plugins/yellowstone.wasm")
        .is_file()
    {
        eprintln!(
            "skipped: plugins are in {}, not target/plugins",
            plugins.display()
        );
        return;
    }
    let output = Command::new(sluice_bin())
        .current_dir(root)
        .args(["check-config", "examples/yellowstone.toml"])
        .env("TRITON_X_TOKEN", "token-a")
        .env("HELIUS_X_TOKEN", "token-b")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("subscription /geyser.Geyser/Subscribe: shared, and packed up to 10 filters"),
        "{text}"
    );
    // Without the tokens it names the missing variable.
    let missing = Command::new(sluice_bin())
        .current_dir(root)
        .args(["check-config", "examples/yellowstone.toml"])
        .env_remove("TRITON_X_TOKEN")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("TRITON_X_TOKEN"));
}

#[test]
fn bad_configs_fail_with_the_key_and_the_problem() {
    let cases = [
        ("", "`endpoints`"),
        (
            &format!("{VALID}\n[pool]\nmax_conections = 3\n") as &str,
            "max_conections",
        ),
        (
            &format!("{VALID}\n[pool]\nmax_connections = 0\n"),
            "pool.max_connections",
        ),
        (
            "[[endpoints]]\nid = \"a\"\nurl = \"tcp://h:1\"\n",
            "endpoints[0].url",
        ),
        (
            &format!("{VALID}\n[[monitors]]\nid = \"m\"\nclass = \"bulk\"\n"),
            "bulk",
        ),
        (
            &format!("{VALID}\n[classes.event]\nshare = 0.9\n"),
            "shares add up",
        ),
        (
            &format!("{VALID}metadata = {{ \"x-token\" = \"${{SLUICE_TEST_UNSET_VAR}}\" }}\n"),
            "SLUICE_TEST_UNSET_VAR is not set",
        ),
        ("this is not toml", "invalid config"),
    ];
    for (config, needle) in cases {
        let (ok, text) = check(config);
        assert!(!ok, "accepted: {config}");
        assert!(text.contains(needle), "expected {needle:?} in: {text}");
        assert!(text.contains("sluice.toml"), "the file is named: {text}");
    }
    let output = Command::new(sluice_bin())
        .args(["check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

/// A runtime and a feed server on it, for tests that start the `sluice` binary against it.
fn feed_on_loopback() -> (tokio::runtime::Runtime, sluice_feed::FeedHandle) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime
        .block_on(sluice_feed::spawn(
            ([127, 0, 0, 1], 0).into(),
            Default::default(),
            None,
        ))
        .unwrap();
    (runtime, feed)
}

/// Also checks the JSON log output: one JSON object per line, with a span per stream and one
/// per routing decision (inside it) carrying what was chosen.
#[test]
fn run_serves_traffic_and_stops_on_sigterm() {
    let (runtime, feed) = feed_on_loopback();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[endpoints]]\nid = \"feed\"\nurl = \"http://{}\"\n", feed.addr),
    )
    .unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        // The default history store (sluice-data/) goes to the temporary folder.
        .current_dir(dir.path())
        .env("RUST_LOG", "warn,sluice_proxy::forward=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut line = String::new();
    // Kept open until the end: closing it would make the host's next line fail with EPIPE.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("sluice listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let reply = runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = FeedClient::new(channel);
        client
            .echo(EchoRequest {
                payload: vec![].into(),
                text: "via binary".into(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(reply.text, "via binary");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "sluice did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(stdout);
    let logs = logs.join().unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let routed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "routed")
        .unwrap_or_else(|| panic!("no routing decision logged:\n{logs}"));
    assert_eq!(routed["span"]["name"], "decision", "{routed}");
    assert!(routed["fields"]["connection"].is_u64(), "{routed}");
    assert_eq!(routed["fields"]["endpoint"], "feed");
    assert!(
        routed["fields"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let stream = &routed["spans"][0];
    assert_eq!(stream["name"], "stream", "{routed}");
    assert_eq!(stream["monitor"], "anonymous");
    assert_eq!(stream["method"], "/sluice.feed.v1.Feed/Echo");
}

#[test]
fn the_demo_runs_and_delivers_messages_without_errors() {
    let output = Command::new(sluice_bin())
        .args([
            "demo",
            "--duration",
            "3s",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--report-every",
            "1s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("20 monitors"), "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo finished"))
        .expect("summary line");
    let delivered: u64 = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(delivered > 100, "{summary}");
    assert!(summary.ends_with(" 0 monitor errors"), "{summary}");
    // Sharing is visible: fewer upstream streams than monitor streams.
    let status_line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("monitor streams"))
        .expect("status line");
    assert!(
        status_line.contains("monitor streams 20 -> upstream streams 11"),
        "{status_line}"
    );
}

fn plugin_command(args: &[&str]) -> (bool, String) {
    let mut all: Vec<&std::ffi::OsStr> = vec!["plugin".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    sluice(&all)
}

#[test]
fn plugin_check_describes_good_components_and_names_what_is_wrong_with_bad_ones() {
    let Some(built) = sluice_tests::plugins::built_plugins() else {
        return;
    };
    let path = |name: &str| built.join(name).display().to_string();
    let (ok, text) = plugin_command(&["check", &path("router.wasm")]);
    assert!(ok, "{text}");
    assert!(text.contains("valid router plugin"), "{text}");
    assert!(text.contains("exports:   route"), "{text}");
    assert!(text.contains("self-test: passed 3 sample inputs"), "{text}");
    let (ok, text) = plugin_command(&["check", &path("scaler.wasm")]);
    assert!(ok && text.contains("valid scaler plugin"), "{text}");
    let (ok, text) = plugin_command(&["check", &path("feed-resumer.wasm")]);
    assert!(ok, "{text}");
    assert!(
        text.contains("valid resumer plugin")
            && text.contains("world:     sluice:policy/resumer@0.3.0")
            && text.contains("exports:   resume")
            && text.contains("self-test: passed 3 sample inputs"),
        "{text}"
    );
    let (ok, text) = plugin_command(&[
        "load",
        &path("feed-resumer.wasm"),
        "--slot",
        "resumers",
        "--admin",
        "127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(
        text.contains("\"resumers\" is not a slot (router, scaler, anomaly, resumer)"),
        "{text}"
    );

    let (ok, text) = plugin_command(&["check", &path("test-no-export.wasm")]);
    assert!(!ok);
    assert!(text.contains("exports none of `route`"), "{text}");
    let (ok, text) = plugin_command(&["check", &path("test-wrong-signature.wasm")]);
    assert!(!ok);
    assert!(
        text.contains("`route` export does not match the router world"),
        "{text}"
    );
    let (ok, text) = plugin_command(&["check", &path("test-loop.wasm")]);
    assert!(!ok);
    assert!(
        text.contains("failed its self-test") && text.contains("deadline"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    let (ok, text) = plugin_command(&["check", &garbage.display().to_string()]);
    assert!(!ok);
    assert!(text.contains("not a valid WebAssembly component"), "{text}");
}

#[test]
fn plugin_load_swaps_the_router_of_a_running_host() {
    let Some(built) = sluice_tests::plugins::built_plugins() else {
        return;
    };
    let (_runtime, feed) = feed_on_loopback();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        built.join("test-pick-first.wasm"),
        plugins.join("router.wasm"),
    )
    .unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{TEST_ADMIN_TOKEN}}\"\n\n\
             [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n[[endpoints]]\nid = \"feed\"\nurl = \"http://{}\"\n",
            plugins.display(),
            sluice_tests::plugins::shared_cache().display(),
            feed.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["run", "--config"])
        .arg(&path)
        // The default history store (sluice-data/) goes to the temporary folder.
        .current_dir(dir.path())
        .env("TEST_ADMIN_TOKEN", "cli-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _listening = lines.next().unwrap().unwrap();
    let admin_line = lines.next().unwrap().unwrap();
    let admin = admin_line
        .strip_prefix("admin API on ")
        .unwrap_or_else(|| panic!("{admin_line}"))
        .to_owned();
    let last = built.join("test-pick-last.wasm").display().to_string();
    let (ok, text) = plugin_command(&["load", &last, "--slot", "router", "--admin", &admin]);
    assert!(!ok, "no token: refused");
    assert!(
        text.contains("401") && text.contains("missing bearer token"),
        "{text}"
    );
    let output = Command::new(sluice_bin())
        .args([
            "plugin", "load", &last, "--slot", "router", "--admin", &admin,
        ])
        .env("SLUICE_ADMIN_TOKEN", "cli-token")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("as router active v2"),
        "v1 came from the folder: {text}"
    );
    let (ok, text) = plugin_command(&[
        "load",
        &last,
        "--slot",
        "scaler",
        "--admin",
        &admin,
        "--token",
        "cli-token",
    ]);
    assert!(!ok);
    assert!(text.contains("targets the router world"), "{text}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn report_prints_the_stored_history_as_json_and_as_one_html_page() {
    use sluice_analytics::records::{Rollup, unix_ms_now};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let store = sluice_analytics::store::Store::open(&db, Duration::from_secs(7 * 86_400)).unwrap();
    let now = unix_ms_now();
    let minute = now - now.rem_euclid(60_000);
    let rollups: Vec<Rollup> = (1..=30)
        .map(|i| Rollup {
            ts_ms: minute - i * 60_000,
            metric: "pool.connections".into(),
            avg: 4.0,
            min: 3.0,
            max: 5.0,
            count: 60,
        })
        .collect();
    store.write_rollups(&rollups).unwrap();
    drop(store);
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!("{VALID}\n[store]\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    let (ok, text) = sluice(&[
        "report".as_ref(),
        "hourly".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(report["period"], "hourly");
    assert_eq!(report["summary"]["connections_mean"], 4.0);
    let (ok, html) = sluice(&[
        "report".as_ref(),
        "daily".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
        "--format".as_ref(),
        "html".as_ref(),
    ]);
    assert!(ok, "{html}");
    assert!(html.contains("<html") && html.contains("<svg"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));

    // A store that does not exist is a clear error, and the period is checked.
    std::fs::write(
        &path,
        format!(
            "{VALID}\n[store]\npath = \"{}\"\n",
            dir.path().join("missing.db").display()
        ),
    )
    .unwrap();
    let (ok, text) = sluice(&[
        "report".as_ref(),
        "hourly".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ]);
    assert!(!ok && text.contains("missing.db"), "{text}");
    let (ok, text) = sluice(&["report".as_ref(), "monthly".as_ref()]);
    assert!(!ok && text.contains("hourly, daily, weekly"), "{text}");
}

#[test]
fn check_config_warns_about_an_open_listener_without_monitor_authentication() {
    let open = format!(
        "[server]\nlisten = \"0.0.0.0:50051\"\n{VALID}\n[[monitors]]\nid = \"m\"\nclass = \"event\"\n"
    );
    let (ok, text) = check(&open);
    assert!(ok, "valid, only risky: {text}");
    assert!(text.contains("warning:"), "{text}");
    assert!(text.contains("without a token: m"), "{text}");
    let (ok, text) = check(VALID);
    assert!(ok, "{text}");
    assert!(!text.contains("warning:"), "{text}");
}
