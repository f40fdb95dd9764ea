//! `cargo xtask bench failover`: kill the primary endpoint process under resumable streams,
//! trial after trial, and measure what the monitors saw.
//!
//! Set-up: a primary `sluice-feed` process (priority 0) and a secondary feed (priority 1,
//! stream creation capped by a token bucket), Sluice in this process with the feed's
//! `from_seq` resumer plugin, `Subscribe` resumed with `replay-last`, active health checks.
//! Each trial opens the streams on the primary, lets them flow, SIGKILLs the primary and
//! measures, per stream:
//! - the time from the kill to the first message sent by the new endpoint (the first event
//!   whose send time is after the kill: a dead process sends nothing);
//! - sequence numbers lost (gaps) and delivered twice, over the stream's whole life;
//!
//! and, at the secondary, how many sliding windows saw more stream starts than the rate limit
//! allows (20 ms of scheduling jitter tolerated). Then the primary is restarted on its port and
//! the next trial waits until its breaker has closed again. It prints figures and asserts
//! nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_config::{MethodConfig, RateLimitConfig, ResumeMode};
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_tests::measure::percentile;
use sluice_tests::plugins::{plugins_config, sluice_with_policies};
use sluice_tests::process::FeedProcess;
use sluice_tests::starts::{rate_violations, sample_starts};
use sluice_tests::*;

const RATE: f64 = 200.0;
const BURST: u32 = 50;
/// Messages each stream reads after its first post-kill message.
const AFTER_RESUME: usize = 50;
const TRIAL_LIMIT: Duration = Duration::from_secs(20);

struct Args {
    plugins: PathBuf,
    trials: usize,
    streams: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        plugins: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins")),
        trials: 20,
        streams: 100,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--plugins" => args.plugins = PathBuf::from(value()),
            "--trials" => args.trials = value().parse().expect("--trials N"),
            "--streams" => args.streams = value().parse().expect("--streams N"),
            "--json" => args.json = Some(PathBuf::from(value())),
            // Passed by `cargo bench`.
            "--bench" => {}
            other => panic!("unknown option {other:?}"),
        }
    }
    args
}

/// What one stream saw in one trial.
#[derive(Debug, Default)]
struct StreamReport {
    resume: Option<Duration>,
    lost: u64,
    duplicated: u64,
    error: Option<String>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

async fn read_stream(
    mut stream: tonic::Streaming<pb::Event>,
    kill_ns: Arc<AtomicI64>,
    killed_at: Arc<parking_lot::Mutex<Option<Instant>>>,
    flowing: Arc<std::sync::atomic::AtomicUsize>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut seqs = Vec::new();
    let mut after_resume = 0;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                report.error = Some("ended".into());
                break;
            }
            Err(status) => {
                report.error = Some(status.to_string());
                break;
            }
        };
        seqs.push(event.seq);
        if seqs.len() == 20 {
            flowing.fetch_add(1, Relaxed);
        }
        let kill = kill_ns.load(Relaxed);
        if kill > 0 && event.sent_at_ns > kill {
            if report.resume.is_none() {
                let killed = killed_at.lock().expect("kill instant set with kill_ns");
                report.resume = Some(killed.elapsed());
            }
            after_resume += 1;
            if after_resume >= AFTER_RESUME {
                break;
            }
        }
    }
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    report.duplicated = (seqs.len() - unique.len()) as u64;
    if let (Some(first), Some(last)) = (unique.first(), unique.last()) {
        report.lost = last - first + 1 - unique.len() as u64;
    }
    report
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let resumer = args.plugins.join("feed-resumer.wasm");
    assert!(
        resumer.is_file(),
        "{} missing (run `cargo xtask plugins`)",
        resumer.display()
    );
    let mut primary = Some(FeedProcess::start("primary"));
    let primary_addr = primary.as_ref().map(|p| p.addr).expect("started");
    let secondary = feed("secondary").await;

    let mut config = config_with_endpoint("primary", &format!("http://{primary_addr}"));
    config.endpoints.push(sluice_config::EndpointConfig {
        priority: 1,
        rate_limit: Some(RateLimitConfig {
            streams_per_second: RATE,
            burst: Some(BURST),
            queue: 4096,
        }),
        ..endpoint("secondary", &format!("http://{}", secondary.addr))
    });
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }];
    config.health.active = true;
    config.health.interval = Duration::from_millis(100);
    config.breakers.endpoint.open_duration = Some(Duration::from_millis(200));
    config.classes.event.max_streams_per_connection = 100;
    config.plugins = plugins_config();
    config.plugins.resumer.file = Some(resumer);
    let (proxy, _policies) = sluice_with_policies(config).await;

    println!(
        "failover: {} trials x {} resumable Subscribe streams at 100 msgs/s; primary process \
         SIGKILLed each trial; secondary capped at {RATE}/s (burst {BURST})",
        args.trials, args.streams
    );
    let mut latencies = Vec::new();
    let mut trials = Vec::new();
    for trial in 0..args.trials {
        // The primary must be back in service: health checks pass, then probe calls close its
        // breaker.
        let primary_state = || {
            proxy
                .endpoints()
                .into_iter()
                .find(|e| &*e.id == "primary")
                .map(|e| (e.health.health, e.breaker.state))
        };
        let mut probe = client(proxy.addr()).await;
        let back = Instant::now();
        while primary_state() != Some((Health::Healthy, BreakerState::Closed)) {
            assert!(
                back.elapsed() < TRIAL_LIMIT,
                "trial {trial}: the primary did not come back: {:?}",
                primary_state()
            );
            if primary_state().is_some_and(|(health, _)| health != Health::Unhealthy) {
                let _ = probe
                    .echo(as_monitor(pb::EchoRequest::default(), "probe"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let kill_ns = Arc::new(AtomicI64::new(0));
        let killed_at = Arc::new(parking_lot::Mutex::new(None));
        let flowing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut c = client(proxy.addr()).await;
        let mut readers = Vec::new();
        for i in 0..args.streams {
            let stream = subscribe_on(
                &mut c,
                subscribe(&format!("t{trial}-{i}"), 100.0, 32, 0),
                &format!("m{i}"),
            )
            .await;
            readers.push(tokio::spawn(read_stream(
                stream,
                Arc::clone(&kill_ns),
                Arc::clone(&killed_at),
                Arc::clone(&flowing),
            )));
        }
        let all_flowing = eventually(TRIAL_LIMIT, || flowing.load(Relaxed) == args.streams).await;
        assert!(all_flowing, "trial {trial}: streams did not start");

        let sampler = tokio::spawn(sample_starts(
            Arc::clone(&secondary.stats),
            Duration::from_millis(5),
            |_, elapsed| elapsed >= Duration::from_secs(3),
        ));
        *killed_at.lock() = Some(Instant::now());
        kill_ns.store(now_ns(), Relaxed);
        let addr = primary
            .take()
            .map(FeedProcess::kill)
            .expect("primary running");

        let mut reports = Vec::new();
        for reader in readers {
            let report = match tokio::time::timeout(TRIAL_LIMIT, reader).await {
                Ok(Ok(report)) => report,
                Ok(Err(error)) => StreamReport {
                    error: Some(error.to_string()),
                    ..Default::default()
                },
                Err(_) => StreamReport {
                    error: Some("no resume within the trial limit".into()),
                    ..Default::default()
                },
            };
            reports.push(report);
        }
        let samples = sampler.await.expect("sampler");
        drop(c);
        primary = Some(FeedProcess::start_on("primary", addr));

        let resumed: Vec<Duration> = reports.iter().filter_map(|r| r.resume).collect();
        latencies.extend(&resumed);
        let mut sorted = resumed.clone();
        sorted.sort_unstable();
        let lost: u64 = reports.iter().map(|r| r.lost).sum();
        let duplicated: u64 = reports.iter().map(|r| r.duplicated).sum();
        let errors = reports.iter().filter(|r| r.error.is_some()).count();
        let violations = rate_violations(&samples, f64::from(BURST), RATE).len();
        println!(
            "trial {:>2}: resumed {:>3}/{}  p50 {:>6.1} ms  p99 {:>6.1} ms  lost {lost}  \
             duplicated {duplicated}  errors {errors}  rate-limit violations {violations}",
            trial + 1,
            resumed.len(),
            args.streams,
            percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        );
        if let Some(error) = reports.iter().find_map(|r| r.error.as_ref()) {
            println!("          first error: {error}");
        }
        trials.push(serde_json::json!({
            "trial": trial + 1,
            "resumed": resumed.len(),
            "p50_ms": percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            "lost": lost,
            "duplicated": duplicated,
            "errors": errors,
            "rate_limit_violations": violations,
        }));
    }
    latencies.sort_unstable();
    let total = |key: &str| -> u64 { trials.iter().map(|t| t[key].as_u64().unwrap_or(0)).sum() };
    println!(
        "all {} resumes: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms; lost {}  duplicated {}  \
         errors {}  rate-limit violations {}",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        total("lost"),
        total("duplicated"),
        total("errors"),
        total("rate_limit_violations"),
    );
    println!(
        "rate-limit floor: the last of {} resumes waits ({} - {BURST}) / {RATE} per s = {:.0} ms",
        args.streams,
        args.streams,
        (args.streams as f64 - f64::from(BURST)).max(0.0) / RATE * 1e3
    );
    println!("targets: p99 <= 1000 ms, 0 lost, 0 duplicated, 0 rate-limit violations");
    if let Some(path) = args.json {
        let summary = serde_json::json!({
            "streams": args.streams,
            "trials": trials,
            "p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            "lost": total("lost"),
            "duplicated": total("duplicated"),
            "rate_limit_violations": total("rate_limit_violations"),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&summary).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    drop(primary);
}
