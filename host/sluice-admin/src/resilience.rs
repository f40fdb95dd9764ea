//! `/api/v1/endpoints` and `/api/v1/breakers`: endpoint health, circuit breakers and their
//! events, and the operator actions on them (force a breaker open, disable it, release it;
//! drain an endpoint, re-enable one its provider's answers took out).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use sluice_config::BreakerScope;
use sluice_proxy::breaker::Override;

use crate::plugins::EventsQuery;
use crate::{AdminState, ApiError};

/// `GET /api/v1/endpoints`
pub async fn endpoints(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "endpoints": state.proxy.endpoints() }))
}

/// `POST /api/v1/endpoints/{id}/drain`
pub async fn drain(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let drained = state
        .proxy
        .drain_endpoint(&id)
        .ok_or_else(|| ApiError::not_found(format!("no endpoint {id:?}")))?;
    Ok(Json(
        json!({ "endpoint": id, "draining_connections": drained }),
    ))
}

/// `POST /api/v1/endpoints/{id}/enable`: clears what the provider's answers marked on the
/// endpoint (misconfigured, quota pushback), so that it takes new streams again.
pub async fn enable(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cleared = state
        .proxy
        .enable_endpoint(&id)
        .ok_or_else(|| ApiError::not_found(format!("no endpoint {id:?}")))?;
    Ok(Json(json!({ "endpoint": id, "cleared": cleared })))
}

/// `GET /api/v1/breakers`
pub async fn breakers(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "breakers": state.proxy.breakers() }))
}

/// `GET /api/v1/breakers/events?since=N`
pub async fn events(
    State(state): State<AdminState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(
        json!({ "events": state.proxy.breaker_events(query.since) }),
    ))
}

/// `POST /api/v1/breakers/{scope}/{name}/{action}` with action `force-open`, `disable` or
/// `release`.
pub async fn act(
    State(state): State<AdminState>,
    Path((scope, name, action)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let scope: BreakerScope = scope
        .parse()
        .map_err(|e: sluice_config::UnknownBreakerScope| ApiError::not_found(e.to_string()))?;
    let value = match action.as_str() {
        "force-open" => Some(Override::ForceOpen),
        "disable" => Some(Override::Disable),
        "release" => None,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown breaker action {other:?}; actions are force-open, disable, release"
            )));
        }
    };
    let breaker = state
        .proxy
        .override_breaker(scope, &name, value)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no {scope} breaker named {name:?} (monitor breakers exist once the monitor called)"
            ))
        })?;
    Ok(Json(json!({ "breaker": breaker })))
}
