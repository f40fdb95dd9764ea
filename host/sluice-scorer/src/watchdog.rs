//! Stops model runs at their deadline.
//!
//! A model run is a call into ONNX Runtime that nothing in the router can interrupt (the
//! plugin's epoch deadline only stops WebAssembly code), so each run is armed here with its
//! deadline and its run options, and one thread sets the options' terminate flag when the
//! deadline passes; ONNX Runtime then ends the run between two operators with an error.
//!
//! This module only times and stops runs; it does not run models. Arming is a short lock and,
//! when the new deadline is the earliest, one wake-up of the thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest the thread sleeps with nothing armed (it is woken by the next arm anyway).
const IDLE: Duration = Duration::from_secs(1);

/// Something that ends a run in progress.
pub(crate) trait Stop: Send + Sync {
    /// Asks the run to end as soon as it can; returns at once.
    fn stop(&self);
}

impl Stop for ort::session::RunOptions {
    fn stop(&self) {
        if let Err(error) = self.terminate() {
            tracing::warn!(%error, "cannot stop a scorer run at its deadline");
        }
    }
}

/// The runs armed now, and the thread that stops them.
pub(crate) struct Watchdog {
    armed: Mutex<Vec<Run>>,
    next_id: AtomicU64,
    thread: OnceLock<Option<std::thread::Thread>>,
}

struct Run {
    id: u64,
    deadline: Instant,
    stop: Arc<dyn Stop>,
}

/// Disarms its run when dropped (the run ended, in time or not).
pub(crate) struct Armed<'a> {
    watchdog: &'a Watchdog,
    id: u64,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.watchdog.armed.lock().retain(|run| run.id != self.id);
    }
}

/// The process's watchdog, its thread started on first use.
pub(crate) fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(Watchdog::new)
}

impl Watchdog {
    fn new() -> Self {
        Self {
            armed: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            thread: OnceLock::new(),
        }
    }

    /// Calls `stop` once `deadline` passes, unless the returned guard is dropped first.
    pub(crate) fn arm(&'static self, deadline: Instant, stop: Arc<dyn Stop>) -> Armed<'static> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let earliest = {
            let mut armed = self.armed.lock();
            let earliest = armed.iter().all(|run| run.deadline > deadline);
            armed.push(Run { id, deadline, stop });
            earliest
        };
        let thread = self.thread.get_or_init(|| self.start());
        if earliest && let Some(thread) = thread {
            thread.unpark();
        }
        Armed { watchdog: self, id }
    }

    fn start(&'static self) -> Option<std::thread::Thread> {
        let spawned = std::thread::Builder::new()
            .name("sluice-scorer-watchdog".to_owned())
            .spawn(move || self.watch());
        match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(error) => {
                // Runs then end on their own; the deadline is still checked when they do.
                tracing::error!(%error, "cannot start the scorer watchdog; model runs cannot be stopped at their deadline");
                None
            }
        }
    }

    /// Stops every run past its deadline, then sleeps until the next deadline.
    fn watch(&self) {
        loop {
            let now = Instant::now();
            let next = {
                let mut armed = self.armed.lock();
                armed.retain(|run| {
                    let due = run.deadline <= now;
                    if due {
                        run.stop.stop();
                    }
                    !due
                });
                armed.iter().map(|run| run.deadline).min()
            };
            let sleep = next.map_or(IDLE, |deadline| deadline.saturating_duration_since(now));
            std::thread::park_timeout(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Stop for Flag {
        fn stop(&self) {
            self.0.store(true, Relaxed);
        }
    }

    /// Waits (bounded) for `flag` to be set.
    fn stopped_within(flag: &Flag, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if flag.0.load(Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        flag.0.load(Relaxed)
    }

    #[test]
    fn a_run_past_its_deadline_is_stopped_and_a_finished_one_is_not() {
        let late = Arc::new(Flag::default());
        let finished = Arc::new(Flag::default());
        let started = Instant::now();
        let _late = watchdog().arm(started + Duration::from_millis(20), late.clone());
        let early = watchdog().arm(started + Duration::from_millis(60), finished.clone());
        // The second run ends before its deadline: disarmed, never stopped.
        drop(early);
        assert!(stopped_within(&late, Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!finished.0.load(Relaxed), "a disarmed run is left alone");
    }

    #[test]
    fn an_earlier_deadline_armed_later_is_not_delayed_by_a_later_one() {
        let slow = Arc::new(Flag::default());
        let fast = Arc::new(Flag::default());
        let started = Instant::now();
        let _slow = watchdog().arm(started + Duration::from_secs(30), slow.clone());
        let _fast = watchdog().arm(started + Duration::from_millis(10), fast.clone());
        assert!(stopped_within(&fast, Duration::from_secs(5)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken for the earlier deadline"
        );
        assert!(!slow.0.load(Relaxed));
    }
}
