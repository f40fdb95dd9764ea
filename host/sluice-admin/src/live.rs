//! `GET /ws`: a WebSocket that pushes the dashboard's data about once a second.
//!
//! One task builds a frame per second and publishes it on a `watch` channel, so the cost does
//! not grow with the number of viewers; it builds nothing while nobody is connected. A new
//! viewer gets a fresh frame at once, then every published one. A viewer that reads slower
//! than a frame a second simply skips frames (the channel keeps only the newest).
//!
//! Every frame is one JSON text message, `{"type": "tick", ...}`; the fields are documented in
//! the OpenAPI document (`/api/v1/openapi.json`, schema `LiveFrame`). This module reads state
//! and formats it; it never changes anything.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{Value, json};
use sluice_analytics::records::{DecisionSample, unix_ms_now};
use sluice_analytics::sampler::group_metric;
use sluice_config::{SlotKind, TrafficClass};
use tokio::sync::watch;

use crate::{AdminState, overview, plugins};

/// The subprotocol the dashboard asks for. A browser cannot set an `Authorization` header on a
/// WebSocket, so it offers the token as a second subprotocol, `bearer.<token as hex>`.
pub const PROTOCOL: &str = "sluice.v1";

/// How often a frame is published.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Heatmap columns and their width: the last 10 minutes in 10 s buckets.
const HEATMAP_BUCKETS: usize = 60;
const HEATMAP_BUCKET_MS: i64 = 10_000;

/// Recent items each frame carries.
const RECENT: usize = 20;

/// The publishing side of the frames.
#[derive(Clone)]
pub struct LiveFeed {
    frames: watch::Sender<Utf8Bytes>,
}

impl LiveFeed {
    /// A feed with no frame yet.
    pub fn new() -> Self {
        Self {
            frames: watch::Sender::new(Utf8Bytes::from_static("")),
        }
    }

    /// Publishes a frame every [`PERIOD`] while anyone listens, until `stop` turns true.
    pub async fn run(self, state: AdminState, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.frames.receiver_count() == 0 {
                continue;
            }
            self.frames
                .send_replace(Utf8Bytes::from(frame(&state).to_string()));
        }
    }
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /ws` (WebSocket upgrade).
pub async fn upgrade(State(state): State<AdminState>, ws: WebSocketUpgrade) -> Response {
    let mut frames = state.live.frames.subscribe();
    frames.mark_unchanged();
    let first = Utf8Bytes::from(frame(&state).to_string());
    // The socket's task holds only the receiver: when the server stops, the senders go and the
    // socket closes.
    ws.protocols([PROTOCOL])
        .on_upgrade(move |socket| serve(socket, first, frames))
}

async fn serve(mut socket: WebSocket, first: Utf8Bytes, mut frames: watch::Receiver<Utf8Bytes>) {
    if socket.send(Message::Text(first)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() {
                    break;
                }
                let text = frames.borrow_and_update().clone();
                if socket.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Viewers send nothing but pings (answered by the library) and close frames.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// One frame: everything the dashboard shows.
pub fn frame(state: &AdminState) -> Value {
    let period = state
        .analytics
        .as_ref()
        .map_or(Duration::from_secs(10), |a| a.config().scaling.period);
    let pool = overview::PoolRead::now(state, period);
    let summary = overview::gather(state, &pool);
    let connections = state.proxy.connections();
    let endpoints = overview::endpoint_cards(&pool.endpoints, &connections);
    let decisions: Vec<DecisionSample> = state
        .policies
        .router()
        .recent(RECENT)
        .into_iter()
        .rev()
        .map(DecisionSample::from)
        .collect();
    let plugins: Vec<Value> = SlotKind::ALL
        .iter()
        .map(|kind| plugins::slot_json(state.policies.slot(*kind)))
        .collect();
    let analytics = state.analytics.as_ref().map(|engine| {
        json!({
            "insights": engine.insights(RECENT),
            "scaling": engine.scaling(RECENT),
            "prediction": engine.prediction(),
            "alerts": engine.alerts(),
            "heatmap": heatmap(engine.history()),
        })
    });
    json!({
        "type": "tick",
        "overview": summary,
        "endpoints": endpoints,
        "breakers": pool.breakers,
        "groups": pool.groups,
        "connections": connections,
        "plugins": plugins,
        "scorer": state.policies.scorer().status(),
        "decisions": decisions,
        "analytics": analytics,
    })
}

/// Connections held per group over the last 10 minutes, in 10 s buckets (each the mean of its
/// 1 s samples; `null` where there are none).
fn heatmap(history: &sluice_analytics::history::History) -> Value {
    let now = unix_ms_now();
    let end = now - now.rem_euclid(HEATMAP_BUCKET_MS) + HEATMAP_BUCKET_MS;
    let start = end - HEATMAP_BUCKET_MS * HEATMAP_BUCKETS as i64;
    let rows: Vec<Value> = TrafficClass::ALL
        .iter()
        .map(|class| {
            let mut sums = vec![(0.0f64, 0u32); HEATMAP_BUCKETS];
            for point in history.seconds(&group_metric(*class, "connections"), start) {
                let Ok(index) = usize::try_from((point.ts_ms - start) / HEATMAP_BUCKET_MS) else {
                    continue;
                };
                if let Some(bucket) = sums.get_mut(index) {
                    bucket.0 += point.value;
                    bucket.1 += 1;
                }
            }
            let values: Vec<Option<f64>> = sums
                .into_iter()
                .map(|(sum, n)| (n > 0).then(|| sum / f64::from(n)))
                .collect();
            json!({ "group": class.to_string(), "values": values })
        })
        .collect();
    json!({
        "start_ms": start,
        "bucket_ms": HEATMAP_BUCKET_MS,
        "rows": rows,
    })
}
