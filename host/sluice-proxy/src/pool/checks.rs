//! Active health checks: the pool dials each endpoint on a connection of its own, asks
//! `grpc.health.v1` whether it serves, and lets the answers move the endpoint's breaker.
//!
//! The checks live in the pool because they drive what the pool owns (the endpoint's connector
//! and breaker); what a check sends and how results add up to a verdict is `health`'s. The
//! check connection is never offered to streams and counts against no cap.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Endpoint;
use crate::health::check;

/// Checks `endpoint` every `health.interval` until `stop` flips, over a dedicated connection
/// that is reopened whenever it fails.
pub(super) async fn run_active_checks(
    endpoint: Arc<Endpoint>,
    connect_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let config = endpoint.health.config().clone();
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<h2::client::SendRequest<bytes::Bytes>> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let send_request = match connection.clone() {
            Some(send_request) => Ok(send_request),
            None => match endpoint.connector().connect(connect_timeout).await {
                Ok(opened) => {
                    tokio::spawn(opened.driver);
                    connection = Some(opened.send_request.clone());
                    Ok(opened.send_request)
                }
                Err(error) => Err(error.to_string()),
            },
        };
        let result = match send_request {
            Ok(send_request) => check::check(
                send_request,
                endpoint.check_target(),
                &config.service,
                config.timeout,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            // A fresh connection next time: the old one may be the problem.
            connection = None;
            tracing::debug!(endpoint = %endpoint.id, %error, "health check failed");
        }
        match endpoint.health.record_check(result) {
            Some(true) => {
                tracing::info!(endpoint = %endpoint.id, "health checks pass again");
                // The checks' own trip ends with them; a breaker its streams opened need not
                // sit out its open period, but probes before it closes.
                endpoint.breaker.close_tripped("health checks pass again");
                endpoint.breaker.probe_now("health checks pass again");
            }
            Some(false) => {
                tracing::warn!(endpoint = %endpoint.id, "endpoint unhealthy: health checks failing");
                // The checks saw what the breaker would only see from more failed streams: a
                // dead endpoint opens its breaker, whichever notices first.
                endpoint
                    .breaker
                    .trip_now("health checks failing (the endpoint looks down)");
            }
            None => {}
        }
    }
}
