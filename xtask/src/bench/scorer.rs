//! `cargo xtask bench scorer`: one ONNX scorer call, p50/p99/p999 for 5 and 20 features, 1 and
//! 16 rows, one and two callers; measured by the `scorer` bench program of `sluice-scorer`.
//!
//! It owns the bench's command line and the models it scores (written with
//! `tests/python/scorer_model.py`). It must not measure anything itself: the program prints
//! its own tables.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::USAGE;
use crate::setup::{self, Profile};
use crate::util::{self, cargo};

/// Writes the bench's models with `tests/python/scorer_model.py` (the set-up's Python has onnx
/// and onnxruntime), then runs the `scorer` bench program of `sluice-scorer` (release profile)
/// on the set-up's ONNX Runtime library, with `--quick` passed on.
pub(super) fn run(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let installed = setup::setup(Profile::Test)?;
    let out = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = util::repo_root().join("tests/python/scorer_model.py");
    let mut command = cargo();
    command.args([
        "bench",
        "--package",
        "sluice-scorer",
        "--bench",
        "scorer",
        "--",
    ]);
    for features in [5, 20] {
        let model = out.join(format!("scorer-{features}.onnx"));
        util::run(
            Command::new(&installed.python)
                .arg(&script)
                .arg(&model)
                .args(["--features", &features.to_string()]),
        )?;
        command
            .arg("--model")
            .arg(format!("{features}={}", model.display()));
    }
    command
        .arg("--library")
        .arg(&installed.onnxruntime)
        .args(&passed);
    println!("$ {}", util::display(&command));
    util::run(&mut command)
}
