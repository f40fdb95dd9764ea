//! `/api/v1/stats`, `/api/v1/connections` and `/api/v1/monitors`: the pool's headline numbers
//! and what it holds right now.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::{AdminState, overview};

/// `GET /api/v1/stats`: uptime, the health score and its deductions, counters, efficiency.
pub async fn stats(State(state): State<AdminState>) -> Json<overview::Overview> {
    let pool = overview::PoolRead::now(&state, std::time::Duration::ZERO);
    Json(overview::gather(&state, &pool))
}

/// `GET /api/v1/connections`: every upstream connection with its load.
pub async fn connections(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "connections": state.proxy.connections() }))
}

/// `GET /api/v1/monitors`: configured monitors and any other that called, with open calls and
/// breaker state.
pub async fn monitors(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "monitors": overview::monitors(&state) }))
}
