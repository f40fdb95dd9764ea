//! Hostile clients, for the `abuse` end-to-end tests and `cargo xtask bench abuse`: one function
//! per attack, a legitimate monitor that must not notice them, and the stage they play on (a
//! `sluice run` process in front of a `sluice-feed` process, with the config the tests expect).
//!
//! - [`calls`]: attacks made of gRPC calls with the `h2` client (silent bodies, impersonation
//!   with tiny deadlines, huge declared messages, 10,000 streams, 10,000 monitor ids);
//! - [`floods`]: attacks made of hand-written frames ([`wire`]): slow headers, a connection
//!   flood, oversized header lists, CONTINUATION, rapid-reset, PING and SETTINGS floods;
//! - [`legit`]: the legitimate monitor; [`stage`]: the processes, the config, and what is read
//!   from them (`/proc`, `/metrics`, the breakers).
//!
//! Every attack is bounded in count and time and returns what it [`Observed`]. Nothing here
//! judges an outcome: the tests assert, the bench prints.

mod calls;
mod floods;
pub mod legit;
pub mod stage;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use legit::{Count, Legit};
pub use stage::{Round, Stage};

/// The Echo method's path (unary; a plain forwarded call).
pub const ECHO: &str = "/sluice.feed.v1.Feed/Echo";
/// The Chat method's path (bidirectional; resumable in the stage's config).
pub const CHAT: &str = "/sluice.feed.v1.Feed/Chat";
/// The configured monitor the legitimate client is, and the one impersonation claims.
pub const LEGIT: &str = "legit";
/// A configured monitor with its own stream limit, that the stream flood uses.
pub const NOISY: &str = "noisy";
/// Every monitor the stage's config lists.
pub const CONFIGURED_MONITORS: [&str; 2] = [LEGIT, NOISY];

/// What an attack saw. Each attack's documentation says what its counts are.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Connections, calls, streams or frames the attack made.
    pub attempts: u64,
    /// How calls or connections ended, by key: a gRPC code (`DeadlineExceeded`), `open` (still
    /// running when the attack stopped), `reset:<reason>`, `goaway:<reason>`, `http:<status>`,
    /// or a key the attack documents.
    pub outcomes: BTreeMap<String, u64>,
    /// The first `grpc-message` seen for each outcome.
    pub messages: BTreeMap<String, String>,
    /// Connections that received a GOAWAY, by its error code.
    pub goaways: BTreeMap<u32, u64>,
    /// Connections the server sent away (GOAWAY) or closed.
    pub closed: u64,
    /// Streams that were answered with a message.
    pub answered: u64,
    /// Bytes the attack wrote (for flow-controlled calls: the bytes the server let through).
    pub bytes_sent: u64,
    /// The largest figure of one connection or call (each attack says which).
    pub peak: u64,
    /// How long the attack ran.
    pub elapsed: Duration,
}

impl Observed {
    /// How many ended with `key` (0 for none).
    pub fn outcome(&self, key: &str) -> u64 {
        self.outcomes.get(key).copied().unwrap_or(0)
    }

    /// Counts `n` more of `outcome`.
    pub fn add(&mut self, outcome: &str, n: u64) {
        *self.outcomes.entry(outcome.to_owned()).or_default() += n;
    }

    /// Connections that received a GOAWAY, whatever its code.
    pub fn goaway_total(&self) -> u64 {
        self.goaways.values().sum()
    }
}

/// Every attack the suite makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// 40 connections sending the preface (half of them) or a HEADERS frame (the other half)
    /// a byte every 100 ms.
    SlowHeaders,
    /// 400 calls (Echo and the shared Subscribe, as four unconfigured monitors) that send
    /// HEADERS and never a body, held.
    SilentBodies,
    /// 64 calls on the shared Subscribe and the resumable Chat declaring a 120 KiB message
    /// (it fits a stream's window) and 64 declaring a 16 MiB one, then trickling 16 KiB every
    /// 50 ms, never the message's last byte.
    HugeMessages,
    /// 10,000 Subscribe streams as [`NOISY`] over 10 connections.
    StreamFlood,
    /// 600 connections from one peer, held.
    ConnectionFlood,
    /// 200 calls over 4 connections with 64 KiB header lists.
    HeaderFlood,
    /// 10,000 Echo calls, each as a monitor id of its own, and three invalid ids.
    MonitorIdFlood,
    /// 200 calls claiming [`LEGIT`], with `grpc-timeout: 1m` (one millisecond) and no body.
    Impersonation,
    /// Connections each sending a HEADERS frame and then CONTINUATION frames without end.
    ContinuationFlood,
    /// Connections each opening and at once resetting streams, 100 per write.
    RapidReset,
    /// 2 connections writing PING frames and never reading the answers.
    PingFlood,
    /// 2 connections writing SETTINGS frames and never reading the acknowledgements.
    SettingsFlood,
}

impl Attack {
    /// Every attack, in the order the bench runs them.
    pub const ALL: [Attack; 12] = [
        Attack::SlowHeaders,
        Attack::SilentBodies,
        Attack::HugeMessages,
        Attack::StreamFlood,
        Attack::ConnectionFlood,
        Attack::HeaderFlood,
        Attack::MonitorIdFlood,
        Attack::Impersonation,
        Attack::ContinuationFlood,
        Attack::RapidReset,
        Attack::PingFlood,
        Attack::SettingsFlood,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::SlowHeaders => "slow-headers",
            Attack::SilentBodies => "silent-bodies",
            Attack::HugeMessages => "huge-messages",
            Attack::StreamFlood => "stream-flood",
            Attack::ConnectionFlood => "connection-flood",
            Attack::HeaderFlood => "header-flood",
            Attack::MonitorIdFlood => "monitor-id-flood",
            Attack::Impersonation => "impersonation",
            Attack::ContinuationFlood => "continuation-flood",
            Attack::RapidReset => "rapid-reset",
            Attack::PingFlood => "ping-flood",
            Attack::SettingsFlood => "settings-flood",
        }
    }

    /// Makes the attack on the Sluice at `addr` for `hold` (counts are fixed; a longer hold
    /// holds longer or floods longer). It returns within `hold` plus a few seconds.
    pub async fn run(self, addr: SocketAddr, hold: Duration) -> Observed {
        let subscribe = crate::SUBSCRIBE;
        match self {
            Attack::SlowHeaders => {
                floods::slow_headers(addr, 40, Duration::from_millis(100), hold).await
            }
            Attack::SilentBodies => {
                let paths = [ECHO, subscribe];
                let monitors = ["silent-0", "silent-1", "silent-2", "silent-3"];
                calls::silent_bodies(addr, &monitors, &paths, 400, 4, None, hold).await
            }
            Attack::HugeMessages => calls::huge_messages(addr, &[subscribe, CHAT], 64, hold).await,
            Attack::StreamFlood => calls::stream_flood(addr, NOISY, 10_000, 10, hold).await,
            Attack::ConnectionFlood => floods::connection_flood(addr, 600, hold).await,
            Attack::HeaderFlood => floods::header_flood(addr, 4, 50, 64 * 1024, hold).await,
            Attack::MonitorIdFlood => calls::monitor_id_flood(addr, 10_000, 4, 64, hold).await,
            Attack::Impersonation => {
                let paths = [ECHO, subscribe];
                calls::silent_bodies(addr, &[LEGIT], &paths, 200, 2, Some("1m"), hold).await
            }
            Attack::ContinuationFlood => floods::continuation_flood(addr, 100_000, hold).await,
            Attack::RapidReset => floods::rapid_reset(addr, 100, hold).await,
            // Two connections: each one's socket buffers bound what Sluice answers, and on a
            // two-core machine with a debug build, answering four's worth already costs the
            // other monitors close to a tenth of their messages.
            Attack::PingFlood => floods::ping_flood(addr, 2, hold).await,
            Attack::SettingsFlood => floods::settings_flood(addr, 2, hold).await,
        }
    }
}
