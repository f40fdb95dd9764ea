//! `/api/v1/groups`, `/api/v1/scaling`, `/api/v1/insights`, `/api/v1/predictions`,
//! `/api/v1/metrics`, `/api/v1/decisions`, `/api/v1/alerts` and `/api/v1/reports`: what the scaler and the
//! analytics loop found, and the history behind it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_analytics::Analytics;
use sluice_analytics::records::{DecisionSample, ReportPeriod, unix_ms_now};
use sluice_analytics::store::{Store, StoreError};

use crate::{AdminState, ApiError};

/// Most rows one request returns.
const MAX_LIMIT: usize = 1000;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn engine(state: &AdminState) -> Result<&Arc<Analytics>, ApiError> {
    state.analytics.as_ref().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the analytics engine is not running in this process",
        )
    })
}

fn store_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("history store: {error}"),
    )
}

/// `?limit=&since=` (since: Unix ms).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
    since: Option<i64>,
    monitor: Option<String>,
    /// Only the decisions that placed this call (`GET /api/v1/decisions`).
    stream: Option<u64>,
}

fn default_limit() -> usize {
    100
}

/// `GET /api/v1/groups`: every group's size, target and load.
pub async fn groups(State(state): State<AdminState>) -> Json<Value> {
    let period = state
        .analytics
        .as_ref()
        .map_or(Duration::from_secs(10), |a| a.config().scaling.period);
    Json(json!({
        "global_cap": state.proxy.global_cap(),
        "groups": state.proxy.group_loads(period),
    }))
}

/// Runs a store query off the async runtime.
async fn query<T: Send + 'static>(
    engine: &Analytics,
    read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(engine.store());
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(store_error)?
        .map_err(store_error)
}

/// `GET /api/v1/scaling?limit=&since=`: scaling decisions, newest first (from the store when
/// `since` is given), and the scaler policy's latest plan.
pub async fn scaling(
    State(state): State<AdminState>,
    query_string: QueryResult<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let Query(list) = query_string.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let engine = engine(&state)?;
    let limit = list.limit.min(MAX_LIMIT);
    let records = match list.since {
        Some(since) => query(engine, move |store| store.scaling(since, limit)).await?,
        None => engine.scaling(limit),
    };
    Ok(Json(
        json!({ "scaling": records, "last_plan": engine.last_plan() }),
    ))
}

/// `GET /api/v1/insights?limit=&since=`: insights, newest first (from the store when `since`
/// is given).
pub async fn insights(
    State(state): State<AdminState>,
    query_string: QueryResult<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let Query(list) = query_string.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let engine = engine(&state)?;
    let limit = list.limit.min(MAX_LIMIT);
    let insights = match list.since {
        Some(since) => query(engine, move |store| store.insights(since, limit)).await?,
        None => engine.insights(limit),
    };
    Ok(Json(json!({ "insights": insights })))
}

/// `GET /api/v1/alerts`: alerts pending or firing, and webhook delivery counters.
pub async fn alerts(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let engine = engine(&state)?;
    Ok(Json(json!({
        "alerts": engine.alerts(),
        "notifications": engine.notifier_stats(),
    })))
}

/// `GET /api/v1/predictions`: the latest forecast of connections needed (null before there
/// is enough history).
pub async fn predictions(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let engine = engine(&state)?;
    Ok(Json(json!({ "prediction": engine.prediction() })))
}

/// `?resolution=second|minute&since=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    #[serde(default)]
    resolution: Resolution,
    since: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Resolution {
    #[default]
    Second,
    Minute,
}

/// `GET /api/v1/metrics`: the metric names with history.
pub async fn metric_names(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let engine = engine(&state)?;
    Ok(Json(json!({ "metrics": engine.history().metrics() })))
}

/// `GET /api/v1/metrics/{name}?resolution=&since=`: one metric's 1 s samples (last 10 min) or
/// minute means (last 24 h).
pub async fn metric(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: QueryResult<SeriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let engine = engine(&state)?;
    let history = engine.history();
    let points = match query.resolution {
        Resolution::Second => history.seconds(&name, query.since.unwrap_or(0)),
        Resolution::Minute => history.minutes(&name, query.since.unwrap_or(0)),
    };
    if points.is_empty() && !history.metrics().contains(&name) {
        return Err(ApiError::not_found(format!(
            "no metric {name:?} (GET /api/v1/metrics lists them)"
        )));
    }
    Ok(Json(json!({ "metric": name, "points": points })))
}

/// `GET /api/v1/decisions?monitor=&limit=&since=`: routing decisions with their reasons, newest
/// first - the router's own history (the last 256, or the last 32 of one monitor), or with
/// `since` the samples kept in the store.
pub async fn decisions(
    State(state): State<AdminState>,
    query_string: QueryResult<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let Query(list) = query_string.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = list.limit.min(MAX_LIMIT);
    // A call's decisions are kept in memory only (the stored samples do not name calls).
    let since = list.since.filter(|_| list.stream.is_none());
    let Some(since) = since else {
        let router = state.policies.router();
        // Searching for a call looks through every decision kept, then keeps `limit`.
        let searched = if list.stream.is_some() {
            usize::MAX
        } else {
            limit
        };
        let kept = match list.monitor.as_deref() {
            Some(monitor) => router.recent_for(monitor, searched),
            None => router.recent(searched),
        };
        let decisions: Vec<DecisionSample> = kept
            .into_iter()
            .rev()
            .filter(|d| list.stream.is_none_or(|stream| d.stream == stream))
            .take(limit)
            .map(DecisionSample::from)
            .collect();
        return Ok(Json(json!({ "decisions": decisions })));
    };
    let engine = engine(&state)?;
    let decisions = query(engine, move |store| {
        store.decisions(list.monitor.as_deref(), since, limit)
    })
    .await?;
    Ok(Json(json!({ "decisions": decisions })))
}

/// `GET /api/v1/reports`: the stored reports, newest first.
pub async fn reports(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let engine = engine(&state)?;
    let stored = query(engine, |store| store.reports(None, 100)).await?;
    let stored: Vec<Value> = stored
        .into_iter()
        .map(|(id, period, start_ms, end_ms, generated_ms)| {
            json!({
                "id": id,
                "period": period,
                "start_ms": start_ms,
                "end_ms": end_ms,
                "generated_ms": generated_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "reports": stored, "now_ms": unix_ms_now() })))
}

/// `?format=json|html`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    #[serde(default)]
    format: Format,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Format {
    #[default]
    Json,
    Html,
}

/// `GET /api/v1/reports/{hourly|daily|weekly}?format=json|html`: a report of the period
/// ending now.
pub async fn report(
    State(state): State<AdminState>,
    Path(period): Path<String>,
    query: QueryResult<ReportQuery>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let period = ReportPeriod::parse(&period).ok_or_else(|| {
        ApiError::not_found(format!(
            "no report period {period:?}; periods are hourly, daily, weekly"
        ))
    })?;
    let engine = engine(&state)?;
    let report = engine.report(period).await.map_err(store_error)?;
    Ok(match query.format {
        Format::Json => Json(report).into_response(),
        Format::Html => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            report.to_html(),
        )
            .into_response(),
    })
}
