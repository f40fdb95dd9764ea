//! The Rust guest plugins in `plugins/rust` (their own cargo workspace, no_std + alloc, target
//! `wasm32-unknown-unknown`): built with the rustc-web toolchain, then each core module is
//! encoded as a component.
//!
//! Cargo skips the guest build when nothing changed; the encoding step always runs (it takes a
//! few milliseconds per plugin).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::component;
use super::toolchain::Toolchain;
use crate::util;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The guest workspace.
fn workspace_dir() -> PathBuf {
    util::repo_root().join("plugins").join("rust")
}

/// One plugin crate: its library target name and the component file it becomes.
#[derive(Debug)]
struct Plugin {
    /// The cdylib's name as cargo writes it (`test_pick_first`).
    lib_name: String,
    /// The output name (`test-pick-first`).
    name: String,
}

/// Builds every plugin crate and writes `<out_dir>/<name>.wasm`.
pub fn build(toolchain: &Toolchain, target_dir: &Path, out_dir: &Path) -> Result<()> {
    let workspace = workspace_dir();
    if !workspace.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml", workspace.display());
    }
    let cargo_target = target_dir.join("wasm-plugins");
    let plugins = list_plugins(toolchain, &workspace)?;
    if plugins.is_empty() {
        bail!("no cdylib crates in {}", workspace.display());
    }
    let mut command = toolchain.cargo()?;
    command
        .args(["build", "--release", "--locked", "--workspace"])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &cargo_target);
    util::run(&mut command).context("building the Rust plugins")?;

    let built = cargo_target.join(WASM_TARGET).join("release");
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for plugin in &plugins {
        let core_path = built.join(format!("{}.wasm", plugin.lib_name));
        let core = std::fs::read(&core_path)
            .with_context(|| format!("reading {}", core_path.display()))?;
        let encoded = component::encode_component(&core)
            .with_context(|| format!("making a component of {}", core_path.display()))?;
        let out = out_dir.join(format!("{}.wasm", plugin.name));
        write_if_changed(&out, &encoded)?;
    }
    Ok(())
}

/// The workspace's cdylib targets, from `cargo metadata` (no build, no network).
fn list_plugins(toolchain: &Toolchain, workspace: &Path) -> Result<Vec<Plugin>> {
    let mut command = toolchain.cargo()?;
    command
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(workspace);
    let text = util::output(&mut command).context("listing the Rust plugin crates")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&text).context("parsing `cargo metadata` of plugins/rust")?;
    let packages = metadata["packages"]
        .as_array()
        .context("`cargo metadata` of plugins/rust has no packages")?;
    let mut plugins = Vec::new();
    for package in packages {
        let targets = package["targets"].as_array().into_iter().flatten();
        for target in targets {
            let is_cdylib = target["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|t| t == "cdylib"));
            if !is_cdylib {
                continue;
            }
            let lib_name = target["name"]
                .as_str()
                .context("a target without a name")?
                .replace('-', "_");
            let name = lib_name.replace('_', "-");
            plugins.push(Plugin { lib_name, name });
        }
    }
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(plugins)
}

/// Writes `bytes` unless the file already holds them (keeps its mtime for the host's caches),
/// through a hidden `.partial` file renamed into place so that a watcher never sees half a file.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let staging = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&staging, bytes).with_context(|| format!("writing {}", staging.display()))?;
    std::fs::rename(&staging, path).with_context(|| format!("writing {}", path.display()))
}
