//! Monitor admission: each monitor's breaker, which lets its calls in, and the count of its
//! open calls.
//!
//! A monitor's breaker guards Sluice against a monitor whose calls keep failing; it says
//! nothing about where a call's stream goes (that is `place`'s job).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sluice_config::BreakerScope;

use super::Pool;
use crate::breaker::{Breaker, Permit};
use crate::grpc::Status;
use crate::route::MonitorProfile;

/// Monitors with their own breaker; beyond this, unknown monitors share one.
const MONITOR_BREAKERS: usize = 4096;

/// A monitor's breaker and its open calls.
pub(super) struct MonitorEntry {
    pub(super) breaker: Arc<Breaker>,
    active: Arc<AtomicU64>,
}

/// Counts one open call of a monitor until dropped.
#[derive(Debug)]
pub(crate) struct MonitorCall {
    active: Arc<AtomicU64>,
}

impl Drop for MonitorCall {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Relaxed);
    }
}

impl Pool {
    /// Admits one call of `monitor` through its breaker; the returned [`MonitorCall`] counts
    /// the call among the monitor's open calls while it lives.
    pub fn admit_monitor(&self, monitor: &MonitorProfile) -> Result<(Permit, MonitorCall), Status> {
        let (breaker, active) = {
            let mut monitors = self.monitors.lock();
            let key = if monitors.len() < MONITOR_BREAKERS || monitors.contains_key(&monitor.id) {
                Arc::clone(&monitor.id)
            } else {
                Arc::from("(other monitors)")
            };
            let entry = monitors
                .entry(Arc::clone(&key))
                .or_insert_with(|| MonitorEntry {
                    breaker: Breaker::new(
                        BreakerScope::Monitor,
                        key,
                        self.monitor_breakers,
                        Arc::clone(&self.breaker_events),
                    ),
                    active: Arc::new(AtomicU64::new(0)),
                });
            (Arc::clone(&entry.breaker), Arc::clone(&entry.active))
        };
        let permit = breaker
            .admit()
            .map_err(|refused| Status::unavailable(refused.to_string()))?;
        active.fetch_add(1, Relaxed);
        Ok((permit, MonitorCall { active }))
    }

    /// Open calls per monitor (monitors beyond the breaker limit are counted together).
    pub fn monitor_calls(&self) -> Vec<(Arc<str>, u64)> {
        self.monitors
            .lock()
            .iter()
            .map(|(id, m)| (Arc::clone(id), m.active.load(Relaxed)))
            .collect()
    }
}
