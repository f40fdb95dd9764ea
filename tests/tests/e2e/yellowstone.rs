//! Yellowstone subscriptions through Sluice with the Yellowstone resumer plugin, against mock
//! Geyser providers (in this process, or as processes to SIGKILL): identical subscriptions
//! share one upstream stream, pings are answered by Sluice, a monitor that changes its filters
//! moves with no lost or duplicated update, a killed provider is resumed on another with every
//! update exactly once, and a resume beyond every provider's replay window ends with the gap
//! signal.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use sluice_geyser::proto::geyser::SubscribeUpdate;
use sluice_geyser::proto::geyser::subscribe_update::UpdateOneof;
use sluice_tests::plugins::sluice_with_policies;
use sluice_tests::yellowstone::{
    GeyserProcess, Subscription, identity, mock, mock_config, ping, slots_request, sluice_config,
    yellowstone_plugin,
};

const WAIT: Duration = Duration::from_secs(10);

/// The counter `name` of a mock's stats.
fn stat(handle: &sluice_geyser::GeyserHandle, name: &str) -> u64 {
    handle
        .stats
        .snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v)
}

/// What one monitor received, checked as a direct subscriber would see it.
#[derive(Default)]
struct Received {
    seen: HashSet<(u64, String)>,
    /// Updates per slot, by kind letter (`s`lot, `m`eta, `a`ccount).
    per_slot: BTreeMap<u64, BTreeMap<char, usize>>,
    duplicates: Vec<(u64, String)>,
}

impl Received {
    fn record(&mut self, update: &SubscribeUpdate) {
        let Some(identity) = identity(update) else {
            return;
        };
        let kind = identity.1.chars().next().unwrap_or('?');
        *self
            .per_slot
            .entry(identity.0)
            .or_default()
            .entry(kind)
            .or_default() += 1;
        if !self.seen.insert(identity.clone()) {
            self.duplicates.push(identity);
        }
    }

    /// Checks every slot strictly between the first and last seen is whole: one slot update,
    /// one block meta and, when `accounts`, the chain's eight account updates.
    fn assert_whole(&self, who: &str, accounts: bool) {
        assert!(
            self.duplicates.is_empty(),
            "{who}: duplicates {:?}",
            self.duplicates
        );
        let slots: Vec<u64> = self.per_slot.keys().copied().collect();
        assert!(slots.len() > 5, "{who}: too few slots {slots:?}");
        for slot in slots[1]..*slots.last().expect("slots") {
            let kinds = self.per_slot.get(&slot);
            let count = |kind| kinds.and_then(|k| k.get(&kind)).copied().unwrap_or(0);
            assert_eq!(
                count('s'),
                1,
                "{who}: slot {slot} missing or repeated: {kinds:?}"
            );
            assert_eq!(count('m'), 1, "{who}: meta of slot {slot}: {kinds:?}");
            if accounts {
                assert_eq!(count('a'), 8, "{who}: accounts of slot {slot}: {kinds:?}");
            }
        }
    }
}

/// SIGKILLs the provider that serves `monitor` (its `x-sluice-endpoint`, `geyser-0` or
/// `geyser-1`); returns the other.
fn kill_serving(providers: [GeyserProcess; 2], monitor: &Subscription) -> GeyserProcess {
    let serving = monitor
        .headers
        .get("x-sluice-endpoint")
        .and_then(|v| v.to_str().ok())
        .expect("attribution header")
        .to_owned();
    let [first, second] = providers;
    let (killed, survivor) = if serving == "geyser-0" {
        (first, second)
    } else {
        (second, first)
    };
    killed.kill();
    survivor
}

/// Reads `subscription` until a slot update past `until` arrives, recording updates.
async fn read_past(subscription: &mut Subscription, received: &mut Received, until: u64) {
    loop {
        let update = subscription.next(WAIT).await.expect("an update");
        received.record(&update);
        if matches!(&update.update_oneof, Some(UpdateOneof::Slot(s)) if s.slot > until) {
            return;
        }
    }
}

/// The slot of the latest slot update `subscription` delivers.
async fn current_slot(subscription: &mut Subscription, received: &mut Received) -> u64 {
    loop {
        let update = subscription.next(WAIT).await.expect("an update");
        received.record(&update);
        if let Some(UpdateOneof::Slot(slot)) = &update.update_oneof {
            return slot.slot;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subscriptions_share_one_stream_pings_stay_local_and_a_change_moves_losslessly() {
    let Some(plugin) = yellowstone_plugin() else {
        return;
    };
    let mut config = mock_config(Duration::from_millis(300));
    config.access.tokens = [("secret".to_owned(), "acme".to_owned())].into();
    // One shared stream, plus one for the monitor that changes its filters.
    config.access.max_subscriptions = Some(2);
    let provider = mock(config).await;
    let (sluice, _policies) =
        sluice_with_policies(sluice_config(&[(provider.addr, Some("secret"))], plugin)).await;

    let opened =
        join_all((0..50).map(|_| Subscription::open(sluice.addr(), slots_request(false)))).await;
    let mut monitors: Vec<Subscription> = opened
        .into_iter()
        .map(|s| s.expect("subscribed through Sluice"))
        .collect();
    let mut received: Vec<Received> = (0..50).map(|_| Received::default()).collect();
    for (monitor, received) in monitors.iter_mut().zip(&mut received) {
        current_slot(monitor, received).await;
        let endpoint = monitor
            .headers
            .get("x-sluice-endpoint")
            .map(|v| v.to_str().ok());
        assert_eq!(endpoint, Some(Some("geyser-0")), "attribution header");
    }
    assert_eq!(
        stat(&provider, "subscriptions_total"),
        1,
        "50 monitors, one upstream stream"
    );

    // Every monitor pings; each gets its own pong, and none reaches the provider.
    for (i, monitor) in monitors.iter().enumerate() {
        monitor.send(ping(i as i32 + 1)).await;
    }
    for (i, (monitor, received)) in monitors.iter_mut().zip(&mut received).enumerate() {
        loop {
            let update = monitor.next(WAIT).await.expect("an update");
            received.record(&update);
            if let Some(UpdateOneof::Pong(pong)) = update.update_oneof {
                assert_eq!(pong.id, i as i32 + 1, "monitor {i} got another's pong");
                break;
            }
        }
    }
    assert_eq!(
        stat(&provider, "pings_answered"),
        0,
        "pings answered by Sluice"
    );
    // The provider's own pings reach every subscriber of the shared stream.
    let first = &mut monitors[0];
    let pinged = async {
        loop {
            let update = first.next(WAIT).await.expect("an update");
            received[0].record(&update);
            if matches!(update.update_oneof, Some(UpdateOneof::Ping(_))) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), pinged)
        .await
        .expect("a server ping within two ping intervals");

    // Monitor 0 adds every account: it moves to a stream of its own, from where it was.
    let before = current_slot(&mut monitors[0], &mut received[0]).await;
    monitors[0].send(slots_request(true)).await;
    read_past(&mut monitors[0], &mut received[0], before + 40).await;
    received[0].assert_whole("the monitor that moved", false);
    let accounts_after: usize = received[0]
        .per_slot
        .range(before + 5..)
        .map(|(_, kinds)| kinds.get(&'a').copied().unwrap_or(0))
        .sum();
    assert!(accounts_after > 0, "the new filters apply");
    for slot in before + 5..before + 40 {
        let accounts = received[0].per_slot[&slot].get(&'a').copied().unwrap_or(0);
        assert_eq!(accounts, 8, "every account update of slot {slot}, once");
    }
    assert_eq!(
        stat(&provider, "subscriptions_total"),
        2,
        "one more upstream stream"
    );

    // The others kept their subscription: slots and metas only, whole.
    let until = before + 40;
    read_past(&mut monitors[1], &mut received[1], until).await;
    received[1].assert_whole("a monitor that stayed", false);
    assert!(
        received[1]
            .per_slot
            .values()
            .all(|kinds| !kinds.contains_key(&'a')),
        "a monitor never sees another monitor's updates"
    );
    provider.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_is_resumed_with_every_update_exactly_once() {
    let Some(plugin) = yellowstone_plugin() else {
        return;
    };
    let loopback = ([127, 0, 0, 1], 0).into();
    let providers = [
        GeyserProcess::start(loopback, &[]),
        GeyserProcess::start(loopback, &[]),
    ];
    let addrs: Vec<_> = providers.iter().map(|p| (p.addr, None)).collect();
    let (sluice, _policies) = sluice_with_policies(sluice_config(&addrs, plugin)).await;
    let mut monitors = Vec::new();
    for _ in 0..5 {
        monitors.push(
            Subscription::open(sluice.addr(), slots_request(true))
                .await
                .expect("subscribed"),
        );
    }
    let mut received: Vec<Received> = (0..5).map(|_| Received::default()).collect();
    let mut start = 0;
    for (monitor, received) in monitors.iter_mut().zip(&mut received) {
        start = start.max(current_slot(monitor, received).await);
    }
    let survivor = kill_serving(providers, &monitors[0]);
    for (i, (monitor, received)) in monitors.iter_mut().zip(&mut received).enumerate() {
        read_past(monitor, received, start + 60).await;
        received.assert_whole(&format!("monitor {i}"), true);
    }
    let stats = sluice.snapshot().stats;
    assert!(
        stats.resumes_total >= 1,
        "the shared subscription resumed: {stats:?}"
    );
    // The new stream replayed the last slots from the survivor; what the monitors had was
    // dropped by key (`created_at` differs, so no byte comparison could have).
    assert!(stats.duplicates_dropped_total > 0, "{stats:?}");
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_beyond_every_replay_window_ends_with_the_gap_signal() {
    let Some(plugin) = yellowstone_plugin() else {
        return;
    };
    let loopback = ([127, 0, 0, 1], 0).into();
    let providers = [
        GeyserProcess::start(loopback, &["--replay-slots", "10"]),
        GeyserProcess::start(loopback, &["--replay-slots", "10"]),
    ];
    let addrs: Vec<_> = providers.iter().map(|p| (p.addr, None)).collect();
    let mut config = sluice_config(&addrs, plugin);
    // Resume 100 slots back: further than any provider keeps.
    config
        .plugins
        .resumer
        .config
        .insert("from_slot_back".into(), "100".into());
    let (sluice, _policies) = sluice_with_policies(config).await;
    let mut monitor = Subscription::open(sluice.addr(), slots_request(false))
        .await
        .expect("subscribed");
    let mut received = Received::default();
    let last = current_slot(&mut monitor, &mut received).await;
    let _survivor = kill_serving(providers, &monitor);
    let status = loop {
        match monitor.next(WAIT).await {
            Ok(update) => received.record(&update),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains("gap"), "{status:?}");
    let after: u64 = status
        .metadata()
        .get("x-sluice-gap-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-sluice-gap-after names a slot");
    assert!(
        after >= last,
        "gap after {after}, the monitor had slot {last}"
    );
    let seen_last = received.per_slot.keys().last().copied().unwrap_or(0);
    assert!(
        after >= seen_last,
        "gap after {after} but the monitor saw {seen_last}"
    );
    assert!(
        status.metadata().get("x-sluice-resumes").is_some(),
        "trailers count the resumes"
    );
    assert!(sluice.snapshot().stats.subscription_gaps_total >= 1);
}

/// An accounts subscription (one filter, `watch`) for accounts `i` and `i + 1` of the mock's
/// chain.
fn accounts_request(i: u32) -> sluice_geyser::proto::geyser::SubscribeRequest {
    let mut request = sluice_geyser::proto::geyser::SubscribeRequest::default();
    request.accounts.insert(
        "watch".into(),
        sluice_geyser::proto::geyser::SubscribeRequestFilterAccounts {
            account: vec![
                sluice_geyser::chain::account_name(i % 64),
                sluice_geyser::chain::account_name((i + 1) % 64),
            ],
            ..Default::default()
        },
    );
    request
}

/// Updates of slots `from..to` a subscription delivers, in order, as (slot, what, filters).
async fn collect(
    subscription: &mut Subscription,
    from: u64,
    to: u64,
) -> Vec<(u64, String, Vec<String>)> {
    let mut seen = Vec::new();
    loop {
        let update = subscription.next(WAIT).await.expect("an update");
        let Some((slot, what)) = identity(&update) else {
            continue;
        };
        if slot >= to {
            return seen;
        }
        if slot >= from {
            seen.push((slot, what, update.filters.clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_subscriptions_pack_into_the_fewest_upstream_subscriptions() {
    let Some(plugin) = yellowstone_plugin() else {
        return;
    };
    // Two mocks of one chain: one behind Sluice, one for the direct run.
    let mut limited = mock_config(Duration::from_secs(15));
    limited.access.max_filters = Some(10);
    let behind = mock(limited.clone()).await;
    let direct = mock(limited).await;
    let mut config = sluice_config(&[(behind.addr, None)], plugin);
    config.endpoints[0].limits.max_filters_per_subscription = Some(10);
    config.methods[0].pack = true;
    let (sluice, _policies) = sluice_with_policies(config).await;

    let through =
        join_all((0..40).map(|i| Subscription::open(sluice.addr(), accounts_request(i)))).await;
    let mut through: Vec<Subscription> = through
        .into_iter()
        .map(|s| s.expect("subscribed through Sluice"))
        .collect();
    let mut direct_runs = Vec::new();
    for i in 0..40 {
        direct_runs.push(
            Subscription::open(direct.addr, accounts_request(i))
                .await
                .expect("subscribed directly"),
        );
    }
    // Every stream has its first update (every pack applied its members): the comparison
    // starts after the last of them.
    let mut start = 0;
    for monitor in through.iter_mut().chain(&mut direct_runs) {
        let update = monitor.next(WAIT).await.expect("a first update");
        start = start.max(identity(&update).map_or(0, |(slot, _)| slot));
    }
    let snapshot = sluice.snapshot();
    assert_eq!(
        (snapshot.packs, snapshot.packed_subscriptions),
        (4, 40),
        "40 one-filter subscriptions in packs of 10"
    );
    assert_eq!(
        stat(&behind, "subscriptions_total"),
        4,
        "4 upstream subscriptions"
    );
    assert_eq!(
        stat(&behind, "refused"),
        0,
        "within the provider's filter limit"
    );

    // 60 slots: a two-account subscription sees no update in a slot about 3 times in 4.
    let (from, to) = (start + 3, start + 63);
    for (i, (monitor, direct)) in through.iter_mut().zip(&mut direct_runs).enumerate() {
        let (got, want) = tokio::join!(collect(monitor, from, to), collect(direct, from, to));
        assert!(!want.is_empty(), "monitor {i}: the direct run saw nothing");
        assert_eq!(
            got, want,
            "monitor {i}: what a direct subscription gets, update by update"
        );
    }

    // A monitor that leaves takes its filters out of its pack; the others are undisturbed.
    drop(through.remove(0));
    let left = tokio::time::timeout(WAIT, async {
        loop {
            if sluice.snapshot().packed_subscriptions == 39 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(left.is_ok(), "the member left its pack");
    let (from, to) = (to + 2, to + 12);
    let (got, want) = tokio::join!(
        collect(&mut through[0], from, to),
        collect(&mut direct_runs[1], from, to)
    );
    assert_eq!(got, want, "a member that stayed, after another left");
    assert_eq!(
        stat(&behind, "subscriptions_total"),
        4,
        "no subscription opened for it"
    );

    // A member that changes its accounts is re-seated in its pack, in place: it then gets the
    // new accounts' updates, under its own filter name, and no subscription is opened.
    let mut changed = accounts_request(50);
    let filter = changed.accounts.remove("watch").expect("the filter");
    changed.accounts.insert("moved".into(), filter);
    through[1].send(changed).await;
    let wanted = [
        sluice_geyser::chain::account_key(50)[..4].to_vec(),
        sluice_geyser::chain::account_key(51)[..4].to_vec(),
    ];
    let moved = tokio::time::timeout(WAIT, async {
        loop {
            let update = through[1].next(WAIT).await.expect("an update");
            if update.filters == ["moved"] {
                return update;
            }
        }
    })
    .await
    .expect("updates for the new accounts");
    let Some(UpdateOneof::Account(account)) = &moved.update_oneof else {
        panic!("an account update: {moved:?}");
    };
    let key = account.account.as_ref().expect("account info").pubkey[..4].to_vec();
    assert!(wanted.contains(&key), "an update of the new accounts");
    assert_eq!(stat(&behind, "subscriptions_total"), 4, "changed in place");
    behind.stop();
    direct.stop();
}
