//! `cargo xtask demo [args...]`: builds the plugins, then runs `sluice demo` from a debug build
//! with the default policies in a watched folder of its own.
//!
//! It owns the demo's command line and its plugin folder. It must not set up anything beyond
//! the plugins (the demo's endpoints are simulated in the same process), nor parse the demo's
//! own arguments: those go to `sluice demo` as they are.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::plugins;
use crate::util::{self, cargo};

/// Builds the plugins, then runs `sluice demo` from a debug build (sharing the test build's
/// cache) with `args`; `--plugins` defaults to [`demo_plugins`]. Exits as the demo does.
pub fn run(args: &[String]) -> Result<ExitCode> {
    let built = plugins::build_all()?;
    let mut command = cargo();
    command
        .args(["run", "--package", "sluice", "--", "demo"])
        .args(args);
    if !args
        .iter()
        .any(|a| a == "--plugins" || a.starts_with("--plugins="))
    {
        command.arg("--plugins").arg(demo_plugins(&built)?);
    }
    println!("$ {}", util::display(&command));
    let status = command.status().context("cannot start cargo")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal (Ctrl-C): the demo already said what happened.
        None => ExitCode::from(130),
    })
}

/// A watched folder for the demo with the default policies (`router.wasm`, `scaler.wasm`,
/// `anomaly.wasm`) and the feed resumer as `resumer.wasm` (the demo's endpoints are feed
/// servers), fresh each run, so that dropping a plugin into it swaps it in while the demo's
/// monitors stream. It is not the build output folder: rebuilding plugins must not reload the
/// demo's slots.
fn demo_plugins(built: &Path) -> Result<PathBuf> {
    let dir = util::target_dir()?.join("demo-plugins");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (built_name, name) in [
        ("router.wasm", "router.wasm"),
        ("scaler.wasm", "scaler.wasm"),
        ("anomaly.wasm", "anomaly.wasm"),
        ("feed-resumer.wasm", "resumer.wasm"),
    ] {
        std::fs::copy(built.join(built_name), dir.join(name))
            .with_context(|| format!("copying {built_name} into {}", dir.display()))?;
    }
    Ok(dir)
}
