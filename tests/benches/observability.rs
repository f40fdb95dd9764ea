//! `cargo xtask bench observability`: what watching Sluice costs.
//!
//! Two feeds and Sluice in this process (policy slots, the analytics engine with its loops at
//! the default periods, the admin API), 1,000 `Subscribe` streams (1 event/s, 16 B) on 10
//! client connections from 60 monitors (50 configured, 10 not).
//!
//! 1. **`/metrics`**: 100 scrapes one after another: latency p50/p99, size, sample lines; and
//!    `/api/v1/stats` the same way.
//! 2. **`/ws`**: 20 connections, time to the first frame; then one viewer's frames for 10 s:
//!    size and the interval between them.
//! 3. **Cost while watched**: the process's CPU time over alternating windows, A with nobody
//!    watching and B with 5 dashboard viewers plus a `/metrics` and a `/api/v1/stats` request
//!    every second (a Prometheus server and a dashboard left open), A B A B ...; medians of each
//!    and their difference as a share of one core.
//!
//! It prints figures and asserts nothing; every loop is bounded in count and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use sluice_config::TrafficClass;
use sluice_tests::admin::{Observed, observed, request};
use sluice_tests::measure::{BenchArgs, cpu_share, median, ms, percentile};
use sluice_tests::*;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TOKEN: &str = "bench";
const STREAMS: usize = 1000;
const CLIENT_CONNECTIONS: usize = 10;
const CONFIGURED_MONITORS: usize = 50;
const UNCONFIGURED_MONITORS: usize = 10;
const SCRAPES: usize = 100;
const WS_CONNECTS: usize = 20;
const VIEWERS: usize = 5;

async fn ws_connect(
    admin: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{admin}/ws")
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header"),
    );
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("ws connects within 10 s")
    .expect("ws connects");
    socket
}

/// Timed GETs of `path`, one after another: sorted latencies and the last body's size.
async fn timed_gets(admin: SocketAddr, path: &str, count: usize) -> (Vec<Duration>, usize, String) {
    let mut took = Vec::with_capacity(count);
    let mut last = String::new();
    for _ in 0..count {
        let started = Instant::now();
        let answer = request(admin, "GET", path, Some(TOKEN), Vec::new()).await;
        took.push(started.elapsed());
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        last = answer.text;
    }
    took.sort();
    (took, last.len(), last)
}

/// A dashboard left open: reads frames until aborted.
fn viewer(admin: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut socket = ws_connect(admin).await;
        while let Some(Ok(_)) = socket.next().await {}
    })
}

/// A Prometheus server and a dashboard's REST calls: one scrape and one stats read a second.
fn scraper(admin: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            request(admin, "GET", "/metrics", Some(TOKEN), Vec::new()).await;
            request(admin, "GET", "/api/v1/stats", Some(TOKEN), Vec::new()).await;
        }
    })
}

#[tokio::main]
async fn main() {
    let args = BenchArgs::parse();
    let started = Instant::now();
    println!(
        "observability bench{}: loopback, one process ({} cores)",
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let feeds = [feed("east").await, feed("west").await];
    let store = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(&[&feeds[0], &feeds[1]]);
    config.store.path = store.path().join("sluice.db");
    config.pool.max_connections = 40;
    for i in 0..CONFIGURED_MONITORS {
        config
            .monitors
            .push(monitor(&format!("m{i}"), TrafficClass::ALL[i % 3]));
    }
    let Observed {
        admin,
        proxy,
        analytics,
        ..
    } = observed(config, TOKEN).await;
    let loops = analytics.spawn();
    let admin_addr = admin.addr();

    let mut readers = Vec::new();
    for c in 0..CLIENT_CONNECTIONS {
        let mut client = client(proxy.addr()).await;
        for s in 0..STREAMS / CLIENT_CONNECTIONS {
            let n = c * (STREAMS / CLIENT_CONNECTIONS) + s;
            let who = n % (CONFIGURED_MONITORS + UNCONFIGURED_MONITORS);
            let monitor = if who < CONFIGURED_MONITORS {
                format!("m{who}")
            } else {
                format!("guest{who}")
            };
            let request = as_monitor(subscribe(&format!("t{n}"), 1.0, 16, 0), &monitor);
            let mut stream = bounded(Duration::from_secs(10), "open", client.subscribe(request))
                .await
                .expect("stream opens")
                .into_inner();
            readers.push(tokio::spawn(async move {
                while let Ok(Some(_)) = stream.message().await {}
            }));
        }
    }
    let opened = proxy.snapshot();
    println!(
        "  {} monitor streams on {} upstream connections",
        opened.stats.downstream_streams_active, opened.connections
    );
    // A few samples and one analytics run, so every family and panel has data.
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 6 })).await;

    // 1. /metrics and /api/v1/stats.
    let (metrics, metrics_bytes, text) = timed_gets(admin_addr, "/metrics", SCRAPES).await;
    let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
    let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
    let (stats, stats_bytes, _) = timed_gets(admin_addr, "/api/v1/stats", SCRAPES).await;
    println!("\n== 1. scrapes ({SCRAPES} each, sequential) ==");
    println!(
        "  /metrics       p50 {:.2} ms  p99 {:.2} ms  {} B, {families} families, {sample_lines} samples",
        ms(percentile(&metrics, 0.5)),
        ms(percentile(&metrics, 0.99)),
        metrics_bytes
    );
    println!(
        "  /api/v1/stats  p50 {:.2} ms  p99 {:.2} ms  {} B",
        ms(percentile(&stats, 0.5)),
        ms(percentile(&stats, 0.99)),
        stats_bytes
    );

    // 2. /ws: time to the first frame, then frame size and spacing.
    let mut first = Vec::new();
    for _ in 0..WS_CONNECTS {
        let begun = Instant::now();
        let mut socket = ws_connect(admin_addr).await;
        bounded(Duration::from_secs(5), "first frame", socket.next()).await;
        first.push(begun.elapsed());
    }
    first.sort();
    let watch = Duration::from_secs(if args.quick { 4 } else { 10 });
    let mut socket = ws_connect(admin_addr).await;
    let mut sizes = Vec::new();
    let mut gaps = Vec::new();
    let mut last = None;
    let until = Instant::now() + watch;
    while Instant::now() < until {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(3), socket.next()).await
        else {
            break;
        };
        let now = Instant::now();
        if let Some(previous) = last.replace(now) {
            gaps.push(now - previous);
        }
        sizes.push(message.len() as f64);
    }
    drop(socket);
    gaps.sort();
    let frame_bytes = median(&sizes);
    println!("\n== 2. live feed ==");
    println!(
        "  connect to first frame  p50 {:.2} ms  p99 {:.2} ms  ({WS_CONNECTS} connections)",
        ms(percentile(&first, 0.5)),
        ms(percentile(&first, 0.99))
    );
    println!(
        "  frames                  {} in {:.0} s, median {:.1} KiB, interval p50 {:.0} ms  p99 {:.0} ms",
        sizes.len(),
        watch.as_secs_f64(),
        frame_bytes / 1024.0,
        ms(percentile(&gaps, 0.5)),
        ms(percentile(&gaps, 0.99))
    );

    // 3. CPU while watched vs not, alternating.
    let rounds = if args.quick { 2 } else { 4 };
    let window = Duration::from_secs(if args.quick { 3 } else { 6 });
    let mut quiet = Vec::new();
    let mut watched = Vec::new();
    for _ in 0..rounds {
        quiet.push(cpu_share(window).await);
        let mut watchers: Vec<JoinHandle<()>> = (0..VIEWERS).map(|_| viewer(admin_addr)).collect();
        watchers.push(scraper(admin_addr));
        // Let the viewers connect before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        watched.push(cpu_share(window).await);
        for task in watchers {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let quiet_median = median(&quiet);
    let watched_median = median(&watched);
    println!("\n== 3. process CPU, {rounds} x {window:?} windows each, A B alternated ==");
    println!(
        "  nobody watching                        median {quiet_median:.1}% of a core  {quiet:.1?}"
    );
    println!(
        "  {VIEWERS} dashboards, 1 scrape/s, 1 stats/s  median {watched_median:.1}% of a core  {watched:.1?}"
    );
    println!(
        "  cost of being watched                  {:+.1}% of a core",
        watched_median - quiet_median
    );

    let errors = proxy.snapshot().stats.upstream_failures_total;
    println!(
        "\n({:.0} s; {errors} upstream stream failures during the run)",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = args.json {
        let all = json!({
            "quick": args.quick,
            "streams": STREAMS,
            "metrics": {
                "p50_ms": ms(percentile(&metrics, 0.5)),
                "p99_ms": ms(percentile(&metrics, 0.99)),
                "bytes": metrics_bytes,
                "families": families,
                "samples": sample_lines,
            },
            "stats": {
                "p50_ms": ms(percentile(&stats, 0.5)),
                "p99_ms": ms(percentile(&stats, 0.99)),
                "bytes": stats_bytes,
            },
            "ws": {
                "first_frame_p50_ms": ms(percentile(&first, 0.5)),
                "first_frame_p99_ms": ms(percentile(&first, 0.99)),
                "frame_bytes_median": frame_bytes,
                "interval_p50_ms": ms(percentile(&gaps, 0.5)),
                "interval_p99_ms": ms(percentile(&gaps, 0.99)),
            },
            "cpu_percent_of_core": { "quiet": quiet, "watched": watched },
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("raw figures: {}", path.display());
    }
    for reader in readers {
        reader.abort();
    }
    loops.shutdown().await;
    admin.shutdown().await;
    proxy.shutdown().await;
}
