//! The demo's simulated endpoints: in-process feed servers that the admin API can stop (as if
//! the upstream process died: connections drop, the port refuses) and start again on the same
//! port, to watch health checks, breakers and failover react.
//!
//! Routes, behind the admin token like the rest of the API:
//! - `GET /api/v1/demo/endpoints`
//! - `POST /api/v1/demo/endpoints/{id}/stop`
//! - `POST /api/v1/demo/endpoints/{id}/start`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_admin::ApiError;
use sluice_feed::FeedHandle;
use tokio::sync::Mutex;

/// One simulated endpoint.
struct Simulated {
    name: String,
    addr: SocketAddr,
    latency: Duration,
    /// `None` while stopped.
    server: Option<FeedHandle>,
}

/// The demo's endpoints.
#[derive(Clone)]
pub struct SimulatedEndpoints {
    endpoints: Arc<Mutex<Vec<Simulated>>>,
}

impl SimulatedEndpoints {
    /// Starts one feed server per `(name, latency)` on a free loopback port.
    pub async fn start(specs: &[(&str, Duration)]) -> anyhow::Result<Self> {
        let mut endpoints = Vec::new();
        for (name, latency) in specs {
            let server = serve(name, ([127, 0, 0, 1], 0).into(), *latency)
                .await
                .with_context(|| format!("starting simulated endpoint {name}"))?;
            endpoints.push(Simulated {
                name: (*name).to_owned(),
                addr: server.addr,
                latency: *latency,
                server: Some(server),
            });
        }
        Ok(Self {
            endpoints: Arc::new(Mutex::new(endpoints)),
        })
    }

    /// Name and address of every endpoint.
    pub async fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.endpoints
            .lock()
            .await
            .iter()
            .map(|e| (e.name.clone(), e.addr))
            .collect()
    }

    /// The admin routes that stop and start them.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/api/v1/demo/endpoints", get(list))
            .route("/api/v1/demo/endpoints/{id}/{action}", post(act))
            .with_state(self.clone())
    }

    /// Stops every endpoint.
    pub async fn stop_all(&self) {
        for endpoint in self.endpoints.lock().await.iter_mut() {
            if let Some(server) = endpoint.server.take() {
                server.abort();
            }
        }
    }
}

async fn serve(name: &str, addr: SocketAddr, latency: Duration) -> anyhow::Result<FeedHandle> {
    let config = sluice_feed::FeedConfig {
        latency,
        name: name.to_owned(),
        ..Default::default()
    };
    Ok(sluice_feed::spawn(addr, config, None).await?)
}

fn describe(endpoint: &Simulated) -> Value {
    json!({
        "endpoint": endpoint.name,
        "addr": endpoint.addr.to_string(),
        "latency_ms": endpoint.latency.as_secs_f64() * 1e3,
        "running": endpoint.server.is_some(),
    })
}

async fn list(State(endpoints): State<SimulatedEndpoints>) -> Json<Value> {
    let endpoints = endpoints.endpoints.lock().await;
    Json(json!({ "endpoints": endpoints.iter().map(describe).collect::<Vec<_>>() }))
}

async fn act(
    State(endpoints): State<SimulatedEndpoints>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut endpoints = endpoints.endpoints.lock().await;
    let endpoint = endpoints
        .iter_mut()
        .find(|e| e.name == id)
        .ok_or_else(|| ApiError::not_found(format!("no simulated endpoint {id:?}")))?;
    match action.as_str() {
        "stop" => {
            if let Some(server) = endpoint.server.take() {
                server.abort();
                tracing::warn!(endpoint = %endpoint.name, "demo: simulated endpoint stopped");
            }
        }
        "start" => {
            if endpoint.server.is_none() {
                let server = serve(&endpoint.name, endpoint.addr, endpoint.latency)
                    .await
                    .map_err(|error| {
                        ApiError::conflict(format!("cannot start {id} again: {error:#}"))
                    })?;
                endpoint.server = Some(server);
                tracing::info!(endpoint = %endpoint.name, "demo: simulated endpoint started");
            }
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action {other:?}; actions are stop and start"
            )));
        }
    }
    Ok(Json(describe(endpoint)))
}
