//! Connection liveness: when an upstream connection last heard from its peer, and the PINGs
//! that ask a connection whether its peer is still there.
//!
//! Two kinds of PING go out on each upstream connection:
//! - **keepalive**, every `pool.keepalive_interval`: one unanswered within
//!   `pool.keepalive_timeout` closes the connection;
//! - a **silence probe**, when a connection that carries streams has heard nothing from its
//!   peer for much longer than its usual pauses, and at least `pool.probe_after_silence`. A
//!   peer that does not answer within [`probe_deadline`] makes the connection *unresponsive*:
//!   it takes no new streams and its resumable streams move to another endpoint at once,
//!   losslessly. Streams that cannot move stay on it until they end, or until the same PING
//!   goes unanswered for `pool.keepalive_timeout` and the connection is closed.
//!
//! An answered probe means the streams are quiet, not dead: the pause joins the usual ones, so
//! the same silence is not probed again, and nothing is blamed. A probe only follows something
//! heard from the peer, so a quiet connection costs at most one extra PING per silence.
//!
//! This module watches and reports. What an unresponsive connection means for the pool and
//! its streams is `life`'s business, and the relays'.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often the watcher looks at a connection's silence: the resolution of its pauses.
const TICK: Duration = Duration::from_millis(50);
/// A probe goes out once the silence is this many times the usual pause.
const OVERDUE_FACTOR: f64 = 4.0;
/// Pauses heard before the usual one is trusted: a new connection is not probed.
const MIN_PAUSES: u32 = 8;
/// How fast the usual pause forgets a long one.
const DECAY: Duration = Duration::from_secs(30);
/// The shortest time a probe is given before its connection counts as unresponsive.
const PROBE_DEADLINE_FLOOR: Duration = Duration::from_millis(200);
/// A probe is given this many times the connection's best PING round trip.
const PROBE_DEADLINE_RTTS: u32 = 10;

/// When a connection last read anything from its peer (frames of any kind).
pub(crate) struct Liveness {
    origin: Instant,
    heard_us: AtomicU64,
}

impl Liveness {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            heard_us: AtomicU64::new(0),
        })
    }

    fn heard(&self) {
        let us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.heard_us.store(us, Relaxed);
    }

    /// Microseconds from the connection's start to the last read, and to `now`.
    fn read(&self, now: Instant) -> (u64, u64) {
        let now_us = u64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(u64::MAX);
        (self.heard_us.load(Relaxed), now_us)
    }
}

/// A connection's transport, noting in its [`Liveness`] every read that brought bytes.
pub(crate) struct Heard<T> {
    io: T,
    liveness: Arc<Liveness>,
}

impl<T> Heard<T> {
    pub(crate) fn new(io: T, liveness: Arc<Liveness>) -> Self {
        Self { io, liveness }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.liveness.heard();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The pauses between reads on one connection, as the watcher sees them every [`TICK`]: the
/// usual pause is the longest recent one, forgotten gradually (a peak that decays, as the
/// pool's latency estimate is).
#[derive(Debug)]
struct Pauses {
    /// The read last seen (µs from the connection's start).
    heard_us: u64,
    /// The silence at the last look, µs: once something is heard, the pause that ended was at
    /// least this long.
    silence_us: u64,
    usual_us: f64,
    usual_at_us: u64,
    count: u32,
    /// Whether the current silence was probed already.
    probed: bool,
}

impl Pauses {
    fn new() -> Self {
        Self {
            heard_us: 0,
            silence_us: 0,
            usual_us: 0.0,
            usual_at_us: 0,
            count: 0,
            probed: false,
        }
    }

    /// Looks at the connection: the last read, and now (µs from its start). Returns the
    /// current silence.
    fn observe(&mut self, heard_us: u64, now_us: u64) -> Duration {
        if heard_us != self.heard_us {
            // Something arrived since the last look: the pause before it is over.
            self.record(self.silence_us, now_us);
            self.heard_us = heard_us;
            self.probed = false;
        }
        self.silence_us = now_us.saturating_sub(heard_us);
        Duration::from_micros(self.silence_us)
    }

    fn record(&mut self, pause_us: u64, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.usual_at_us) as f64 / 1e6;
        let kept = self.usual_us * (-elapsed / DECAY.as_secs_f64()).exp();
        self.usual_us = kept.max(pause_us as f64);
        self.usual_at_us = now_us;
        self.count = self.count.saturating_add(1);
    }

    /// Whether `silence` is long past the usual pauses (and at least `floor`), and not probed
    /// yet.
    fn overdue(&self, silence: Duration, floor: Duration) -> bool {
        if self.probed || self.count < MIN_PAUSES {
            return false;
        }
        let usual = Duration::from_secs_f64(self.usual_us * OVERDUE_FACTOR / 1e6);
        silence >= floor.max(usual)
    }
}

/// How long a silence probe waits before its connection counts as unresponsive: ten of the
/// connection's best round trips, at least 200 ms, at most the keepalive timeout.
pub(super) fn probe_deadline(best_rtt: Duration, keepalive_timeout: Duration) -> Duration {
    (best_rtt * PROBE_DEADLINE_RTTS)
        .max(PROBE_DEADLINE_FLOOR)
        .min(keepalive_timeout)
}

/// PING settings of upstream connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keepalive {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    /// The shortest silence probed (`pool.probe_after_silence`); zero turns probes off.
    pub(super) probe_after: Duration,
}

/// Why a connection's watcher gave up on it.
#[derive(Debug, thiserror::Error)]
pub(super) enum KeepaliveError {
    #[error("no PING answer within {0:?}")]
    Timeout(Duration),
    #[error("PING failed: {0}")]
    Failed(h2::Error),
}

/// What the watcher needs to know about, and do to, the connection it watches.
pub(super) trait Watched {
    /// Whether the connection carries streams (an idle one is never probed).
    fn carries_streams(&self) -> bool;
    /// A probe went unanswered: the connection's peer looks gone.
    fn unresponsive(&self, why: &str);
}

/// Watches one connection until its peer fails to answer a PING within the keepalive timeout:
/// keepalive every `interval`, and a probe when it falls silent past its usual pauses. A
/// black-holed connection (no FIN, no RST) is found within `interval + timeout` by keepalive,
/// and its resumable streams move within about `probe_after` plus the probe deadline.
pub(super) async fn watch(
    mut ping_pong: h2::PingPong,
    keepalive: Keepalive,
    liveness: Arc<Liveness>,
    first_rtt: Duration,
    connection: impl Watched,
) -> KeepaliveError {
    let probing = !keepalive.probe_after.is_zero();
    let mut ticks = tokio::time::interval(if probing {
        TICK.min(keepalive.interval)
    } else {
        keepalive.interval
    });
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut pauses = Pauses::new();
    let mut best_rtt = first_rtt;
    let mut next_keepalive = Instant::now() + keepalive.interval;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let (heard_us, now_us) = liveness.read(now);
        let silence = pauses.observe(heard_us, now_us);
        let probe = probing
            && pauses.overdue(silence, keepalive.probe_after)
            && connection.carries_streams();
        if !probe && now < next_keepalive {
            continue;
        }
        pauses.probed |= probe;
        let sent = Instant::now();
        let pong = ping_pong.ping(h2::Ping::opaque());
        tokio::pin!(pong);
        let mut answer = None;
        if probe {
            let deadline = probe_deadline(best_rtt, keepalive.timeout);
            match tokio::time::timeout(deadline, &mut pong).await {
                Ok(answered) => answer = Some(answered),
                Err(_) => connection.unresponsive(&format!(
                    "no answer to a PING within {deadline:?} after {silence:?} of silence"
                )),
            }
        }
        let answer = match answer {
            Some(answered) => answered,
            None => match tokio::time::timeout_at((sent + keepalive.timeout).into(), pong).await {
                Ok(answered) => answered,
                Err(_) => return KeepaliveError::Timeout(keepalive.timeout),
            },
        };
        if let Err(error) = answer {
            return KeepaliveError::Failed(error);
        }
        best_rtt = best_rtt.min(sent.elapsed());
        next_keepalive = Instant::now() + keepalive.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    /// Feeds `pauses` a connection heard every `every_ms` for `for_ms`, looked at every tick;
    /// returns the time reached (µs).
    fn steady(pauses: &mut Pauses, start_us: u64, every_ms: u64, for_ms: u64) -> u64 {
        let tick = TICK.as_micros() as u64;
        let mut now = start_us;
        while now < start_us + for_ms * MS {
            now += tick;
            let heard = now - now % (every_ms * MS);
            pauses.observe(heard.max(start_us), now);
        }
        now
    }

    #[test]
    fn a_busy_connection_that_falls_silent_is_overdue_after_the_floor() {
        let floor = Duration::from_millis(250);
        let mut pauses = Pauses::new();
        let now = steady(&mut pauses, 0, 10, 5_000);
        let heard = now;
        pauses.observe(heard, now);
        let silence = pauses.observe(heard, now + 100 * MS);
        assert!(!pauses.overdue(silence, floor));
        let silence = pauses.observe(heard, now + 300 * MS);
        assert!(pauses.overdue(silence, floor));
    }

    #[test]
    fn a_new_connection_is_not_probed() {
        let mut pauses = Pauses::new();
        let silence = pauses.observe(0, 2_000 * MS);
        assert!(!pauses.overdue(silence, Duration::from_millis(250)));
    }

    #[test]
    fn an_answered_silence_becomes_usual_and_is_not_probed_again() {
        let floor = Duration::from_millis(250);
        let mut pauses = Pauses::new();
        let now = steady(&mut pauses, 0, 10, 5_000);
        let silence = pauses.observe(now, now + 400 * MS);
        assert!(pauses.overdue(silence, floor));
        pauses.probed = true;
        // Not twice for the same silence.
        let silence = pauses.observe(now, now + 450 * MS);
        assert!(!pauses.overdue(silence, floor));
        // The answer is heard: the 450 ms pause is usual now, so a silence as long is fine,
        // and only one four times as long is probed.
        let answered = now + 460 * MS;
        pauses.observe(answered, answered);
        let silence = pauses.observe(answered, answered + 500 * MS);
        assert!(!pauses.overdue(silence, floor));
        let silence = pauses.observe(answered, answered + 1_900 * MS);
        assert!(pauses.overdue(silence, floor));
    }

    #[test]
    fn a_connection_with_slow_steady_traffic_is_probed_only_well_past_its_pauses() {
        let floor = Duration::from_millis(250);
        let mut pauses = Pauses::new();
        // One message every 2 s: probed only after 8 s of silence.
        let now = steady(&mut pauses, 0, 2_000, 30_000);
        let heard = now - now % (2_000 * MS);
        let silence = pauses.observe(heard, heard + 7_000 * MS);
        assert!(!pauses.overdue(silence, floor));
        let silence = pauses.observe(heard, heard + 8_100 * MS);
        assert!(pauses.overdue(silence, floor));
    }

    #[test]
    fn the_probe_deadline_follows_the_round_trip_within_bounds() {
        let timeout = Duration::from_secs(5);
        assert_eq!(
            probe_deadline(Duration::from_micros(100), timeout),
            PROBE_DEADLINE_FLOOR
        );
        assert_eq!(
            probe_deadline(Duration::from_millis(80), timeout),
            Duration::from_millis(800)
        );
        assert_eq!(probe_deadline(Duration::from_secs(1), timeout), timeout);
    }
}
