//! A full outage and the provider's return, with the default breakers: every endpoint dies, the
//! endpoint breakers open, the endpoints come back on the same addresses, and every monitor is
//! served again within seconds, not after the breakers' open periods (30 s, doubling).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sluice_config::{BreakerScope, TrafficClass};
use sluice_contract::breaker::BreakerState;
use sluice_feed::{FeedConfig, FeedHandle};
use sluice_tests::*;

/// Monitors subscribing through the outage.
const MONITORS: usize = 20;
/// The longest a monitor may wait for messages once the provider is back (the spec allows
/// 2 minutes).
const RECOVERY: Duration = Duration::from_secs(10);

/// A monitor that subscribes, reads, and subscribes again 100 ms after any end, noting when it
/// last got a message (ms since `epoch`), until `stop`.
fn keep_subscribing(
    addr: std::net::SocketAddr,
    id: String,
    epoch: Instant,
    last_message_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = client(addr).await;
        while !stop.load(Relaxed) {
            let request = as_monitor(subscribe(&id, 20.0, 8, 0), &id);
            if let Ok(response) = client.subscribe(request).await {
                let mut stream = response.into_inner();
                while let Ok(Some(_)) = stream.message().await {
                    last_message_ms.store(epoch.elapsed().as_millis() as u64, Relaxed);
                    if stop.load(Relaxed) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A feed named `name` on `addr` (the address a dead one had).
async fn restart(addr: std::net::SocketAddr, name: &str) -> FeedHandle {
    let config = FeedConfig {
        name: name.to_owned(),
        ..FeedConfig::default()
    };
    sluice_feed::spawn(addr, config, None)
        .await
        .expect("the feed binds its old address again")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_outage_every_monitor_is_served_again_within_seconds() {
    let feeds = [feed("a").await, feed("b").await];
    let addrs = [feeds[0].addr, feeds[1].addr];
    let mut config = config_for(&[&feeds[0], &feeds[1]]);
    let classes = [
        TrafficClass::Realtime,
        TrafficClass::Event,
        TrafficClass::State,
    ];
    config.monitors = (0..MONITORS)
        .map(|i| monitor(&format!("m{i}"), classes[i % 3]))
        .collect();
    let proxy = sluice(config).await;

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let last: Vec<Arc<AtomicU64>> = (0..MONITORS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let tasks: Vec<_> = (0..MONITORS)
        .map(|i| {
            let id = format!("m{i}");
            keep_subscribing(
                proxy.addr(),
                id,
                epoch,
                Arc::clone(&last[i]),
                Arc::clone(&stop),
            )
        })
        .collect();
    let served_since = |ms: u64| last.iter().all(|l| l.load(Relaxed) > ms);
    assert!(
        eventually(Duration::from_secs(10), || served_since(0)).await,
        "every monitor streams before the outage"
    );

    // Every endpoint dies; the monitors keep asking, and both endpoint breakers open.
    drop(feeds);
    let open = || {
        let breakers = proxy.view().breakers();
        breakers
            .iter()
            .filter(|b| b.scope == BreakerScope::Endpoint)
            .all(|b| b.state == BreakerState::Open)
    };
    assert!(
        eventually(Duration::from_secs(15), open).await,
        "the endpoint breakers open during the outage: {:#?}",
        proxy.view().breakers()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The provider is back.
    let _back = [restart(addrs[0], "a").await, restart(addrs[1], "b").await];
    let back_at = epoch.elapsed().as_millis() as u64;
    let recovered = eventually(RECOVERY, || served_since(back_at)).await;
    let took = Duration::from_millis(epoch.elapsed().as_millis() as u64 - back_at);
    let waiting: Vec<usize> = (0..MONITORS)
        .filter(|&i| last[i].load(Relaxed) <= back_at)
        .collect();
    assert!(
        recovered,
        "monitors {waiting:?} not served {took:?} after the provider came back: {:#?}",
        proxy.view().breakers()
    );
    eprintln!("every monitor served again {took:?} after the provider came back");
    // No monitor's breaker counted the outage against it.
    for breaker in proxy.view().breakers() {
        if breaker.scope == BreakerScope::Monitor {
            assert_eq!(breaker.state, BreakerState::Closed, "{breaker:?}");
        }
    }
    stop.store(true, Relaxed);
    for task in tasks {
        bounded(Duration::from_secs(10), "a monitor stops", task)
            .await
            .expect("the monitor task does not panic");
    }
}
