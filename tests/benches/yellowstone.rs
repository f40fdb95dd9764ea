//! `cargo xtask bench yellowstone`: 200 Yellowstone monitors with 20 distinct subscriptions,
//! through Sluice (shared, packed, resumed by the Yellowstone resumer) and direct, in the same
//! run.
//!
//! Set-up: three `sluice-geyser` processes serving one chain (a slot every 20 ms, 8 account
//! updates and 4 transactions a slot), each capping subscriptions at 10 filters. Sluice runs as
//! its own process (`sluice run`) in front of the first two (priority 0 and 1); the third
//! serves the direct monitors. Each distinct subscription asks for slots and three accounts (2
//! filters), and 10 monitors hold each one.
//!
//! It measures over a window: upstream subscriptions and connections against the packing
//! minimum, updates per second, delivery latency (receive time less the provider's
//! `created_at`) through Sluice and direct, and Sluice's RSS and CPU per update. Then it
//! SIGKILLs the provider Sluice uses and measures each monitor's resume time (kill to the first
//! update the other provider sent) and, over the slots around the kill, what each lost or got
//! twice compared with a direct monitor of the same subscription. It prints figures and
//! verdicts against the issue's targets and asserts nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_geyser::proto::geyser::{
    SubscribeRequest, SubscribeRequestFilterAccounts, SubscribeRequestFilterSlots,
};
use sluice_tests::abuse::stage::memory;
use sluice_tests::measure::{BenchArgs, percentile, pid_cpu};
use sluice_tests::process::SluiceProcess;
use sluice_tests::yellowstone::{GeyserProcess, SUBSCRIBE_PATH, Subscription, identity};

const MONITORS: usize = 200;
const DISTINCT: usize = 20;
const MAX_FILTERS: u32 = 10;
const FILTERS_EACH: u32 = 2;

/// The distinct subscription `k`: slots, and accounts `3k..3k+3`.
fn request(k: usize) -> SubscribeRequest {
    let mut request = SubscribeRequest::default();
    request
        .slots
        .insert("slots".into(), SubscribeRequestFilterSlots::default());
    request.accounts.insert(
        "accounts".into(),
        SubscribeRequestFilterAccounts {
            account: (0..3)
                .map(|i| sluice_geyser::chain::account_name((3 * k + i) as u32 % 64))
                .collect(),
            ..Default::default()
        },
    );
    request
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What one monitor saw.
#[derive(Default)]
struct Record {
    /// Delivery latencies inside the measuring window.
    latencies: Vec<Duration>,
    /// Updates inside the measuring window.
    updates: u64,
    /// Every update's identity, in order.
    seen: Vec<(u64, String)>,
    /// From the kill to the first update sent after it.
    resumed: Option<Duration>,
    error: Option<String>,
}

/// Shared clocks of the run (ns since the epoch; 0: not yet).
struct Clocks {
    measure_from: AtomicI64,
    measure_to: AtomicI64,
    killed_at: AtomicI64,
    stop_at: AtomicI64,
}

/// Reads `subscription` until `stop_at`, recording what it saw.
async fn watch(mut subscription: Subscription, clocks: Arc<Clocks>) -> Record {
    let mut record = Record::default();
    loop {
        let stop = clocks.stop_at.load(Relaxed);
        if stop != 0 && now_ns() >= stop {
            return record;
        }
        let update = match subscription.next(Duration::from_millis(500)).await {
            Ok(update) => update,
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => continue,
            Err(status) => {
                record.error = Some(status.to_string());
                return record;
            }
        };
        let received = now_ns();
        let Some(identity) = identity(&update) else {
            continue;
        };
        let sent = update
            .created_at
            .as_ref()
            .map_or(received, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
        let (from, to) = (
            clocks.measure_from.load(Relaxed),
            clocks.measure_to.load(Relaxed),
        );
        if from != 0 && received >= from && (to == 0 || received < to) {
            record.updates += 1;
            record.latencies.push(Duration::from_nanos(
                received.saturating_sub(sent).max(0) as u64
            ));
        }
        let killed = clocks.killed_at.load(Relaxed);
        if killed != 0 && record.resumed.is_none() && sent > killed {
            record.resumed = Some(Duration::from_nanos((received - killed).max(0) as u64));
        }
        record.seen.push(identity);
    }
}

fn sluice_toml(providers: &[&GeyserProcess], plugins: &std::path::Path) -> String {
    let mut toml = format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_grace = "200ms"

[admin]
listen = "127.0.0.1:0"
token = "bench"

[plugins]
cache_dir = "{cache}"

[plugins.resumer]
file = "{resumer}"

[[methods]]
path = "{SUBSCRIBE_PATH}"
share = true
bidi = true
pack = true
"#,
        cache = sluice_tests::plugins::plugins_config()
            .cache_dir
            .unwrap_or_default()
            .display(),
        resumer = plugins.join("yellowstone.wasm").display(),
    );
    for (i, provider) in providers.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[endpoints]]\nid = \"geyser-{i}\"\nurl = \"http://{}\"\npriority = {i}\n\n[endpoints.limits]\nmax_filters_per_subscription = {MAX_FILTERS}\n",
            provider.addr
        ));
    }
    toml
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse();
    let window = if args.quick { 3 } else { 10 };
    let loopback = ([127, 0, 0, 1], 0).into();
    let limits = ["--max-filters", "10", "--stats-every", "500ms"];
    let first = GeyserProcess::start(loopback, &limits);
    let second = GeyserProcess::start(loopback, &limits);
    let direct = GeyserProcess::start(loopback, &limits);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, sluice_toml(&[&first, &second], &args.plugins)).expect("config");
    let sluice = SluiceProcess::start(&config);

    let clocks = Arc::new(Clocks {
        measure_from: AtomicI64::new(0),
        measure_to: AtomicI64::new(0),
        killed_at: AtomicI64::new(0),
        stop_at: AtomicI64::new(0),
    });
    let mut through = Vec::new();
    let mut straight = Vec::new();
    for i in 0..MONITORS {
        let k = i % DISTINCT;
        let via = Subscription::open(sluice.addr, request(k))
            .await
            .expect("subscribed through Sluice");
        through.push(tokio::spawn(watch(via, Arc::clone(&clocks))));
        let plain = Subscription::open(direct.addr, request(k))
            .await
            .expect("subscribed directly");
        straight.push(tokio::spawn(watch(plain, Arc::clone(&clocks))));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = pid_cpu(sluice.pid());
    let started = Instant::now();
    clocks.measure_from.store(now_ns(), Relaxed);
    tokio::time::sleep(Duration::from_secs(window)).await;
    clocks.measure_to.store(now_ns(), Relaxed);
    let measured = started.elapsed();
    let cpu = pid_cpu(sluice.pid())
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let rss = memory(sluice.pid()).map(|m| m.rss_kb);
    let upstream: u64 = [&first, &second]
        .iter()
        .map(|p| p.stats().get("subscriptions_active").copied().unwrap_or(0))
        .sum();
    let connections: u64 = [&first, &second]
        .iter()
        .map(|p| p.stats().get("peak_connections").copied().unwrap_or(0))
        .sum();

    // Kill the provider Sluice prefers, then read on for a while.
    let killed_at = now_ns();
    clocks.killed_at.store(killed_at, Relaxed);
    first.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    clocks.stop_at.store(now_ns(), Relaxed);
    let mut via = Vec::new();
    for task in through {
        via.push(task.await.expect("monitor task"));
    }
    let mut plain = Vec::new();
    for task in straight {
        plain.push(task.await.expect("direct task"));
    }

    let latencies = |records: &[Record]| {
        let mut all: Vec<Duration> = records.iter().flat_map(|r| r.latencies.clone()).collect();
        all.sort_unstable();
        all
    };
    let (via_lat, plain_lat) = (latencies(&via), latencies(&plain));
    let via_updates: u64 = via.iter().map(|r| r.updates).sum();
    let plain_updates: u64 = plain.iter().map(|r| r.updates).sum();
    let per_second = |n: u64| n as f64 / measured.as_secs_f64();

    // Loss and duplicates around the kill: the slots every direct monitor saw in full.
    let kill_slot = {
        let slot_ns = 20_000_000;
        (killed_at / slot_ns) as u64
    };
    let range = kill_slot.saturating_sub(20)..kill_slot + 60;
    let mut lost = 0;
    let mut duplicated = 0;
    let mut errors = Vec::new();
    let direct_by_k: HashMap<usize, BTreeSet<(u64, String)>> = (0..DISTINCT)
        .map(|k| {
            let set = plain[k]
                .seen
                .iter()
                .filter(|(slot, _)| range.contains(slot))
                .cloned()
                .collect();
            (k, set)
        })
        .collect();
    for (i, record) in via.iter().enumerate() {
        if let Some(error) = &record.error {
            errors.push(format!("monitor {i}: {error}"));
        }
        let mut got = BTreeSet::new();
        for seen in record.seen.iter().filter(|(slot, _)| range.contains(slot)) {
            if !got.insert(seen.clone()) {
                duplicated += 1;
            }
        }
        let last_slot = got.iter().map(|(slot, _)| *slot).max().unwrap_or(0);
        lost += direct_by_k[&(i % DISTINCT)]
            .iter()
            .filter(|(slot, _)| *slot <= last_slot)
            .filter(|seen| !got.contains(*seen))
            .count();
    }
    let mut resumes: Vec<Duration> = via.iter().filter_map(|r| r.resumed).collect();
    resumes.sort_unstable();

    let minimum = (DISTINCT as u32 * FILTERS_EACH).div_ceil(MAX_FILTERS);
    println!(
        "\n== Yellowstone: {MONITORS} monitors, {DISTINCT} distinct subscriptions, {window} s window =="
    );
    println!(
        "upstream subscriptions {upstream} (packing minimum {minimum}, {MONITORS} direct), connections {connections}"
    );
    println!(
        "updates/s through Sluice {:.0}, direct {:.0}",
        per_second(via_updates),
        per_second(plain_updates)
    );
    let p = |v: &[Duration], q| ms(percentile(v, q));
    println!(
        "delivery latency p50 {:.2} ms / p99 {:.2} ms through Sluice; p50 {:.2} ms / p99 {:.2} ms direct; p99 difference {:+.2} ms",
        p(&via_lat, 0.50),
        p(&via_lat, 0.99),
        p(&plain_lat, 0.50),
        p(&plain_lat, 0.99),
        p(&via_lat, 0.99) - p(&plain_lat, 0.99)
    );
    let per_update = cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / via_updates.max(1) as f64);
    println!(
        "Sluice RSS {} MiB, CPU {:.1} us per update delivered ({:.0}% of a core)",
        rss.map_or_else(|| "?".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
        per_update.unwrap_or(f64::NAN),
        cpu.map_or(f64::NAN, |c| c.as_secs_f64() / measured.as_secs_f64()
            * 100.0)
    );
    println!(
        "after the kill: {} of {MONITORS} resumed, p50 {:.0} ms / p99 {:.0} ms; lost {lost}, duplicated {duplicated} (slots {}..{})",
        resumes.len(),
        p(&resumes, 0.50),
        p(&resumes, 0.99),
        range.start,
        range.end
    );
    for error in errors.iter().take(5) {
        println!("  {error}");
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("targets:");
    println!(
        "  upstream subscriptions <= packing minimum: {upstream} <= {minimum}: {}",
        verdict(upstream <= u64::from(minimum))
    );
    println!(
        "  p99 delivery latency <= direct + 1 ms: {:.2} <= {:.2}: {}",
        p(&via_lat, 0.99),
        p(&plain_lat, 0.99) + 1.0,
        verdict(p(&via_lat, 0.99) <= p(&plain_lat, 0.99) + 1.0)
    );
    println!("  0 lost: {lost}: {}", verdict(lost == 0));
    println!("  0 duplicated: {duplicated}: {}", verdict(duplicated == 0));

    if let Some(path) = &args.json {
        let summary = serde_json::json!({
            "monitors": MONITORS,
            "distinct": DISTINCT,
            "upstream_subscriptions": upstream,
            "packing_minimum": minimum,
            "connections": connections,
            "updates_per_second": { "sluice": per_second(via_updates), "direct": per_second(plain_updates) },
            "latency_ms": {
                "sluice": { "p50": p(&via_lat, 0.50), "p99": p(&via_lat, 0.99) },
                "direct": { "p50": p(&plain_lat, 0.50), "p99": p(&plain_lat, 0.99) },
            },
            "rss_kb": rss,
            "cpu_us_per_update": per_update,
            "resume_ms": { "p50": p(&resumes, 0.50), "p99": p(&resumes, 0.99), "resumed": resumes.len() },
            "lost": lost,
            "duplicated": duplicated,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&summary).expect("json"))
            .expect("write json");
    }
    drop((second, direct, sluice));
}
