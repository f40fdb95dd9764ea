//! Hot reload under load: 200 streams keep flowing while the router plugin is swapped 20 times
//! by writing files into the watched plugins folder; decisions follow each new plugin at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluice_config::SlotKind;
use sluice_policy::Watcher;
use sluice_tests::plugins::*;
use sluice_tests::*;

const STREAMS: usize = 200;
const SWAPS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_router_20_times_under_200_streams_loses_nothing() {
    let Some(built) = built_plugins() else { return };
    let folder = tempfile::tempdir().unwrap();
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.max_streams_per_connection = 64;
    config.plugins = plugins_config();
    config.plugins.dir = Some(folder.path().to_owned());
    // What is checked is which plugin decides, not how fast: a loaded CI machine must not turn
    // a scheduling stall into a fallback.
    config.plugins.router.deadline = Some(Duration::from_secs(1));
    let (proxy, policies) = sluice_with_policies(config).await;
    let _watcher = Watcher::start(&policies).expect("folder watched");

    // 200 streams over 20 client connections, each counting what it receives.
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..STREAMS).map(|_| AtomicU64::new(0)).collect());
    let failures = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(proxy.addr()).await);
    }
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut client = clients[i % clients.len()].clone();
        let received = Arc::clone(&received);
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let request = as_monitor(subscribe(&format!("t{i}"), 100.0, 64, 0), &format!("m{i}"));
            let mut stream = match client.subscribe(request).await {
                Ok(response) => response.into_inner(),
                Err(_) => {
                    failures.fetch_add(1, Relaxed);
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        received[i].fetch_add(1, Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(20), || received
            .iter()
            .all(|r| r.load(Relaxed) > 0))
        .await,
        "all {STREAMS} streams flow"
    );

    let target = folder.path().join("router.wasm");
    let staging = folder.path().join(".router.wasm.partial");
    let mut probe = client(proxy.addr()).await;
    for swap in 1..=SWAPS {
        let (source, expected) = if swap % 2 == 1 {
            ("test-pick-last.wasm", "pick-last")
        } else {
            ("test-pick-first.wasm", "pick-first")
        };
        std::fs::copy(built.join(source), &staging).unwrap();
        std::fs::rename(&staging, &target).unwrap();
        let slot = policies.slot(SlotKind::Router);
        assert!(
            eventually(Duration::from_secs(10), || {
                slot.active().is_some_and(|p| p.info().version == swap)
            })
            .await,
            "swap {swap} became active"
        );
        // The next stream is placed by the new plugin.
        let mut stream = probe
            .subscribe(as_monitor(subscribe("probe", 1000.0, 8, 1), "probe"))
            .await
            .expect("probe opens")
            .into_inner();
        while stream.message().await.expect("probe succeeds").is_some() {}
        let decision = policies.router().recent(1).pop().expect("routed");
        assert_eq!(decision.reason, expected, "swap {swap}: {decision:?}");
        assert_eq!(*decision.policy, format!("router@v{swap}"));
    }

    // No stream failed, and every one is still moving after the last swap.
    let before: Vec<u64> = received.iter().map(|r| r.load(Relaxed)).collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            received
                .iter()
                .zip(&before)
                .all(|(now, then)| now.load(Relaxed) > *then)
        })
        .await,
        "no stream stalled"
    );
    assert_eq!(failures.load(Relaxed), 0, "no stream failed");
    let events = policies.events().since(0);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == sluice_policy::EventKind::Activated)
            .count(),
        SWAPS as usize
    );
    for task in tasks {
        task.abort();
    }
    proxy.shutdown().await;
}
