//! `cargo xtask plugins`: builds the policy plugins (WebAssembly components) into
//! `<target>/plugins/<name>.wasm`.
//!
//! - [`toolchain`]: installs Debian's rustc-web toolchain into `.sluice/toolchain/rust-web`;
//! - [`rust`]: builds the Rust guests in `plugins/rust` (default router, scaler and anomaly
//!   policies, the `feed-resumer` example, and the `test-*` plugins the host's tests load);
//! - [`component`]: core module to component encoding, shared with the examples;
//! - [`examples`]: example routers in other languages.

pub mod component;
mod examples;
mod rust;
mod toolchain;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup::display_rel;
use crate::util;

/// `cargo xtask plugins [args]`.
pub fn command(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("`cargo xtask plugins` takes no arguments");
    }
    build_all().map(|_| ())
}

/// Builds every plugin; returns the folder holding them (for `SLUICE_PLUGINS`).
pub fn build_all() -> Result<PathBuf> {
    let started = Instant::now();
    let toolchain = toolchain::ensure().context("installing the rustc-web toolchain")?;
    let target_dir = util::target_dir()?;
    let out_dir = target_dir.join("plugins");
    rust::build(&toolchain, &target_dir, &out_dir)?;
    examples::build_examples(&out_dir).context("building the example plugins")?;
    let written = list_components(&out_dir)?;
    println!("plugins in {}:", display_rel(&out_dir));
    for path in &written {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!("  {name:<28} {:>10}", human_size(size));
    }
    println!(
        "plugins: {} ready in {}",
        written.len(),
        util::human(started.elapsed())
    );
    Ok(out_dir)
}

/// The `.wasm` files in `dir`, sorted.
fn list_components(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// `812 B`, `14.5 KiB`, `18.2 MiB`.
fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let value = bytes as f64;
    if value < KIB {
        format!("{bytes} B")
    } else if value < KIB * KIB {
        format!("{:.1} KiB", value / KIB)
    } else {
        format!("{:.1} MiB", value / (KIB * KIB))
    }
}
