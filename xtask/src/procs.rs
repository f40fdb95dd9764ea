//! Child processes that cannot outlive xtask, and what Linux says about them in `/proc`.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// A child process that is killed and reaped when dropped, on success, error or panic alike.
pub struct Guarded {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    lines: Option<Receiver<String>>,
}

impl Guarded {
    /// Starts `command` with stdout piped (read line by line) and stderr appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: Option<&Path>) -> Result<Self> {
        command.stdout(Stdio::piped());
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                command.stderr(file);
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {}", util::display(command)))?;
        let stdout = child.stdout.take().context("child has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the child never blocks.
                    continue;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.map(Path::to_path_buf),
            lines: Some(rx),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Fails when the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited unexpectedly ({status}){}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log, formatted for an error message.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        if tail.is_empty() {
            format!("\n(log {} is empty)", path.display())
        } else {
            format!(
                "\nlast lines of {}:\n  {}",
                path.display(),
                tail.join("\n  ")
            )
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of the line.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let rx = self.lines.as_ref().context("stdout already consumed")?;
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.ensure_running()?;
                    bail!("{} closed its stdout before printing {prefix:?}", self.name);
                }
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {prefix:?} within {}{}",
                    self.name,
                    util::human(timeout),
                    self.log_tail()
                );
            }
        }
    }

    /// Waits until something accepts TCP connections on `addr`.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {}{}",
                    self.name,
                    util::human(timeout),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself, killing it after `timeout`. Returns its status
    /// and everything it printed on stdout.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {}; killed{}",
                    self.name,
                    util::human(timeout),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(rx) = self.lines.take() {
            // The reader thread ends at EOF, which follows the exit.
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        Ok((status, out))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A folder removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// The machine's CPU time from the first line of `/proc/stat`, in clock ticks summed over all
/// CPUs: `(idle, total)`, where idle counts time waiting for I/O too.
pub fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed cpu line in /proc/stat")?;
    if fields.len() < 8 {
        bail!("short cpu line in /proc/stat: {line:?}");
    }
    Ok((fields[3] + fields[4], fields.iter().sum()))
}

/// Memory figures of a process from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Peak resident set size (since start or the last [`reset_peak`]).
    pub hwm_kb: u64,
    /// Resident set size now.
    pub rss_kb: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        hwm_kb: field("VmHWM:"),
        rss_kb: field("VmRSS:"),
    })
}

/// Resets a process's VmHWM to its current RSS (Linux 4.0+), so that each run reports its own
/// peak. Returns false when the kernel refuses.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
