//! The soak's monitors: each one a service holding one subscription through Sluice for the
//! whole run, as Solana-style subscribers do, and the record of what it saw.
//!
//! A monitor opens its stream, reads every message, and when the stream ends or fails opens it
//! again after a short pause (a resumable one from the sequence number after the last it saw,
//! as a real client would). It records each delivery's time, each error, the time each open
//! took, and for resumable streams every sequence number lost or delivered twice. It judges
//! nothing: [`super::report`] turns the records into figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_config::TrafficClass;
use tokio::sync::watch;

use crate::pb::{self, feed_client::FeedClient};
use crate::{as_monitor, client};

/// The method resumable monitors call (`resume = "replay-last"` with the `from_seq` resumer).
pub const RESUMABLE: &str = "/sluice.feed.v1.Feed/Subscribe";
/// The method the other monitors call (`share = true`: identical requests share a stream).
pub const SHARED: &str = "/sluice.feed.v1.Feed/Watch";

/// One monitor of the soak.
#[derive(Debug, Clone)]
pub struct MonitorSpec {
    /// Its id (configured in Sluice).
    pub id: String,
    /// Its traffic class.
    pub class: TrafficClass,
    /// Whether it calls the resumable method (otherwise the shared one).
    pub resumable: bool,
    /// Events per second its subscription asks for.
    pub rate: f64,
    /// The subscription's topic: monitors with the same topic on the shared method share one
    /// upstream stream.
    pub topic: String,
}

impl MonitorSpec {
    /// Whether its upstream is quiet (an event every 20 s or more), as narrow filters are.
    pub fn quiet(&self) -> bool {
        self.rate < 0.1
    }

    /// The longest pause between two deliveries that still counts as delivering: three
    /// periods and a second.
    pub fn allowance(&self) -> Duration {
        Duration::from_secs_f64(3.0 / self.rate + 1.0)
    }
}

/// The 20 monitors of the spec's load test: 6 realtime, 8 event and 6 state; 14 resumable (two
/// of them quiet), 6 on the shared method (two pairs with identical subscriptions).
pub fn the_twenty() -> Vec<MonitorSpec> {
    let spec = |id: &str, class, resumable, rate: f64, topic: &str| MonitorSpec {
        id: id.to_owned(),
        class,
        resumable,
        rate,
        topic: topic.to_owned(),
    };
    use TrafficClass::{Event, Realtime, State};
    let mut monitors = Vec::new();
    for i in 0..6 {
        monitors.push(spec(
            &format!("rt-{i}"),
            Realtime,
            true,
            20.0,
            &format!("rt-{i}"),
        ));
    }
    for i in 0..4 {
        // ev-0 and ev-1 share one upstream stream, ev-2 and ev-3 another.
        let topic = format!("shared-{}", i / 2);
        monitors.push(spec(&format!("ev-{i}"), Event, false, 10.0, &topic));
    }
    for i in 4..6 {
        monitors.push(spec(
            &format!("ev-{i}"),
            Event,
            true,
            0.05,
            &format!("quiet-{i}"),
        ));
    }
    for i in 6..8 {
        monitors.push(spec(
            &format!("ev-{i}"),
            Event,
            true,
            10.0,
            &format!("ev-{i}"),
        ));
    }
    for i in 0..4 {
        monitors.push(spec(
            &format!("st-{i}"),
            State,
            true,
            5.0,
            &format!("st-{i}"),
        ));
    }
    for i in 4..6 {
        monitors.push(spec(
            &format!("st-{i}"),
            State,
            false,
            5.0,
            &format!("st-{i}"),
        ));
    }
    monitors
}

/// What one monitor saw, in milliseconds since the soak began.
#[derive(Debug, Default, Clone)]
pub struct MonitorLog {
    /// When each message arrived.
    pub deliveries: Vec<u32>,
    /// When each stream failed or was refused, and why.
    pub errors: Vec<(u32, String)>,
    /// When each stream was opened and how long the open took (to the response headers).
    pub opens: Vec<(u32, Duration)>,
    /// Sequence numbers skipped (resumable monitors).
    pub lost: u64,
    /// Sequence numbers delivered again (resumable monitors).
    pub duplicated: u64,
}

/// A monitor's record, shared between its task and the report.
pub type SharedLog = Arc<Mutex<MonitorLog>>;

/// Milliseconds from `start` to now.
pub fn ms_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX)
}

/// Runs `spec` against Sluice at `addr` until `stop` flips, recording into `log`.
pub async fn run(
    spec: MonitorSpec,
    addr: SocketAddr,
    start: Instant,
    log: SharedLog,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = client(addr).await;
    // The next sequence number a resumable monitor expects.
    let mut next_seq = 0u64;
    while !*stop.borrow() {
        let request = pb::SubscribeRequest {
            from_seq: next_seq,
            rate: spec.rate,
            payload_bytes: 64,
            count: 0,
            topic: spec.topic.clone(),
        };
        let opened_at = Instant::now();
        let opened = tokio::select! {
            opened = open(&mut client, &spec, request) => opened,
            _ = stop.changed() => return,
        };
        let mut stream = match opened {
            Ok(stream) => {
                log.lock()
                    .opens
                    .push((ms_since(start), opened_at.elapsed()));
                stream
            }
            Err(status) => {
                log.lock()
                    .errors
                    .push((ms_since(start), status.to_string()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ended = loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = stop.changed() => return,
            };
            match message {
                Ok(Some(event)) => {
                    let mut log = log.lock();
                    log.deliveries.push(ms_since(start));
                    if spec.resumable {
                        if event.seq > next_seq {
                            log.lost += event.seq - next_seq;
                        } else if event.seq < next_seq {
                            log.duplicated += 1;
                        }
                        next_seq = next_seq.max(event.seq + 1);
                    }
                }
                Ok(None) => break "the stream ended".to_owned(),
                Err(status) => break status.to_string(),
            }
        };
        log.lock().errors.push((ms_since(start), ended));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `spec`'s stream on its method.
async fn open(
    client: &mut FeedClient<tonic::transport::Channel>,
    spec: &MonitorSpec,
    request: pb::SubscribeRequest,
) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    let request = as_monitor(request, &spec.id);
    let response = if spec.resumable {
        client.subscribe(request).await?
    } else {
        client.watch(request).await?
    };
    Ok(response.into_inner())
}

/// Opens a short stream every `every` as the monitor `probe` until `stop` flips, recording how
/// long each open took: the stream-creation latency a new subscriber sees.
pub async fn probe_creation(
    addr: SocketAddr,
    every: Duration,
    start: Instant,
    log: SharedLog,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = client(addr).await;
    let mut ticks = tokio::time::interval(every);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let request = pb::SubscribeRequest {
            from_seq: 0,
            rate: 1000.0,
            payload_bytes: 8,
            count: 1,
            topic: format!("probe-{n}"),
        };
        let opened_at = Instant::now();
        match client.subscribe(as_monitor(request, "probe")).await {
            Ok(response) => {
                log.lock()
                    .opens
                    .push((ms_since(start), opened_at.elapsed()));
                let mut stream = response.into_inner();
                while let Ok(Some(_)) = stream.message().await {}
            }
            Err(status) => log
                .lock()
                .errors
                .push((ms_since(start), status.to_string())),
        }
    }
}

/// A monitor that opens a fast stream and stops reading it for `hold`, then lets go: Sluice
/// must cut or hold it back without harming anyone else.
pub async fn stop_reading(addr: SocketAddr, hold: Duration) -> Result<(), tonic::Status> {
    let mut client = client(addr).await;
    let request = pb::SubscribeRequest {
        from_seq: 0,
        rate: 2000.0,
        payload_bytes: 1024,
        count: 0,
        topic: "laggard".to_owned(),
    };
    let _stream = client
        .watch(as_monitor(request, "laggard"))
        .await?
        .into_inner();
    tokio::time::sleep(hold).await;
    Ok(())
}
