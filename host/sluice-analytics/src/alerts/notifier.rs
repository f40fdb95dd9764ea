//! Delivery of notifications: a log line each, and a JSON POST to every webhook from one task
//! per webhook, with retries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_config::AlertsConfig;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::http::{Target, tls_config};
use super::{AlertState, Notification};

/// Notifications waiting per webhook; beyond this the oldest is dropped.
const QUEUE_CAPACITY: usize = 1024;

/// Delivery counters, summed over all webhooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifierStats {
    /// Notifications a webhook accepted (2xx).
    pub delivered: u64,
    /// Notifications given up on: attempts exhausted or a non-retryable answer.
    pub failed: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Notifications dropped because a webhook's queue was full (or left at shutdown).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Clone)]
struct Item {
    incident_id: Arc<str>,
    body: Bytes,
}

#[derive(Debug, Default)]
struct Queue {
    items: Mutex<VecDeque<Item>>,
    wake: Notify,
    closed: AtomicBool,
}

impl Queue {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    initial: Duration,
    max: Duration,
}

impl Retry {
    /// The pause before retry number `retry` (1-based): exponential, capped, with jitter over
    /// its upper half; a `Retry-After` from the webhook is honoured up to the cap.
    fn backoff(&self, retry: u32, asked: Option<Duration>) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        let base = self.initial.saturating_mul(factor).min(self.max);
        let half = base / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let pause = half + Duration::from_nanos(fastrand::u64(0..=jitter_ns));
        match asked {
            Some(asked) => pause.max(asked.min(self.max)),
            None => pause,
        }
    }
}

/// Sends notifications to the log and to every configured webhook.
///
/// [`Notifier::notify`] never blocks: it logs the notification and pushes it into each webhook's
/// bounded queue (1024; when full the oldest is dropped). One task per webhook POSTs its queue in
/// order, retrying with exponential backoff and jitter, so a failing webhook never delays
/// another. Dropping the notifier lets the tasks finish their queues; [`Notifier::shutdown`]
/// waits for that within a grace period.
#[derive(Debug)]
pub struct Notifier {
    queues: Vec<Arc<Queue>>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Notifier {
    /// Starts one delivery task per webhook of `config` (none when alerts are disabled).
    ///
    /// Must be called within a Tokio runtime; outside one, notifications are only logged.
    /// A webhook whose URL or headers cannot be used is logged and skipped.
    pub fn spawn(config: &AlertsConfig) -> Notifier {
        let counters = Arc::new(Counters::default());
        let mut notifier = Notifier {
            queues: Vec::new(),
            tasks: Vec::new(),
            counters,
        };
        if !config.enabled || config.webhooks.is_empty() {
            return notifier;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("alert notifier started outside a Tokio runtime: webhooks disabled");
            return notifier;
        };
        let retry = Retry {
            attempts: config.retry.attempts.max(1),
            initial: config.retry.initial_backoff,
            max: config.retry.max_backoff.max(config.retry.initial_backoff),
        };
        let mut tls: Option<Arc<rustls::ClientConfig>> = None;
        for webhook in &config.webhooks {
            let target = Target::new(&webhook.url, &webhook.headers, webhook.timeout, || {
                if let Some(tls) = &tls {
                    return Ok(tls.clone());
                }
                let made = tls_config()?;
                tls = Some(made.clone());
                Ok(made)
            });
            let target = match target {
                Ok(target) => target,
                Err(error) => {
                    tracing::error!(url = %webhook.url, %error, "alert webhook skipped");
                    continue;
                }
            };
            let queue = Arc::new(Queue::default());
            let task = runtime.spawn(deliver_loop(
                target,
                queue.clone(),
                retry,
                notifier.counters.clone(),
            ));
            notifier.queues.push(queue);
            notifier.tasks.push(task);
        }
        notifier
    }

    /// Logs `notification` (warn when firing, info when resolved) and queues it for every
    /// webhook. Never blocks.
    pub fn notify(&self, notification: Notification) {
        let n = &notification;
        match n.state {
            AlertState::Firing => tracing::warn!(
                incident_id = %n.incident_id,
                rule = %n.rule,
                subject = %n.subject,
                severity = n.severity.as_str(),
                value = n.value,
                started_ms = n.started_ms,
                "alert firing: {}",
                n.summary
            ),
            _ => tracing::info!(
                incident_id = %n.incident_id,
                rule = %n.rule,
                subject = %n.subject,
                severity = n.severity.as_str(),
                value = n.value,
                started_ms = n.started_ms,
                "alert {}: {}",
                n.state.as_str(),
                n.summary
            ),
        }
        if self.queues.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(n) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(incident_id = %n.incident_id, %error, "alert not serializable");
                return;
            }
        };
        let item = Item {
            incident_id: Arc::from(n.incident_id.as_str()),
            body,
        };
        for queue in &self.queues {
            let dropped = {
                let mut items = queue.items.lock();
                items.push_back(item.clone());
                if items.len() > QUEUE_CAPACITY {
                    items.pop_front()
                } else {
                    None
                }
            };
            if let Some(old) = dropped {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    incident_id = %old.incident_id,
                    capacity = QUEUE_CAPACITY,
                    "alert webhook queue full: oldest notification dropped"
                );
            }
            queue.wake.notify_one();
        }
    }

    /// The delivery counters so far.
    pub fn stats(&self) -> NotifierStats {
        let c = &self.counters;
        NotifierStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Stops taking notifications and waits up to `grace` for the queued ones to be delivered
    /// (or given up on); what is left then is dropped and counted in `dropped`.
    pub async fn shutdown(mut self, grace: Duration) {
        for queue in &self.queues {
            queue.close();
        }
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            for abort in aborts {
                abort.abort();
            }
            let left: usize = self.queues.iter().map(|q| q.items.lock().len()).sum();
            self.counters
                .dropped
                .fetch_add(u64::try_from(left).unwrap_or(u64::MAX), Ordering::Relaxed);
            tracing::warn!(
                left,
                ?grace,
                "alert notifier shut down before every notification was delivered"
            );
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // The tasks finish what is queued and then end.
        for queue in &self.queues {
            queue.close();
        }
    }
}

async fn deliver_loop(target: Target, queue: Arc<Queue>, retry: Retry, counters: Arc<Counters>) {
    loop {
        let next = queue.items.lock().pop_front();
        match next {
            Some(item) => deliver(&target, &item, retry, &counters).await,
            None if queue.closed.load(Ordering::Acquire) => return,
            None => queue.wake.notified().await,
        }
    }
}

async fn deliver(target: &Target, item: &Item, retry: Retry, counters: &Counters) {
    let mut attempt = 1;
    loop {
        let error = match target.post(&item.incident_id, item.body.clone()).await {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    url = %target.url,
                    incident_id = %item.incident_id,
                    attempt,
                    "alert delivered"
                );
                return;
            }
            Err(error) => error,
        };
        if !error.retryable() || attempt >= retry.attempts {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                url = %target.url,
                incident_id = %item.incident_id,
                attempts = attempt,
                %error,
                "alert delivery failed; giving up"
            );
            return;
        }
        let pause = retry.backoff(attempt, error.retry_after());
        tracing::debug!(
            url = %target.url,
            incident_id = %item.incident_id,
            attempt,
            ?pause,
            %error,
            "alert delivery failed; retrying"
        );
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::BreakerScope;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let retry = Retry {
            attempts: 6,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = retry.backoff(1, None);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = retry.backoff(3, None);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let late = retry.backoff(40, None);
            assert!((500..=1000).contains(&late.as_millis()), "{late:?}");
            let asked = retry.backoff(1, Some(Duration::from_secs(30)));
            assert_eq!(asked, Duration::from_millis(1000));
        }
    }

    #[tokio::test]
    async fn without_webhooks_notify_only_logs() {
        let notifier = Notifier::spawn(&AlertsConfig::default());
        let mut alerter = super::super::Alerter::new(&AlertsConfig::default());
        let open = alerter.rules().breaker(BreakerScope::Endpoint, "a", true);
        for n in alerter.evaluate(&super::super::Conditions {
            now_ms: 1,
            observations: vec![open],
        }) {
            notifier.notify(n);
        }
        assert_eq!(notifier.stats(), NotifierStats::default());
        notifier.shutdown(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest() {
        // Accepts connections (backlog) but never answers: the first delivery hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let config: AlertsConfig = serde_json::from_value(serde_json::json!({
            "webhooks": [{ "url": url, "timeout": "30s" }],
        }))
        .unwrap();
        let notifier = Notifier::spawn(&config);
        let mut alerter = super::super::Alerter::new(&config);
        let rules = alerter.rules().clone();
        let total = QUEUE_CAPACITY + 100;
        let observations = (0..total)
            .map(|i| rules.breaker(BreakerScope::Monitor, &i.to_string(), true))
            .collect();
        let fired = alerter.evaluate(&super::super::Conditions {
            now_ms: 1,
            observations,
        });
        assert_eq!(fired.len(), total);
        for n in fired {
            notifier.notify(n);
        }
        let dropped = notifier.stats().dropped;
        assert!((99..=100).contains(&dropped), "dropped {dropped}");
        notifier.shutdown(Duration::from_millis(20)).await;
        drop(listener);
    }
}
