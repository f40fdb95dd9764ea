//! The compile gate: one component compiles at a time, behind a short queue.
//!
//! Compiling with Cranelift takes every core for up to seconds (tens of seconds for a component
//! that embeds an interpreter), and uploads, the folder watcher and `load_file` can all ask at
//! once. So a compile takes the one permit; at most [`MAX_QUEUED`] loads may wait for it, for at
//! most [`MAX_WAIT`] each, and any more are refused at once. This module only admits; it does
//! not compile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::PolicyError;

/// Loads that may wait for the compile permit; more are refused at once.
pub const MAX_QUEUED: usize = 8;
/// Longest a load waits for the compile permit before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// The single compile permit and its bounded queue.
pub(crate) struct CompileGate {
    permit: Mutex<()>,
    waiting: AtomicUsize,
    max_queued: usize,
    max_wait: Duration,
}

/// Held while a component compiles; dropping it lets the next load in.
pub(crate) struct CompilePermit<'a> {
    _permit: MutexGuard<'a, ()>,
}

impl Default for CompileGate {
    fn default() -> Self {
        Self::new(MAX_QUEUED, MAX_WAIT)
    }
}

impl CompileGate {
    /// A gate where at most `max_queued` loads wait, each for at most `max_wait`.
    pub(crate) fn new(max_queued: usize, max_wait: Duration) -> Self {
        Self {
            permit: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            max_queued,
            max_wait,
        }
    }

    /// The compile permit: at once when it is free, else after waiting in the queue; an error
    /// when the queue is full or the wait ran out.
    pub(crate) fn enter(&self) -> Result<CompilePermit<'_>, PolicyError> {
        if let Some(permit) = self.permit.try_lock() {
            return Ok(CompilePermit { _permit: permit });
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        if queued >= self.max_queued {
            return Err(PolicyError::Busy(format!(
                "too many plugin compiles queued ({} waiting behind the one compiling); \
                 retry later",
                self.max_queued
            )));
        }
        match self.permit.try_lock_for(self.max_wait) {
            Some(permit) => Ok(CompilePermit { _permit: permit }),
            None => Err(PolicyError::Busy(format!(
                "waited {:?} for another plugin compile to finish; retry later",
                self.max_wait
            ))),
        }
    }

    /// Loads waiting for the permit now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Waits (at most 10 s, then panics) until `n` loads wait for the permit.
    #[cfg(test)]
    pub(crate) fn until_waiting(&self, n: usize) {
        let started = std::time::Instant::now();
        while self.waiting() != n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} waiting, expected {n}",
                self.waiting()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Leaves the queue however the wait ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    /// Asserts that `attempt` is refused at once because the queue is full.
    pub(crate) fn refused_at_once<T: std::fmt::Debug>(
        attempt: impl FnOnce() -> Result<T, PolicyError>,
    ) {
        let started = Instant::now();
        let refused = attempt().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        assert!(matches!(refused, PolicyError::Busy(_)), "{refused:?}");
        assert!(
            refused
                .to_string()
                .contains("too many plugin compiles queued"),
            "{refused}"
        );
    }

    #[test]
    fn one_compiles_a_few_wait_and_more_are_refused_at_once() {
        let gate = Arc::new(CompileGate::new(3, Duration::from_secs(30)));
        let held = gate.enter().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let gate = Arc::clone(&gate);
                std::thread::spawn(move || gate.enter().map(|_permit| ()))
            })
            .collect();
        gate.until_waiting(3);
        refused_at_once(|| gate.enter().map(|_permit| ()));
        drop(held);
        for waiter in waiters {
            waiter
                .join()
                .unwrap()
                .expect("a queued load gets the permit");
        }
        assert_eq!(gate.waiting(), 0);
        assert!(gate.enter().is_ok(), "free again");
    }

    #[test]
    fn a_wait_for_the_permit_is_bounded() {
        let gate = CompileGate::new(3, Duration::from_millis(50));
        let _held = gate.enter().unwrap();
        let started = Instant::now();
        let error = gate.enter().map(|_| ()).unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(error.to_string().contains("waited 50ms"), "{error}");
        assert_eq!(gate.waiting(), 0, "a load that gave up left the queue");
    }
}
