//! `sluice demo`: the embedded default. Three simulated endpoints with different latency, twenty
//! monitors over the three traffic classes, and the pool between them, all in one process and
//! on loopback, with the admin API and the dashboard. It prints what the pool is doing until
//! Ctrl-C or `--duration`.

mod endpoints;
mod history;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_config::{
    Config, EndpointConfig, EndpointLimits, MethodConfig, MonitorConfig, TrafficClass,
};
use sluice_feed::pb::SubscribeRequest;
use sluice_feed::pb::feed_client::FeedClient;

/// Options of the demo command.
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Address of the demo's Sluice.
    pub listen: std::net::SocketAddr,
    /// Interval between status lines.
    pub report_every: Duration,
    /// A plugins folder to load and watch.
    pub plugins: Option<std::path::PathBuf>,
    /// Where the admin API listens.
    pub admin: std::net::SocketAddr,
    /// The history store; a folder in the system's temp directory when `None`.
    pub store: Option<std::path::PathBuf>,
    /// Seed an empty store with a simulated past ([`history`]).
    pub seed_history: bool,
}

/// The simulated endpoints: name and the latency each adds to a call.
const ENDPOINTS: [(&str, Duration); 3] = [
    ("fast", Duration::ZERO),
    ("steady", Duration::from_millis(5)),
    ("slow", Duration::from_millis(25)),
];

/// One simulated monitor: what it subscribes to.
struct MonitorSpec {
    id: String,
    class: TrafficClass,
    topic: String,
    rate: f64,
    payload_bytes: u32,
}

fn monitors() -> Vec<MonitorSpec> {
    let mut specs = Vec::new();
    for i in 0..6 {
        specs.push(MonitorSpec {
            id: format!("rt-{i}"),
            class: TrafficClass::Realtime,
            topic: format!("slots-{i}"),
            rate: 200.0,
            payload_bytes: 128,
        });
    }
    for i in 0..8 {
        specs.push(MonitorSpec {
            id: format!("ev-{i}"),
            class: TrafficClass::Event,
            topic: format!("transactions-{}", i % 4),
            rate: 50.0,
            payload_bytes: 512,
        });
    }
    // State monitors all watch the same accounts feed: with sharing on, one upstream stream
    // serves all six.
    for i in 0..6 {
        specs.push(MonitorSpec {
            id: format!("st-{i}"),
            class: TrafficClass::State,
            topic: "accounts".to_owned(),
            rate: 20.0,
            payload_bytes: 1024,
        });
    }
    specs
}

fn demo_config(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    endpoints: &[(String, std::net::SocketAddr)],
) -> Config {
    let mut config = Config::default();
    config.server.listen = listen;
    config.admin.listen = admin;
    // The demo is for one person on their own machine, and its printed lines and the docs tell
    // them to stop and start endpoints with a plain `curl -X POST`: on loopback, writes need no
    // token. On any other address the config still requires a token, for writes and reads.
    config.admin.allow_unauthenticated_writes = admin.ip().is_loopback();
    config.server.shutdown_grace = Duration::from_secs(2);
    config.endpoints = endpoints
        .iter()
        .map(|(id, addr)| EndpointConfig {
            metadata: [("x-token".to_owned(), format!("demo-token-{id}"))].into(),
            // Each simulated provider account's caps, as a real provider states them; the
            // dashboard's endpoint cards show the use against them.
            limits: EndpointLimits {
                max_connections: Some(12),
                max_streams: Some(48),
                max_streams_per_connection: None,
                connections_per_second: Some(10.0),
                max_filters_per_subscription: None,
            },
            ..EndpointConfig::new(id.clone(), format!("http://{addr}"))
        })
        .collect();
    // Small per-connection limits so that the demo's 20 monitors spread over several
    // connections and the grouping is visible.
    for class in [
        &mut config.classes.realtime,
        &mut config.classes.event,
        &mut config.classes.state,
    ] {
        class.max_streams_per_connection = 4;
    }
    config.monitors = monitors()
        .into_iter()
        .map(|m| MonitorConfig {
            critical: m.class == TrafficClass::Realtime,
            ..MonitorConfig::new(m.id, m.class)
        })
        .collect();
    config.methods = vec![MethodConfig {
        share: true,
        ..MethodConfig::new("/sluice.feed.v1.Feed/Subscribe")
    }];
    // The demo's feeds serve grpc.health.v1.
    config.health.active = true;
    // History outlives one demo run (reports and forecasts need it), outside the checkout.
    config.store.path = std::env::temp_dir().join("sluice-demo").join("sluice.db");
    config
}

/// Runs the demo until Ctrl-C or the duration.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let simulated = endpoints::SimulatedEndpoints::start(&ENDPOINTS).await?;
    let endpoints = simulated.addrs().await;
    let mut config = demo_config(options.listen, options.admin, &endpoints);
    config.plugins.dir = options.plugins.clone();
    if let Some(store) = &options.store {
        config.store.path = store.clone();
    }
    config.validate().context("demo config")?;
    let services = crate::services::start_with_routes(Arc::new(config), Some(simulated.routes()))
        .await
        .context(
            "starting the demo's Sluice (is another demo running? try --listen 127.0.0.1:0 --admin 127.0.0.1:0)",
        )?;
    let seeded = if options.seed_history {
        let store = Arc::clone(services.analytics.store());
        let now = sluice_analytics::records::unix_ms_now();
        tokio::task::spawn_blocking(move || history::seed(&store, now))
            .await
            .context("seeding the demo's history")?
            .context("seeding the demo's history")?
    } else {
        0
    };
    let proxy = &services.proxy;

    println!("Sluice demo");
    println!("  sluice listening on {} (h2c)", proxy.addr());
    if let Some(admin) = &services.admin {
        let url = admin.url();
        println!("  dashboard on {url}/");
        println!("  admin API on {url}/api/v1/stats");
        println!(
            "  stop an endpoint to watch failover: curl -X POST {url}/api/v1/demo/endpoints/slow/stop (and .../start)"
        );
        println!(
            "  insights, scaling and reports: {url}/api/v1/insights, /api/v1/scaling, /api/v1/reports/hourly?format=html"
        );
    }
    for kind in sluice_config::SlotKind::ALL {
        let slot = services.policies.slot(kind);
        let policy = match slot.active() {
            Some(plugin) => format!("plugin {}", plugin.label()),
            None => "built-in".to_owned(),
        };
        println!("  {kind} policy: {policy}");
    }
    if let Some(dir) = &options.plugins {
        println!(
            "  drop a .wasm policy into {} to swap it in while monitors stream",
            dir.display()
        );
    }
    for (name, addr) in &endpoints {
        println!("  endpoint {name:<7} http://{addr}");
    }
    if seeded > 0 {
        println!(
            "  history: {seeded} minutes of simulated past written to an empty store, so forecasts and reports have data (--no-history skips this)"
        );
    }
    println!("  20 monitors: 6 realtime, 8 event, 6 state (the state ones share one subscription)");
    println!(
        "  try: grpcurl -plaintext -H 'x-sluice-monitor: me' -d '{{\"rate\": 2}}' {} sluice.feed.v1.Feed/Subscribe",
        proxy.addr()
    );
    match options.duration {
        Some(d) => println!("  running for {d:?}; Ctrl-C stops earlier\n"),
        None => println!("  Ctrl-C stops\n"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let target = format!("http://{}", proxy.addr());
    let mut tasks = Vec::new();
    for spec in monitors() {
        tasks.push(tokio::spawn(run_monitor(
            spec,
            target.clone(),
            Arc::clone(&stop),
            Arc::clone(&received),
            Arc::clone(&errors),
        )));
    }

    let started = Instant::now();
    let mut ticker = tokio::time::interval(options.report_every);
    ticker.tick().await;
    let mut last_received = 0;
    let mut shown_insight = 0;
    let mut shown_scaling = 0;
    let until = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    let signal = crate::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = received.load(Relaxed);
                let rate = (now - last_received) as f64 / options.report_every.as_secs_f64();
                last_received = now;
                let snap = proxy.snapshot();
                let groups: Vec<String> = snap
                    .groups
                    .iter()
                    .map(|g| format!("{} {}c/{}s", g.class, g.connections, g.streams))
                    .collect();
                println!(
                    "[{:>5.1}s] {rate:>7.0} msg/s to monitors | monitor streams {} -> upstream streams {} ({} ride a shared one) | connections {} [{}] | errors {}",
                    started.elapsed().as_secs_f64(),
                    snap.stats.downstream_streams_active,
                    snap.stats.upstream_streams_active,
                    snap.stats
                        .shared_subscribers_active
                        .saturating_sub(snap.stats.shared_upstreams_active),
                    snap.connections,
                    groups.join(", "),
                    errors.load(Relaxed),
                );
                // New scaling decisions and insights, as the analytics engine reports them.
                let since = shown_scaling;
                for record in services.analytics.scaling(8).into_iter().rev().filter(|r| r.id > since) {
                    shown_scaling = record.id;
                    println!("          scaling {}: {:+} -> {} connections ({})", record.class, record.applied, record.to, record.reason);
                }
                let since = shown_insight;
                for insight in services.analytics.insights(8).into_iter().rev().filter(|i| i.id > since) {
                    shown_insight = insight.id;
                    println!("          insight [{}] {}: {}", insight.severity.as_str(), insight.title, insight.description);
                }
            }
            _ = &mut until => break,
            _ = &mut signal => break,
        }
    }
    stop.store(true, Relaxed);
    for task in tasks {
        task.abort();
    }
    let snap = proxy.snapshot();
    println!(
        "\ndemo finished: {} messages delivered, {} upstream connections opened, {} monitor errors",
        received.load(Relaxed),
        snap.stats.connections_opened_total,
        errors.load(Relaxed)
    );
    services.shutdown().await;
    simulated.stop_all().await;
    Ok(())
}

/// One monitor: subscribes through Sluice and resubscribes after errors until stopped.
async fn run_monitor(
    spec: MonitorSpec,
    target: String,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let mut next_seq = 0;
    while !stop.load(Relaxed) {
        let result = subscribe(&spec, &target, &mut next_seq, &received).await;
        if let Err(error) = result {
            if stop.load(Relaxed) {
                return;
            }
            errors.fetch_add(1, Relaxed);
            tracing::warn!(monitor = %spec.id, %error, "monitor stream ended; resubscribing in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn subscribe(
    spec: &MonitorSpec,
    target: &str,
    next_seq: &mut u64,
    received: &AtomicU64,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())?
        .connect()
        .await?;
    let mut client = FeedClient::new(channel);
    let mut request = tonic::Request::new(SubscribeRequest {
        // Shared subscriptions must be byte-identical, so only unshared ones resume by sequence.
        from_seq: if spec.class == TrafficClass::State {
            0
        } else {
            *next_seq
        },
        rate: spec.rate,
        payload_bytes: spec.payload_bytes,
        count: 0,
        topic: spec.topic.clone(),
    });
    request
        .metadata_mut()
        .insert("x-sluice-monitor", spec.id.parse()?);
    let mut stream = client.subscribe(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        *next_seq = event.seq + 1;
        received.fetch_add(1, Relaxed);
    }
    Ok(())
}
