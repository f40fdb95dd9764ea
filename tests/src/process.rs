//! Feed servers and Sluice itself as real child processes, for faults that only a process can
//! show: SIGKILL (no FIN, no GOAWAY, nothing flushed) and a restart on the same port or store.
//!
//! The `sluice-feed` and `sluice` binaries are found next to the test executable's target
//! folder, built (or found up to date) once per test process with the `cargo` that runs the
//! tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `sluice-feed` child process. Dropping it kills it.
pub struct FeedProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    name: String,
    /// Its latest `sluice-feed stats` line (with `--stats-every`), by counter name.
    stats: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// The workspace binary `name` (package of the same name), built on first use.
pub fn binary(name: &'static str) -> PathBuf {
    static BUILT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_owned();
    let binary = profile_dir.join(name);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Built (or found up to date) once per test process: a binary left from older sources
    // would test old code.
    if !built.contains(&name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", name, "--bin", name]);
        // What cargo set for this test process describes the test crate, not the binary: left
        // in, it would look like a changed environment and rebuild the binary every time.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&key.as_ref())
            {
                build.env_remove(key.as_ref());
            }
        }
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building {name} failed");
    }
    if !built.contains(&name) {
        built.push(name);
    }
    assert!(binary.is_file(), "{} missing", binary.display());
    binary
}

/// A command running the workspace binary `name` with warnings-only logs, no stdin, its stdout
/// piped for [`wait_for_lines`] and its stderr shown with the test's output.
pub(crate) fn piped(name: &'static str) -> Command {
    let mut command = Command::new(binary(name));
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Reads `child`'s stdout until a line starts with each prefix, in order; returns the rest of
/// each such line. The lines after them are handed to `rest` as they come.
pub(crate) fn wait_for_lines(
    child: &mut Child,
    prefixes: &[&str],
    mut rest: impl FnMut(&str) + Send + 'static,
) -> Result<Vec<String>, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut found = Vec::new();
    for prefix in prefixes {
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return Err(format!("stdout ended before {prefix:?}")),
                Ok(_) => {}
            }
            if let Some(found_rest) = line.trim().strip_prefix(prefix) {
                found.push(found_rest.to_owned());
                break;
            }
        }
    }
    // Keep reading stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            rest(line.trim());
            line.clear();
        }
    });
    Ok(found)
}

/// The counters of a `<prefix>name=value ...` line (`sluice-feed stats `, `sluice-geyser
/// stats `).
pub(crate) fn parse_stats(prefix: &str, line: &str) -> Option<BTreeMap<String, u64>> {
    line.strip_prefix(prefix)?
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl FeedProcess {
    /// Starts `sluice-feed --name NAME` on a free loopback port.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, ([127, 0, 0, 1], 0).into())
    }

    /// Starts it on `addr` (e.g. the address of one that was killed, to restart it).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        Self::start_with(name, addr, &[])
    }

    /// Starts it on `addr` with `extra` command-line options (e.g. `--max-connections 10`).
    pub fn start_with(name: &str, addr: SocketAddr, extra: &[String]) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Self::try_start(name, addr, extra) {
                Ok(process) => return process,
                // The port of a killed process may take a moment to be free.
                Err(error) if Instant::now() < deadline => {
                    eprintln!("feed {name} did not start ({error}); retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("feed {name} did not start on {addr}: {error}"),
            }
        }
    }

    fn try_start(name: &str, addr: SocketAddr, extra: &[String]) -> Result<Self, String> {
        let mut child = piped("sluice-feed")
            .args(["--listen", &addr.to_string(), "--name", name])
            .args(extra)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let stats = Arc::new(Mutex::new(BTreeMap::new()));
        let latest = Arc::clone(&stats);
        let listening = wait_for_lines(&mut child, &["sluice-feed listening on "], move |line| {
            if let Some(counters) = parse_stats("sluice-feed stats ", line) {
                *latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = counters;
            }
        })
        .ok()
        .and_then(|lines| lines[0].parse::<SocketAddr>().ok());
        match listening {
            Some(addr) => Ok(Self {
                child,
                addr,
                name: name.to_owned(),
                stats,
            }),
            None => {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                Err(format!("exited with {status} before listening"))
            }
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(mut self) -> SocketAddr {
        self.kill_now();
        self.addr
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters as of its latest `sluice-feed stats` line (empty without `--stats-every`).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops it with SIGTERM (a graceful stop: GOAWAY, Subscribe streams ended with
    /// UNAVAILABLE), waits for it to exit, and returns its address and final counters.
    pub fn terminate(mut self) -> (SocketAddr, BTreeMap<String, u64>) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_now();
        (self.addr, self.stats())
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FeedProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A `sluice run --config FILE` or `sluice demo` child process. Dropping it kills it.
pub struct SluiceProcess {
    child: Child,
    /// Where monitors connect.
    pub addr: SocketAddr,
    /// The admin API's base URL (`http://host:port`).
    pub admin: String,
}

impl SluiceProcess {
    /// Starts Sluice with `config` (a TOML file whose listeners may use port 0) and waits until
    /// it listens.
    pub fn start(config: &std::path::Path) -> Self {
        let mut child = piped("sluice")
            .args(["run", "--config"])
            .arg(config)
            .spawn()
            .expect("spawning sluice");
        let lines = wait_for_lines(
            &mut child,
            &["sluice listening on ", "admin API on "],
            |_| {},
        )
        .unwrap_or_else(|error| {
            let _ = child.kill();
            panic!("sluice did not start: {error}")
        });
        let addr = lines[0].parse().expect("sluice prints its address");
        Self {
            child,
            addr,
            admin: lines[1].clone(),
        }
    }

    /// Starts `sluice demo` on free loopback ports with `extra` arguments and waits until its
    /// dashboard is served.
    pub fn demo(extra: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(binary("sluice"))
            .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            // The demo's monitors log every broken stream as a warning.
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sluice demo");
        let lines = wait_for_lines(
            &mut child,
            &["sluice listening on ", "dashboard on "],
            |_| {},
        )
        .unwrap_or_else(|error| {
            let _ = child.kill();
            panic!("sluice demo did not start: {error}")
        });
        let addr = lines[0]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .expect("the demo prints its address");
        Self {
            child,
            addr,
            admin: lines[1].trim_end_matches('/').to_owned(),
        }
    }

    /// Its process id (for reading `/proc/PID/...`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
