//! A real Python `grpcio` client streams through Sluice.
//!
//! Needs the Python environment that `cargo xtask setup` creates (found through
//! `SLUICE_PYTHON` and `SLUICE_PY_STUBS`). `cargo xtask test` sets `SLUICE_REQUIRE_ALL=1`, which
//! turns a missing environment into a failure instead of a skip.

use std::process::Command;
use std::time::Duration;

use sluice_tests::*;

fn python_env() -> Option<(String, String)> {
    let python = std::env::var("SLUICE_PYTHON").ok();
    let stubs = std::env::var("SLUICE_PY_STUBS").ok();
    match (python, stubs) {
        (Some(python), Some(stubs)) => Some((python, stubs)),
        _ if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") => {
            panic!("SLUICE_PYTHON and SLUICE_PY_STUBS must be set (run `cargo xtask test`)")
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_grpcio_client_streams_through_sluice() {
    let Some((python, stubs)) = python_env() else {
        eprintln!("skipped: no Python environment; run `cargo xtask test`");
        return;
    };
    let upstream = feed("up").await;
    let proxy = sluice(config_for(&[&upstream])).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpcio_client.py");
    let target = proxy.addr().to_string();
    let output = bounded(
        Duration::from_secs(60),
        "python client",
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(target)
                .arg("500")
                .env("SLUICE_PY_STUBS", stubs)
                .output()
                .expect("python runs")
        }),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let seqs: Vec<u64> = serde_json::from_value(report["seqs"].clone()).unwrap();
    assert_eq!(seqs, (0..500).collect::<Vec<_>>());
    assert_eq!(report["echo_text"], "from python");
    assert_eq!(report["echo_payload"], serde_json::json!([0, 1, 112, 121]));
    assert_eq!(report["initial_metadata"]["x-echo-origin"], "python");
    assert_eq!(report["echo_saw_monitor_header"], false);
    assert_eq!(report["failure"]["code"], "FAILED_PRECONDITION");
    assert_eq!(report["failure"]["details"], "precondition");
    assert_eq!(proxy.snapshot().stats.downstream_streams_total, 3);
    assert_eq!(upstream.stats.snapshot().calls_total, 3);
}
