//! Feed servers as real child processes, for faults that only a process can show: SIGKILL
//! (no FIN, no GOAWAY, nothing flushed) and a restart on the same port.
//!
//! The `sluice-feed` binary is found next to the test executable's target folder; if it is not
//! built yet, it is built once with the `cargo` that runs the tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `sluice-feed` child process. Dropping it kills it.
pub struct FeedProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    name: String,
}

fn feed_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/<test> -> target/<profile>/sluice-feed
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test executable lives in target/<profile>/deps")
            .to_owned();
        let binary = profile_dir.join("sluice-feed");
        if !binary.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "sluice-feed", "--bin", "sluice-feed"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("running cargo build for sluice-feed");
            assert!(status.success(), "building sluice-feed failed");
        }
        assert!(binary.is_file(), "{} missing", binary.display());
        binary
    })
}

impl FeedProcess {
    /// Starts `sluice-feed --name NAME` on a free loopback port.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, ([127, 0, 0, 1], 0).into())
    }

    /// Starts it on `addr` (e.g. the address of one that was killed, to restart it).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Self::try_start(name, addr) {
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

    fn try_start(name: &str, addr: SocketAddr) -> Result<Self, String> {
        let mut child = Command::new(feed_binary())
            .args(["--listen", &addr.to_string(), "--name", name])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let listening = line
            .trim()
            .strip_prefix("sluice-feed listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, listening) {
            (Ok(_), Some(addr)) => Ok(Self {
                child,
                addr,
                name: name.to_owned(),
            }),
            _ => {
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
