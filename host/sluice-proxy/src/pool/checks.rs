//! Active health checks: the pool dials each endpoint on a connection of its own, asks
//! `grpc.health.v1` whether it serves, and lets the answers move the endpoint's breaker.
//!
//! The checks live in the pool because they drive what the pool owns (the endpoint's connector
//! and breaker); what a check sends and how results add up to a verdict is `health`'s. The
//! check connection is never offered to streams; it counts against its endpoint's
//! `max_connections` (which keeps one connection for it) and `connections_per_second`.

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
    let mut connection: Option<CheckLink> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let send_request = match &connection {
            Some(open) => Ok(open.send_request.clone()),
            None => {
                let counted = endpoint.limits.open_check_connection().await;
                match endpoint.connector().connect(connect_timeout).await {
                    Ok(opened) => {
                        let send_request = opened.send_request.clone();
                        connection = Some(CheckLink {
                            send_request: opened.send_request,
                            // The count goes with the driver: the connection is gone when it
                            // ends, not when the check lets go of its handle.
                            driver: tokio::spawn(async move {
                                let _counted = counted;
                                let _ = opened.driver.await;
                            }),
                        });
                        Ok(send_request)
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
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
        if result.is_ok() {
            endpoint.breaker.check_passed();
        }
        if let Err(error) = &result {
            // A fresh connection next time: the old one may be the problem. It is closed
            // before then, so the check never holds two.
            if let Some(old) = connection.take() {
                old.close().await;
            }
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

/// The check's own connection: its request handle and the task driving it (which holds the
/// connection's count against the endpoint's caps).
struct CheckLink {
    send_request: h2::client::SendRequest<bytes::Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl CheckLink {
    /// Closes the connection and waits until it no longer counts.
    async fn close(mut self) {
        self.driver.abort();
        let _ = (&mut self.driver).await;
    }
}

impl Drop for CheckLink {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
