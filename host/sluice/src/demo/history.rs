//! A simulated past for the demo's history store, so that a first run already has what the
//! forecast and the reports read: three days of minute rollups of the connections the demo's
//! monitors need, following a daily cycle.
//!
//! It is written only into a store with no rollups of that metric in those days, and the demo
//! says so when it does; `sluice demo --no-history` leaves the store alone.

use sluice_analytics::records::Rollup;
use sluice_analytics::sampler::CONNECTIONS_NEEDED;
use sluice_analytics::store::{Store, StoreError};

/// Days of simulated past.
const DAYS: i64 = 3;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// Writes the simulated past ending one minute before `now_ms`. Returns the minutes written,
/// 0 when the store already had history.
pub fn seed(store: &Store, now_ms: i64) -> Result<usize, StoreError> {
    let end = now_ms - now_ms.rem_euclid(MINUTE_MS) - MINUTE_MS;
    let start = end - DAYS * DAY_MS;
    if !store.rollups(CONNECTIONS_NEEDED, start, end)?.is_empty() {
        return Ok(0);
    }
    let rollups: Vec<Rollup> = (0..DAYS * 24 * 60)
        .map(|minute| {
            let ts_ms = start + minute * MINUTE_MS;
            let phase = (ts_ms.rem_euclid(DAY_MS)) as f64 / DAY_MS as f64;
            // The demo's 20 monitors need about 4 connections; the simulated day peaks in the
            // afternoon (UTC) at about 6 and is quietest before dawn at about 2. The ripple of
            // unrelated periods stands in for noise, the same on every machine.
            let cycle = 4.0 - 2.0 * (std::f64::consts::TAU * (phase - 0.125)).cos();
            let ripple = 0.3 * (minute as f64 * 0.7).sin() + 0.2 * (minute as f64 * 0.13).cos();
            let avg = (cycle + ripple).max(1.0);
            Rollup {
                ts_ms,
                metric: CONNECTIONS_NEEDED.to_owned(),
                avg,
                min: (avg - 1.0).max(1.0).floor(),
                max: (avg + 1.0).ceil(),
                count: 60,
            }
        })
        .collect();
    store.write_rollups(&rollups)?;
    Ok(rollups.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_an_empty_store_once_with_a_daily_cycle() {
        let store = Store::open(std::path::Path::new(":memory:"), std::time::Duration::ZERO)
            .expect("in-memory store");
        let now = 1_800_000_000_000;
        let written = seed(&store, now).expect("seeded");
        assert_eq!(written, 3 * 24 * 60);
        let rows = store
            .rollups(CONNECTIONS_NEEDED, 0, now)
            .expect("rollups read back");
        assert_eq!(rows.len(), written);
        let (low, high) = rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
            (lo.min(r.avg), hi.max(r.avg))
        });
        assert!((1.0..3.0).contains(&low), "quietest minute {low}");
        assert!(high > 5.5 && high < 7.0, "busiest minute {high}");
        assert_eq!(
            seed(&store, now).expect("second call"),
            0,
            "seeds only once"
        );
    }
}
