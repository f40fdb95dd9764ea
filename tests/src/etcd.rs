//! Real `etcd` processes for the cluster tests: one member, or a three-member cluster, on free
//! loopback ports with their data in a temporary folder.
//!
//! The binary is `SLUICE_ETCD` (set by `cargo xtask test`), else `/usr/bin/etcd` (Debian's
//! `etcd-server`). Without it a test is skipped, unless `SLUICE_REQUIRE_ALL=1`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary, or `None` (after saying why) when the test must skip.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SLUICE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!(
            "no etcd at {} (cargo xtask setup test installs etcd-server)",
            path.display()
        );
    }
    eprintln!("skipped: no etcd at {}", path.display());
    None
}

/// A free loopback port (bound and released: good enough for a test's own processes).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One etcd member process. Dropping it kills it.
pub struct Etcd {
    child: Option<Child>,
    binary: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    cluster: String,
    data: tempfile::TempDir,
}

impl Etcd {
    /// A single-member etcd; `None` when the test must skip.
    pub fn single() -> Option<Self> {
        let binary = etcd_binary()?;
        let (client_port, peer_port) = (free_port(), free_port());
        let cluster = format!("e0=http://127.0.0.1:{peer_port}");
        let mut etcd = Self {
            child: None,
            binary,
            name: "e0".to_owned(),
            client_port,
            peer_port,
            cluster,
            data: tempfile::tempdir().expect("temp dir"),
        };
        etcd.start();
        Some(etcd)
    }

    /// Three members of one cluster; `None` when the test must skip.
    pub fn three() -> Option<Vec<Self>> {
        let binary = etcd_binary()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Self> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| Self {
                child: None,
                binary: binary.clone(),
                name: format!("e{i}"),
                client_port,
                peer_port,
                cluster: cluster.clone(),
                data: tempfile::tempdir().expect("temp dir"),
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        for member in &members {
            member.wait_ready();
        }
        Some(members)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again, with its data) and waits until it answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.url();
        let child = Command::new(&self.binary)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data.path().join(&self.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning etcd");
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = format!("127.0.0.1:{}", self.client_port);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(&health) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let request =
                    format!("GET /health HTTP/1.1\r\nHost: {health}\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.contains("\"health\":\"true\"")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd {} did not become healthy", self.name);
    }

    /// Stops it with SIGKILL (its data stays, for [`Etcd::start`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
