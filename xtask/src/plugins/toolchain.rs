//! The Rust toolchain that builds the guest plugins: Debian bookworm-security's `rustc-web` 1.96
//! set, unpacked with `dpkg -x` into `.sluice/toolchain/rust-web` (no system-wide install).
//!
//! rustup's toolchains on this kind of machine have no `wasm32-unknown-unknown` standard library
//! and cannot download one; Debian ships a complete, matching set: `rustc` and `cargo`, the
//! library source that `-Zbuild-std` compiles, `rust-lld`, and the LLVM 22 they link against.
//! Their `cargo` runs with `RUSTC_BOOTSTRAP=1` (for `[unstable] build-std`) and with the toolchain
//! on `PATH`/`LD_LIBRARY_PATH`, and never sees the host's rustup toolchain.
//!
//! The install is stamped (`.sluice/toolchain/rust-web/.stamp`, a hash of the package list) so
//! that reruns return at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{display_rel, sluice_dir};
use crate::util::{self, fnv1a};

/// The Rust packages, all from bookworm-security at the same version.
const RUST_VERSION: &str = "1.96.0+dfsg1-1~deb12u2";
const RUST_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-1.96",
    "libstd-rust-web-dev",
    "rust-web-src",
    "rust-web-llvm",
    "cargo-web",
];

/// The LLVM they link against (`rust-lld` is `lld-22`).
const LLVM_VERSION: &str = "1:22.1.8-1~deb12u1";
const LLVM_PACKAGES: &[&str] = &["libllvm22", "lld-22"];

/// Shared libraries that `cargo` links against, at whatever version bookworm has.
const LIBRARY_PACKAGES: &[&str] = &[
    "libgit2-1.5",
    "libhttp-parser2.9",
    "libmbedtls14",
    "libmbedx509-1",
    "libmbedcrypto7",
];

/// Bump to force a reinstall when the install procedure itself changes.
const TOOLCHAIN_VERSION: &str = "1";

/// Set to the root of an existing install (e.g. `/` after `apt-get install rustc-web ...`) to
/// skip the download.
const ROOT_ENV: &str = "SLUICE_RUST_WEB_ROOT";

/// An unpacked rustc-web toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// Where the packages were unpacked (holds `usr/`).
    root: PathBuf,
    /// The folder holding the shared libraries (`usr/lib/<multiarch>`).
    lib_dir: PathBuf,
}

impl Toolchain {
    fn bin_dir(&self) -> PathBuf {
        self.root.join("usr").join("bin")
    }

    /// The toolchain's `rustc`.
    pub fn rustc(&self) -> PathBuf {
        self.bin_dir().join("rustc")
    }

    /// The toolchain's `cargo`.
    pub fn cargo_path(&self) -> PathBuf {
        self.bin_dir().join("cargo")
    }

    /// A `cargo` command that uses only this toolchain: its `bin` first on `PATH`, its libraries
    /// on `LD_LIBRARY_PATH`, `RUSTC` pointing at its `rustc`, nightly features allowed, and
    /// nothing inherited from rustup or from the `cargo` running xtask.
    pub fn cargo(&self) -> Result<Command> {
        let mut command = Command::new(self.cargo_path());
        for (name, value) in self.env()? {
            command.env(name, value);
        }
        for name in INHERITED_ENV_TO_CLEAR {
            command.env_remove(name);
        }
        Ok(command)
    }

    /// `PATH`, `LD_LIBRARY_PATH`, `RUSTC` and `RUSTC_BOOTSTRAP` for running the toolchain.
    fn env(&self) -> Result<Vec<(&'static str, std::ffi::OsString)>> {
        let path = prepend_path("PATH", &self.bin_dir())?;
        let library_path = prepend_path("LD_LIBRARY_PATH", &self.lib_dir)?;
        Ok(vec![
            ("PATH", path),
            ("LD_LIBRARY_PATH", library_path),
            ("RUSTC", self.rustc().into_os_string()),
            ("RUSTDOC", self.bin_dir().join("rustdoc").into_os_string()),
            ("RUSTC_BOOTSTRAP", "1".into()),
        ])
    }
}

/// Variables that `cargo xtask` (run by rustup's cargo) may carry and that would make the guest
/// build use the wrong compiler, flags or wrapper.
const INHERITED_ENV_TO_CLEAR: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTC",
    "CARGO",
];

fn prepend_path(name: &str, dir: &Path) -> Result<std::ffi::OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os(name) {
        dirs.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(dirs).with_context(|| format!("building {name} with {}", dir.display()))
}

/// The install folder.
fn install_dir() -> PathBuf {
    sluice_dir().join("toolchain").join("rust-web")
}

/// The `name=version` list handed to `apt-get download`.
fn package_specs() -> Vec<String> {
    let pinned = |packages: &[&str], version: &str| {
        packages
            .iter()
            .map(|p| format!("{p}={version}"))
            .collect::<Vec<_>>()
    };
    let mut specs = pinned(RUST_PACKAGES, RUST_VERSION);
    specs.extend(pinned(LLVM_PACKAGES, LLVM_VERSION));
    specs.extend(LIBRARY_PACKAGES.iter().map(|p| (*p).to_owned()));
    specs
}

/// The toolchain, installed first unless the stamp says it is there.
pub fn ensure() -> Result<Toolchain> {
    if let Some(root) = std::env::var_os(ROOT_ENV) {
        let toolchain = open(Path::new(&root))
            .with_context(|| format!("{ROOT_ENV}={} is not a rustc-web install", root.display()))?;
        check_runs(&toolchain)?;
        return Ok(toolchain);
    }
    let specs = package_specs();
    let joined = specs.join("\n");
    let key = format!(
        "{:016x}",
        fnv1a(&[TOOLCHAIN_VERSION.as_bytes(), joined.as_bytes()])
    );
    let dir = install_dir();
    let stamp = dir.join(".stamp");
    let stamp_ok =
        std::fs::read_to_string(&stamp).is_ok_and(|s| s.lines().next() == Some(key.as_str()));
    if stamp_ok && let Ok(toolchain) = open(&dir) {
        return Ok(toolchain);
    }
    println!(
        "plugins: installing Debian's rustc-web {RUST_VERSION} into {}",
        display_rel(&dir)
    );
    install(&dir, &specs)?;
    let toolchain = open(&dir)?;
    let version = check_runs(&toolchain)?;
    std::fs::write(&stamp, format!("{key}\n{joined}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("plugins: toolchain ready: {version}");
    Ok(toolchain)
}

/// A toolchain at `root` if its `rustc`, `cargo`, library source and shared libraries are there.
fn open(root: &Path) -> Result<Toolchain> {
    let usr = root.join("usr");
    for needed in [
        "bin/rustc",
        "bin/cargo",
        "bin/rust-lld",
        "lib/rustlib/src/rust/library/core/Cargo.toml",
    ] {
        let path = usr.join(needed);
        if !path.exists() {
            bail!("{} is missing", path.display());
        }
    }
    let lib_dir = multiarch_lib_dir(&usr.join("lib"))
        .with_context(|| format!("no usr/lib/<arch>-linux-gnu under {}", root.display()))?;
    Ok(Toolchain {
        root: root.to_path_buf(),
        lib_dir,
    })
}

/// `usr/lib/x86_64-linux-gnu` (or the folder for this machine's architecture).
fn multiarch_lib_dir(lib: &Path) -> Option<PathBuf> {
    let preferred = lib.join(format!("{}-linux-gnu", std::env::consts::ARCH));
    if preferred.is_dir() {
        return Some(preferred);
    }
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.is_dir() && path.to_string_lossy().ends_with("-linux-gnu"))
}

/// Runs `rustc -V` and `cargo -V` from the toolchain; returns rustc's version line.
fn check_runs(toolchain: &Toolchain) -> Result<String> {
    let mut rustc = Command::new(toolchain.rustc());
    rustc.arg("-V");
    for (name, value) in toolchain.env()? {
        rustc.env(name, value);
    }
    let version = util::output(&mut rustc).context("the unpacked rustc does not run")?;
    let mut cargo = toolchain.cargo()?;
    cargo.arg("-V");
    util::output(&mut cargo).context("the unpacked cargo does not run")?;
    Ok(version.trim().to_owned())
}

/// Downloads the packages into a staging folder, unpacks them into `<dir>.new`, then swaps that
/// into place.
fn install(dir: &Path, specs: &[String]) -> Result<()> {
    for tool in ["apt-get", "dpkg"] {
        if !util::on_path(tool) {
            bail!(
                "building the Rust plugins needs Debian's rustc-web {RUST_VERSION} and `{tool}` \
                 was not found: on Debian 12 (bookworm) with bookworm-security enabled this \
                 runs by itself; elsewhere install those packages and set {ROOT_ENV} to the \
                 folder that holds their usr/"
            );
        }
    }
    let parent = dir.parent().context("toolchain folder has no parent")?;
    let debs = parent.join("rust-web.debs");
    let staging = parent.join("rust-web.new");
    for stale in [&debs, &staging] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    download(&debs, specs)?;
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    unpack(&debs, &staging)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    std::fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;
    Ok(())
}

/// `apt-get download` into `debs`; when the versions are unknown (stale or missing package
/// lists) runs `apt-get update` once and retries.
fn download(debs: &Path, specs: &[String]) -> Result<()> {
    let attempt = || {
        let mut command = Command::new("apt-get");
        command.arg("download").args(specs).current_dir(debs);
        util::run(&mut command)
    };
    let Err(first) = attempt() else {
        return Ok(());
    };
    if !util::is_root() {
        return Err(first).context(
            "apt-get could not download the toolchain; if it says a version was not found, run \
             `sudo apt-get update` (bookworm-security must be in the sources) and rerun",
        );
    }
    println!("plugins: apt-get download failed; updating the package lists and retrying");
    util::run(Command::new("apt-get").arg("update"))
        .context("apt-get update (needed to find the pinned rustc-web packages)")?;
    attempt().context(format!(
        "apt-get could not download rustc-web {RUST_VERSION} and its dependencies even after \
         apt-get update: is bookworm-security (deb.debian.org/debian-security) in the apt sources?"
    ))
}

/// `dpkg -x` of every downloaded package into `root`.
fn unpack(debs: &Path, root: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(debs)
        .with_context(|| format!("listing {}", debs.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    if files.len() != package_specs().len() {
        bail!(
            "apt-get download left {} .deb files in {}, expected {}",
            files.len(),
            debs.display(),
            package_specs().len()
        );
    }
    for deb in &files {
        let out = Command::new("dpkg")
            .arg("-x")
            .arg(deb)
            .arg(root)
            .output()
            .with_context(|| format!("cannot run dpkg -x {}", deb.display()))?;
        if !out.status.success() {
            bail!(
                "dpkg -x {} failed ({}): {}",
                deb.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "plugins: unpacked {} packages into {}",
        files.len(),
        display_rel(root)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_rust_and_llvm_packages() {
        let specs = package_specs();
        let count = RUST_PACKAGES.len() + LLVM_PACKAGES.len() + LIBRARY_PACKAGES.len();
        assert_eq!(specs.len(), count);
        assert!(specs.contains(&"rustc-web=1.96.0+dfsg1-1~deb12u2".to_owned()));
        assert!(specs.contains(&"rust-web-src=1.96.0+dfsg1-1~deb12u2".to_owned()));
        assert!(specs.contains(&"lld-22=1:22.1.8-1~deb12u1".to_owned()));
        assert!(specs.contains(&"libgit2-1.5".to_owned()));
    }

    #[test]
    fn finds_the_multiarch_folder() {
        let lib = std::env::temp_dir().join(format!("xtask-multiarch-{}", std::process::id()));
        let arch = lib.join("riscv64-linux-gnu");
        std::fs::create_dir_all(&arch).unwrap();
        std::fs::create_dir_all(lib.join("rustlib")).unwrap();
        let found = multiarch_lib_dir(&lib);
        std::fs::remove_dir_all(&lib).unwrap();
        assert_eq!(found, Some(arch));
    }
}
