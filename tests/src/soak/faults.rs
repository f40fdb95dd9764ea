//! The soak's fault schedule: which fault runs when, and doing it to the endpoint processes,
//! the TCP fault proxy in front of one of them, or Sluice's monitors.
//!
//! The schedule spreads the faults evenly over the run, after a warm-up and before a quiet
//! tail, each lasting at most a minute. This module acts; it measures nothing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL of endpoint `e0`'s process, restarted on its port at the fault's end.
    KillRestart,
    /// Endpoint `e1`'s traffic held (no FIN, no RST) by the fault proxy.
    BlackHole,
    /// 200 ms added each way to endpoint `e1`'s traffic by the fault proxy.
    Latency,
    /// Endpoint `e2` answers every new stream `RESOURCE_EXHAUSTED` (pushback 5 s).
    Quota,
    /// SIGTERM of endpoint `e0` (GOAWAY, streams ended with `UNAVAILABLE`), restarted at the
    /// fault's end.
    GoawayRestart,
    /// Endpoint `e2` answers every new stream `UNAUTHENTICATED`; at the fault's end its
    /// credentials work again and an operator re-enables it.
    RevokedCredentials,
    /// A monitor opens a fast stream and stops reading it.
    StoppedReader,
}

impl FaultKind {
    /// Every fault, in schedule order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillRestart,
        FaultKind::BlackHole,
        FaultKind::Latency,
        FaultKind::Quota,
        FaultKind::GoawayRestart,
        FaultKind::RevokedCredentials,
        FaultKind::StoppedReader,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "SIGKILL and restart of e0",
            FaultKind::BlackHole => "black hole on e1",
            FaultKind::Latency => "+200 ms latency on e1",
            FaultKind::Quota => "RESOURCE_EXHAUSTED from e2",
            FaultKind::GoawayRestart => "GOAWAY restart of e0",
            FaultKind::RevokedCredentials => "revoked credentials on e2",
            FaultKind::StoppedReader => "a monitor stops reading",
        }
    }
}

/// One fault of the schedule, in milliseconds since the soak began.
#[derive(Debug, Clone, Copy)]
pub struct Scheduled {
    /// What it does.
    pub kind: FaultKind,
    /// When it starts.
    pub start_ms: u32,
    /// When it ends (the endpoint is back, the proxy passes traffic again, ...).
    pub end_ms: u32,
}

impl Scheduled {
    /// Whether `at_ms` falls within the fault or the `settle` after it (when its effects may
    /// still show).
    pub fn covers(&self, at_ms: u32, settle: Duration) -> bool {
        let settle = u32::try_from(settle.as_millis()).unwrap_or(u32::MAX);
        at_ms >= self.start_ms && at_ms <= self.end_ms.saturating_add(settle)
    }

    /// The fault as the report's JSON shows it.
    pub fn to_json(&self) -> Value {
        json!({ "fault": self.kind.name(), "start_ms": self.start_ms, "end_ms": self.end_ms })
    }
}

/// The schedule for a run of `total`: a warm-up and a tail of 5% each (10 s to 60 s), and the
/// faults evenly spread between them, each lasting half its share of the time, at most 60 s.
pub fn schedule(total: Duration) -> (Duration, Vec<Scheduled>) {
    let edge = total
        .mul_f64(0.05)
        .clamp(Duration::from_secs(10), Duration::from_secs(60));
    let slot = total.saturating_sub(edge * 2) / FaultKind::ALL.len() as u32;
    let length = (slot / 2).min(Duration::from_secs(60));
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let faults = FaultKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let start = edge + slot * i as u32;
            Scheduled {
                kind,
                start_ms: ms(start),
                end_ms: ms(start + length),
            }
        })
        .collect();
    (edge, faults)
}

/// A control file of a feed process (`sluice-feed --control-file`).
#[derive(Debug, Clone)]
pub struct Control(pub PathBuf);

impl Control {
    /// Has the feed answer every new call with `code` (and a pushback, when given).
    pub fn refuse(&self, code: i32, pushback_ms: Option<u64>) {
        let text = match pushback_ms {
            Some(ms) => format!("refuse {code} {ms}\n"),
            None => format!("refuse {code}\n"),
        };
        self.write(&text);
    }

    /// Has the feed serve every call again.
    pub fn accept(&self) {
        self.write("accept\n");
    }

    fn write(&self, text: &str) {
        // Written whole, then renamed: the feed never reads half a line.
        let partial = self.0.with_extension("partial");
        std::fs::write(&partial, text).expect("writing a feed's control file");
        std::fs::rename(&partial, &self.0).expect("replacing a feed's control file");
    }
}
