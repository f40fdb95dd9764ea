//! `cargo xtask bench routing` and `cargo xtask train-router`: routers compared on a pool with
//! one slow, failing endpoint, and the shipped router model reproduced on the same pool; both
//! run the `routing` bench program of `sluice-tests`.
//!
//! It owns the two command lines and which model the bench and the training use. It must not
//! measure or train anything itself: the program measures and records, and
//! `plugins/training/train_router.py` trains.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{USAGE, positive, program};
use crate::setup::{self, Profile};
use crate::util;

/// The model the default router ships with: written by `cargo xtask train-router`.
const SHIPPED_ROUTER_MODEL: &str = "plugins/models/router-v1.onnx";

/// `cargo xtask bench routing`: round-robin, least-loaded, the built-in P2C and the default
/// router plugin with the ONNX scorer (`--model`, default the shipped model) on a heterogeneous
/// pool, then the cost of one decision. Runs the `routing` bench program of `sluice-tests`.
pub(super) fn run(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut model = util::repo_root().join(SHIPPED_ROUTER_MODEL);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            "--rounds" | "--seconds" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            "--model" => {
                model = PathBuf::from(rest.next().context("--model needs a file")?);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !model.is_file() {
        bail!(
            "no model at {}; `cargo xtask train-router` writes the shipped one",
            model.display()
        );
    }
    let installed = setup::setup(Profile::Test)?;
    passed.push("--model".to_owned());
    passed.push(model.display().to_string());
    passed.push("--library".to_owned());
    passed.push(installed.onnxruntime.display().to_string());
    program::run("sluice-tests", "routing", &passed)
}

/// `cargo xtask train-router [--seconds N] [--out FILE]`: the shipped router model, reproduced.
/// Runs the `routing` bench program in recording mode (the default router plugin exploring 30%
/// of its decisions on the bench's heterogeneous pool, every outcome stored), then
/// `plugins/training/train_router.py` with seed 7 on what it recorded.
pub fn train_router(args: &[String]) -> Result<()> {
    let mut seconds = "30".to_owned();
    let mut out = util::repo_root().join(SHIPPED_ROUTER_MODEL);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => seconds = positive(arg, rest.next())?,
            "--out" => out = PathBuf::from(rest.next().context("--out needs a file")?),
            other => bail!(
                "unknown option {other:?}; usage: cargo xtask train-router [--seconds N] [--out FILE]"
            ),
        }
    }
    let installed = setup::setup(Profile::Test)?;
    let dir = util::target_dir()?.join("train-router");
    // A fresh store: the model learns from this simulation only.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = dir.join("outcomes.db");
    program::run(
        "sluice-tests",
        "routing",
        &[
            "--record".to_owned(),
            store.display().to_string(),
            "--seconds".to_owned(),
            seconds,
        ],
    )?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    util::run(
        Command::new(&installed.python)
            .arg(util::repo_root().join("plugins/training/train_router.py"))
            .arg("--store")
            .arg(&store)
            .arg("--out")
            .arg(&out)
            .args(["--seed", "7"]),
    )?;
    println!("router model written to {}", out.display());
    Ok(())
}
