//! `/api/v1/plugins`: list slots, upload a plugin (active or shadow), make an earlier version
//! active or the shadow again, promote, roll back, enable, clear, events.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_config::SlotKind;
use sluice_policy::{Loaded, Plugin, PluginInfo, PolicyError, Slot};

use crate::{AdminState, ApiError};

fn slot_kind(name: &str) -> Result<SlotKind, ApiError> {
    SlotKind::parse(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown slot {name:?}; slots are {}",
            SlotKind::names()
        ))
    })
}

fn millis(at: std::time::SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn info_json(info: &PluginInfo) -> Value {
    json!({
        "name": info.name,
        "version": info.version,
        "world": info.world.as_str(),
        "hash": info.hash,
        "size_bytes": info.size,
        "imports": info.imports,
        "exports": info.exports,
        "uses_wasi": info.uses_wasi,
        "cached_compile": info.cached,
        "compile_ms": info.compile_time.as_secs_f64() * 1000.0,
        "loaded_at_ms": millis(info.loaded_at),
    })
}

fn plugin_json(plugin: &Plugin) -> Value {
    let stats = &plugin.stats;
    let calls = stats.calls.load(Relaxed);
    let failures = stats.failures.load(Relaxed);
    let successes = calls.saturating_sub(failures);
    let mean_ns = stats
        .busy_ns
        .load(Relaxed)
        .checked_div(successes)
        .unwrap_or(0);
    let compared = stats.shadow_compared.load(Relaxed);
    let agreed = stats.shadow_agreed.load(Relaxed);
    json!({
        "plugin": info_json(plugin.info()),
        "label": plugin.label().as_ref(),
        "disabled": plugin.is_disabled(),
        "deadline_us": plugin.limits().deadline.as_micros() as u64,
        "memory_limit_bytes": plugin.limits().memory_bytes,
        "calls": calls,
        "failures": {
            "total": failures,
            "timeout": stats.timeouts.load(Relaxed),
            "memory": stats.memory.load(Relaxed),
            "trap": stats.traps.load(Relaxed),
            "invalid": stats.invalid.load(Relaxed),
            "consecutive": stats.consecutive_failures.load(Relaxed),
        },
        "mean_call_ns": mean_ns,
        "shadow": {
            "compared": compared,
            "agreed": agreed,
            "agreement": if compared == 0 { Value::Null } else { json!(agreed as f64 / compared as f64) },
            "dropped": stats.shadow_dropped.load(Relaxed),
        },
    })
}

/// One slot: its built-in policy, active and shadow plugins with their counters, and history.
pub(crate) fn slot_json(slot: &Slot) -> Value {
    let builtin = sluice_policy::world::info(slot.kind()).builtin;
    json!({
        "slot": slot.kind().as_str(),
        "builtin": builtin,
        "active": slot.active().map(|p| plugin_json(&p)),
        "shadow": slot.shadow().map(|p| plugin_json(&p)),
        "history": slot.history().iter().map(|p| info_json(p.info())).collect::<Vec<_>>(),
        "fallbacks": slot.fallbacks.load(Relaxed),
        "failed_calls": slot.failed_calls.load(Relaxed),
    })
}

/// `GET /api/v1/plugins`.
pub async fn list(State(state): State<AdminState>) -> Json<Value> {
    let slots: Vec<Value> = SlotKind::ALL
        .iter()
        .map(|kind| slot_json(state.policies.slot(*kind)))
        .collect();
    Json(json!({ "slots": slots, "scorer": state.policies.scorer().status() }))
}

/// `GET /api/v1/scorer`: the model behind the router's `scorer` import, its counters and why it
/// cannot answer, if it cannot.
pub async fn scorer(State(state): State<AdminState>) -> Json<Value> {
    Json(state.policies.scorer().status())
}

/// `POST /api/v1/scorer/promote`: the shadow model becomes the active one (409 when there is
/// no shadow model to promote).
pub async fn promote_scorer(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let scorer = Arc::clone(state.policies.scorer());
    let promoted = tokio::task::spawn_blocking(move || scorer.promote_shadow())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    promoted.map(Json).map_err(ApiError::conflict)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Load as the slot's shadow instead of activating it.
    #[serde(default)]
    shadow: bool,
    /// The plugin's name (default `upload`).
    name: Option<String>,
}

fn loaded_json(loaded: &Loaded) -> Value {
    json!({
        "slot": loaded.slot.as_str(),
        "shadow": loaded.shadow,
        "plugin": info_json(&loaded.info),
        "self_test_samples": loaded.self_tested,
        "took_ms": loaded.took.as_secs_f64() * 1000.0,
    })
}

fn refusal(error: PolicyError) -> ApiError {
    match error {
        PolicyError::Action(message) => ApiError::conflict(message),
        PolicyError::Busy(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
        PolicyError::Engine(message) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("engine: {message}"),
        ),
        other => ApiError::unprocessable(format!("plugin refused: {other}")),
    }
}

/// The media type of an upload: a WebAssembly component.
const WASM: &str = "application/wasm";

/// Refuses an upload not declared as [`WASM`]: a browser can send a cross-site form or a plain
/// `text/plain` POST without asking first, never an `application/wasm` one.
fn require_wasm(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim());
    match declared {
        Some(media) if media.eq_ignore_ascii_case(WASM) => Ok(()),
        Some(media) => Err(ApiError::unsupported_media_type(format!(
            "uploads must be sent as Content-Type: {WASM}, not {media:?}"
        ))),
        None => Err(ApiError::unsupported_media_type(format!(
            "uploads must be sent as Content-Type: {WASM}"
        ))),
    }
}

/// `POST /api/v1/plugins/{slot}?shadow=&name=` with the component as the body
/// (`Content-Type: application/wasm`).
pub async fn upload(
    State(state): State<AdminState>,
    Path(slot): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = slot_kind(&slot)?;
    // Checked before the body is read: a refused upload is not buffered.
    require_wasm(request.headers())?;
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty body; send the .wasm component as the request body",
        ));
    }
    let name = query.name.unwrap_or_else(|| "upload".to_owned());
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1-128 printable characters",
        ));
    }
    let policies = std::sync::Arc::clone(&state.policies);
    // Compiling can take seconds (interpreters embedded in Python or JavaScript plugins).
    let loaded =
        tokio::task::spawn_blocking(move || policies.load(&body, &name, Some(kind), query.shadow))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("load task failed: {e}"),
                )
            })?
            .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(loaded_json(&loaded))))
}

/// `POST /api/v1/plugins/{slot}/{promote|rollback|enable|clear}`.
pub async fn act(
    State(state): State<AdminState>,
    Path((slot, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = slot_kind(&slot)?;
    let policies = &state.policies;
    let info = match action.as_str() {
        "promote" => policies.promote(kind).map_err(refusal)?,
        "rollback" => policies.rollback(kind).map_err(refusal)?,
        "enable" => policies.enable(kind).map_err(refusal)?,
        "clear" => {
            policies.clear(kind);
            return Ok(Json(slot_json(policies.slot(kind))));
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action {other:?}; actions are promote, rollback, enable and clear"
            )));
        }
    };
    Ok(Json(
        json!({ "slot": kind.as_str(), "active": info_json(&info) }),
    ))
}

/// Body of `activate` and `shadow`: which earlier version.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    /// The content hash of a version in the slot's history.
    hash: String,
}

type JsonBody<T> = Result<Json<T>, JsonRejection>;

/// `POST /api/v1/plugins/{slot}/activate` with `{"hash": "..."}`: an earlier version of the
/// slot (from `history` in `GET /api/v1/plugins`) becomes the active plugin again.
pub async fn activate(
    State(state): State<AdminState>,
    Path(slot): Path<String>,
    body: JsonBody<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    restore(&state, &slot, body, false)
}

/// `POST /api/v1/plugins/{slot}/shadow` with `{"hash": "..."}`: an earlier version becomes
/// the slot's shadow.
pub async fn shadow(
    State(state): State<AdminState>,
    Path(slot): Path<String>,
    body: JsonBody<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    restore(&state, &slot, body, true)
}

fn restore(
    state: &AdminState,
    slot: &str,
    body: JsonBody<VersionBody>,
    shadow: bool,
) -> Result<Json<Value>, ApiError> {
    let kind = slot_kind(slot)?;
    let Json(body) = body.map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(e.status(), e.body_text()),
        // Syntax and shape errors alike: the request was malformed.
        _ => ApiError::bad_request(e.body_text()),
    })?;
    let info = state
        .policies
        .restore(kind, &body.hash, shadow)
        .map_err(refusal)?;
    let role = if shadow { "shadow" } else { "active" };
    Ok(Json(
        json!({ "slot": kind.as_str(), role: info_json(&info) }),
    ))
}

/// Query of the event routes: `?since=N` gives the events with a larger sequence number.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub(crate) since: u64,
}

/// `GET /api/v1/plugins/events?since=N`.
pub async fn events(
    State(state): State<AdminState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let events: Vec<Value> = state
        .policies
        .events()
        .since(query.since)
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at_ms": millis(e.at),
                "slot": e.slot.as_str(),
                "kind": e.kind.as_str(),
                "plugin": e.plugin,
                "message": e.message,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events })))
}
