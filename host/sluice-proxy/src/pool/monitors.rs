//! Monitor admission: how many calls a monitor may have open, and its breaker.
//!
//! Configured monitors (`[[monitors]]`) each have a breaker and a count of open calls, made
//! once at start-up. Every other caller names itself, so per-name state would be the caller's
//! to grow: all of them share one breaker ([`UNCONFIGURED`]), which never guards a configured
//! monitor, and their open calls are counted per name in a bounded table (`moka`, least
//! recently used names go first) and together. A monitor's breaker guards Sluice against a
//! monitor whose calls keep failing; it says nothing about where a call's stream goes (that is
//! `place`'s job).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sluice_config::{BreakerScope, BreakerSettings, Config};

use super::Pool;
use crate::breaker::{Breaker, BreakerEvents, Permit};
use crate::grpc::Status;
use crate::route::MonitorProfile;
use crate::stats::Stats;

/// The name of the breaker and of the call count that every monitor not in `[[monitors]]`
/// shares.
pub(crate) const UNCONFIGURED: &str = "(unconfigured monitors)";

/// Names of unconfigured monitors whose open calls are counted one by one. Past this, the
/// least recently seen names are forgotten (their calls still count in the shared total).
const UNCONFIGURED_NAMES: u64 = 4096;

/// A breaker, the calls open under it, and how many may be.
struct MonitorEntry {
    breaker: Arc<Breaker>,
    active: Arc<AtomicU64>,
    limit: u64,
}

/// Every monitor's admission state.
pub(super) struct MonitorTable {
    configured: HashMap<Arc<str>, MonitorEntry>,
    /// The breaker and open calls of every unconfigured monitor together.
    unconfigured: MonitorEntry,
    /// Open calls per unconfigured name, bounded.
    unconfigured_names: moka::sync::Cache<Arc<str>, Arc<AtomicU64>>,
    /// Calls one unconfigured name may have open.
    unconfigured_limit: u64,
}

/// Counts one open call of a monitor until dropped.
#[derive(Debug)]
pub(crate) struct MonitorCall {
    counts: Vec<Arc<AtomicU64>>,
}

impl Drop for MonitorCall {
    fn drop(&mut self) {
        for count in &self.counts {
            count.fetch_sub(1, Relaxed);
        }
    }
}

/// Takes one of `limit` places in `count`, or none when all are taken.
fn reserve(count: &Arc<AtomicU64>, limit: u64) -> bool {
    if count.fetch_add(1, Relaxed) >= limit {
        count.fetch_sub(1, Relaxed);
        return false;
    }
    true
}

impl MonitorTable {
    /// The table for `config`'s monitors, with breakers of `settings` reporting to `events`.
    pub(super) fn new(
        config: &Config,
        settings: BreakerSettings,
        events: &Arc<BreakerEvents>,
    ) -> Self {
        let entry = |name: Arc<str>, limit: usize| MonitorEntry {
            breaker: Breaker::new(BreakerScope::Monitor, name, settings, Arc::clone(events)),
            active: Arc::new(AtomicU64::new(0)),
            limit: limit as u64,
        };
        let configured = config
            .monitors
            .iter()
            .map(|m| {
                let id: Arc<str> = Arc::from(m.id.as_str());
                let limit = m.stream_limit(&config.server);
                (Arc::clone(&id), entry(id, limit))
            })
            .collect();
        // Together, unconfigured monitors may hold as many calls as the listener allows one
        // connection per connection slot; the per-name cap is what bounds one of them.
        let together = config
            .server
            .max_connections
            .saturating_mul(config.server.max_concurrent_streams as usize);
        Self {
            configured,
            unconfigured: entry(Arc::from(UNCONFIGURED), together),
            unconfigured_names: moka::sync::Cache::new(UNCONFIGURED_NAMES),
            unconfigured_limit: config.server.max_streams_per_monitor as u64,
        }
    }

    /// Every monitor breaker: the configured monitors' and the shared one.
    pub(super) fn breakers(&self) -> impl Iterator<Item = &Arc<Breaker>> {
        self.configured
            .values()
            .chain([&self.unconfigured])
            .map(|entry| &entry.breaker)
    }

    /// The breaker named `name` (a configured monitor's id or [`UNCONFIGURED`]).
    pub(super) fn breaker(&self, name: &str) -> Option<&Arc<Breaker>> {
        match self.configured.get(name) {
            Some(entry) => Some(&entry.breaker),
            None if name == UNCONFIGURED => Some(&self.unconfigured.breaker),
            None => None,
        }
    }

    /// Open calls per configured monitor, and of all unconfigured ones under [`UNCONFIGURED`].
    pub(super) fn open_calls(&self) -> Vec<(Arc<str>, u64)> {
        self.configured
            .iter()
            .map(|(id, entry)| (Arc::clone(id), entry.active.load(Relaxed)))
            .chain([(
                Arc::clone(self.unconfigured.breaker.name()),
                self.unconfigured.active.load(Relaxed),
            )])
            .collect()
    }

    /// Admits one call of `monitor`: a place among its open calls, then its breaker's leave.
    fn admit(
        &self,
        monitor: &MonitorProfile,
        stats: &Stats,
    ) -> Result<(Permit, MonitorCall), Status> {
        let (breaker, counts) = match self.configured.get(&monitor.id) {
            Some(entry) => {
                if !reserve(&entry.active, entry.limit) {
                    stats.incr(|s| &s.monitor_streams_refused_total);
                    return Err(Status::resource_exhausted(format!(
                        "monitor {:?} has {} calls open, its limit ([[monitors]] max_streams or \
                         server.max_streams_per_monitor)",
                        monitor.id, entry.limit
                    )));
                }
                (&entry.breaker, vec![Arc::clone(&entry.active)])
            }
            None => {
                let name = self
                    .unconfigured_names
                    .get_with_by_ref(&monitor.id, || Arc::new(AtomicU64::new(0)));
                if !reserve(&name, self.unconfigured_limit) {
                    stats.incr(|s| &s.monitor_streams_refused_total);
                    return Err(Status::resource_exhausted(format!(
                        "monitor {:?} has {} calls open, the limit of monitors not in \
                         [[monitors]] (server.max_streams_per_monitor)",
                        monitor.id, self.unconfigured_limit
                    )));
                }
                let together = Arc::clone(&self.unconfigured.active);
                if !reserve(&together, self.unconfigured.limit) {
                    name.fetch_sub(1, Relaxed);
                    stats.incr(|s| &s.monitor_streams_refused_total);
                    return Err(Status::resource_exhausted(
                        "monitors not in [[monitors]] hold every call place they share",
                    ));
                }
                (&self.unconfigured.breaker, vec![name, together])
            }
        };
        // The call counts as open from here; a refusal below gives its place back on drop.
        let call = MonitorCall { counts };
        let permit = breaker
            .admit()
            .map_err(|refused| Status::unavailable(refused.to_string()))?;
        Ok((permit, call))
    }
}

impl Pool {
    /// Admits one call of `monitor` through its stream limit and its breaker; the returned
    /// [`MonitorCall`] counts the call among the monitor's open calls while it lives.
    pub fn admit_monitor(&self, monitor: &MonitorProfile) -> Result<(Permit, MonitorCall), Status> {
        self.monitors.admit(monitor, &self.stats)
    }

    /// Open calls per configured monitor, and of every other monitor together.
    pub fn monitor_calls(&self) -> Vec<(Arc<str>, u64)> {
        self.monitors.open_calls()
    }
}

#[cfg(test)]
mod tests {
    use sluice_config::{MonitorConfig, TrafficClass};

    use super::*;

    fn table(server_limit: usize, configured_limit: Option<usize>) -> MonitorTable {
        let mut config = Config::default();
        config.server.max_streams_per_monitor = server_limit;
        config.monitors.push(MonitorConfig {
            max_streams: configured_limit,
            ..MonitorConfig::new("known", TrafficClass::Event)
        });
        MonitorTable::new(
            &config,
            BreakerSettings::MONITOR,
            &Arc::new(BreakerEvents::default()),
        )
    }

    fn profile(id: &str) -> MonitorProfile {
        MonitorProfile::new(id, TrafficClass::Event, false)
    }

    #[test]
    fn a_monitor_gets_no_more_calls_than_its_limit() {
        let stats = Stats::default();
        let table = table(5, Some(2));
        let first = table.admit(&profile("known"), &stats).unwrap();
        let _second = table.admit(&profile("known"), &stats).unwrap();
        let refused = table.admit(&profile("known"), &stats).unwrap_err();
        assert!(refused.message.contains("max_streams"), "{refused:?}");
        assert_eq!(stats.monitor_streams_refused_total.load(Relaxed), 1);
        drop(first);
        assert!(table.admit(&profile("known"), &stats).is_ok());
    }

    #[test]
    fn unconfigured_names_share_one_breaker_and_are_each_capped() {
        let stats = Stats::default();
        let table = table(2, None);
        let _a = table.admit(&profile("stranger-1"), &stats).unwrap();
        let _b = table.admit(&profile("stranger-1"), &stats).unwrap();
        assert!(table.admit(&profile("stranger-1"), &stats).is_err());
        // Another invented name has its own count, and no breaker of its own.
        let _c = table.admit(&profile("stranger-2"), &stats).unwrap();
        let names: Vec<String> = table.breakers().map(|b| b.name().to_string()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&UNCONFIGURED.to_owned()));
        let open = table.open_calls();
        let together = open.iter().find(|(id, _)| &**id == UNCONFIGURED).unwrap();
        assert_eq!(together.1, 3);
    }

    #[test]
    fn a_flood_of_names_keeps_the_table_bounded_and_the_configured_monitor_served() {
        let stats = Stats::default();
        let table = table(4, None);
        for i in 0..(UNCONFIGURED_NAMES * 2) {
            drop(table.admit(&profile(&format!("invented-{i}")), &stats));
        }
        table.unconfigured_names.run_pending_tasks();
        assert!(table.unconfigured_names.entry_count() <= UNCONFIGURED_NAMES);
        assert_eq!(table.breakers().count(), 2);
        assert!(table.admit(&profile("known"), &stats).is_ok());
    }
}
