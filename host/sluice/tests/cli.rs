//! The `sluice` binary as a user runs it: config checks with clear errors, `run` serving real
//! traffic and stopping on SIGTERM, and the embedded demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_feed::pb::EchoRequest;
use sluice_feed::pb::feed_client::FeedClient;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(SLUICE)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
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
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/local.toml");
    let output = Command::new(SLUICE)
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
    let output = Command::new(SLUICE)
        .args(["check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn run_serves_traffic_and_stops_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime
        .block_on(sluice_feed::spawn(
            ([127, 0, 0, 1], 0).into(),
            Default::default(),
            None,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[[endpoints]]\nid = \"feed\"\nurl = \"http://{}\"\n", feed.addr),
    )
    .unwrap();
    let mut child = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
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
}

#[test]
fn the_demo_runs_and_delivers_messages_without_errors() {
    let output = Command::new(SLUICE)
        .args([
            "demo",
            "--duration",
            "3s",
            "--listen",
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
