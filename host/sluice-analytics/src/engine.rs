//! The running analytics engine: opens the store, restores the history, and runs the sampler
//! (1 s), the scaler and analytics loops (their periods) and housekeeping (every minute: reports
//! of the hours, days and weeks that ended, and retention) until stopped.
//!
//! It owns the loops' schedule and their shared state; the judgement lives in `scaling` and
//! `insights`, the numbers in `history` and `store`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_config::Config;
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_policy::Policies;
use sluice_proxy::ProxyView;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alerts::{ActiveAlert, Alerter, Conditions, Notifier, NotifierStats};
use crate::history::History;
use crate::insights::{Analyst, Prediction};
use crate::records::{
    DecisionSample, Insight, OutcomeRecord, ReportPeriod, ScalingRecord, unix_ms, unix_ms_now,
};
use crate::report::Report;
use crate::sampler::Sampler;
use crate::scaling::Scaler;
use crate::store::{Store, StoreError};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// The store could not be opened.
    #[error("history store {path}: {source}")]
    Store {
        /// The configured path.
        path: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
    /// Reading or writing the store failed.
    #[error("history store: {0}")]
    Query(#[from] StoreError),
    /// A background task of the engine panicked.
    #[error("analytics task failed: {0}")]
    Task(String),
}

/// How often finished routing outcomes are stored.
const LEARN_EVERY: Duration = Duration::from_secs(2);
/// How often housekeeping looks for finished report periods and old rows.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// Samples between writes of the minute so far (a killed process loses at most these seconds).
pub const PARTIAL_EVERY: u64 = 10;
/// Routing decisions sampled into the store per analytics run, at most (about 35 000 rows a
/// day at the default period: a sample of what the router did, not a log of every stream).
const DECISION_SAMPLES: usize = 2;

/// The analytics engine of one process.
pub struct Analytics {
    config: Arc<Config>,
    proxy: ProxyView,
    policies: Arc<Policies>,
    store: Arc<Store>,
    history: Arc<History>,
    sampler: Arc<Sampler>,
    scaler: Arc<Scaler>,
    analyst: Arc<Analyst>,
    /// The newest routing decision already sampled (Unix ms).
    sampled_until: Mutex<i64>,
    samples: AtomicU64,
    alerter: Mutex<Alerter>,
    notifier: Mutex<Option<Notifier>>,
}

/// The engine's loops, running until [`AnalyticsHandle::shutdown`].
pub struct AnalyticsHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    analytics: Arc<Analytics>,
}

impl AnalyticsHandle {
    /// Stops every loop and waits for them, then gives queued alert notifications a moment.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let notifier = self.analytics.notifier.lock().take();
        if let Some(notifier) = notifier {
            notifier.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Analytics {
    /// Opens the store in `config.store` and restores the last 24 hours of minute history.
    pub fn open(
        config: Arc<Config>,
        proxy: ProxyView,
        policies: Arc<Policies>,
    ) -> Result<Arc<Self>, AnalyticsError> {
        let store = Store::open(&config.store.path, config.store.retention).map_err(|source| {
            AnalyticsError::Store {
                path: config.store.path.clone(),
                source,
            }
        })?;
        let store = Arc::new(store);
        let history = Arc::new(History::default());
        let now = unix_ms_now();
        match store.rollups_since(now - 24 * 3_600_000) {
            Ok(rollups) => history.restore(&rollups),
            Err(error) => tracing::warn!(%error, "could not restore the minute history"),
        }
        // Scalers that plan ahead read the group's history from the store.
        let load_history = Arc::new(crate::series::StoredHistory::new(Arc::clone(&store)));
        policies.set_history(Arc::clone(&load_history) as Arc<dyn sluice_policy::LoadHistory>);
        let sampler = Sampler::new(proxy.clone());
        let scaler = Arc::new(Scaler::new(
            config.scaling.clone(),
            proxy.clone(),
            Arc::clone(&policies),
            Arc::clone(&history),
            Arc::clone(&store),
            load_history,
        ));
        let analyst = Arc::new(Analyst::new(
            config.analytics.clone(),
            proxy.clone(),
            Arc::clone(&policies),
            Arc::clone(&history),
            Arc::clone(&store),
        ));
        let alerter = Mutex::new(Alerter::new(&config.alerts));
        Ok(Arc::new(Self {
            config,
            proxy,
            policies,
            store,
            history,
            sampler,
            scaler,
            analyst,
            sampled_until: Mutex::new(now),
            samples: AtomicU64::new(0),
            alerter,
            notifier: Mutex::new(None),
        }))
    }

    /// Starts the loops (and the alert notifier, which needs the runtime).
    pub fn spawn(self: &Arc<Self>) -> AnalyticsHandle {
        if self.config.alerts.enabled {
            *self.notifier.lock() = Some(Notifier::spawn(&self.config.alerts));
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let every = |period: Duration, this: Arc<Self>, stop: watch::Receiver<bool>, job: Job| async move {
            let mut stop = stop;
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                match job {
                    Job::Sample => this.sample_once().await,
                    Job::Scale => {
                        this.scaler.run_once().await;
                    }
                    Job::Analyze => {
                        this.analyze_once().await;
                    }
                    Job::Learn => {
                        this.learn_once().await;
                    }
                    Job::Housekeeping => this.housekeeping().await,
                }
            }
        };
        tasks.spawn(every(
            Duration::from_secs(1),
            Arc::clone(self),
            stop.subscribe(),
            Job::Sample,
        ));
        if self.config.scaling.enabled {
            tasks.spawn(every(
                self.config.scaling.period,
                Arc::clone(self),
                stop.subscribe(),
                Job::Scale,
            ));
        }
        if self.config.analytics.enabled {
            tasks.spawn(every(
                self.config.analytics.period,
                Arc::clone(self),
                stop.subscribe(),
                Job::Analyze,
            ));
        }
        if self.config.learning.enabled {
            tasks.spawn(every(
                LEARN_EVERY,
                Arc::clone(self),
                stop.subscribe(),
                Job::Learn,
            ));
        }
        tasks.spawn(every(
            HOUSEKEEPING,
            Arc::clone(self),
            stop.subscribe(),
            Job::Housekeeping,
        ));
        AnalyticsHandle {
            stop,
            tasks,
            analytics: Arc::clone(self),
        }
    }

    /// Takes one sample of every metric; persists the minute that ended, if any, and every
    /// [`PARTIAL_EVERY`] samples the minute so far.
    pub async fn sample_once(&self) {
        let samples = self.sampler.sample();
        let mut rollups = self.history.record(unix_ms_now(), &samples);
        let count = self.samples.fetch_add(1, Relaxed) + 1;
        if count.is_multiple_of(PARTIAL_EVERY) {
            rollups.extend(self.history.current_rollups());
        }
        if !rollups.is_empty() {
            let store = Arc::clone(&self.store);
            let written = tokio::task::spawn_blocking(move || store.write_rollups(&rollups)).await;
            if let Ok(Err(error)) = written {
                tracing::warn!(%error, "could not store the minute's rollups");
            }
        }
    }

    /// One scaler run (the loop calls this every `scaling.period`).
    pub async fn scale_once(&self) -> Vec<ScalingRecord> {
        self.scaler.run_once().await
    }

    /// One analytics run (the loop calls this every `analytics.period`): insights, alerts and
    /// decision samples.
    pub async fn analyze_once(&self) -> Vec<Insight> {
        let insights = self.analyst.run_once().await;
        self.sample_decisions().await;
        self.check_alerts();
        insights
    }

    /// Evaluates the alert rules on the pool as it is now and sends what fires or resolves.
    fn check_alerts(&self) {
        if !self.config.alerts.enabled {
            return;
        }
        let now_ms = unix_ms_now();
        let mut alerter = self.alerter.lock();
        let rules = alerter.rules();
        let mut observations: Vec<_> = self
            .proxy
            .breakers()
            .iter()
            .map(|b| {
                let open = matches!(b.state, BreakerState::Open | BreakerState::ForcedOpen);
                rules.breaker(b.scope, &b.name, open)
            })
            .collect();
        for e in self.proxy.endpoints() {
            let misconfigured = e.health.standing.misconfigured.as_deref();
            // A misconfigured endpoint is unhealthy too; its own rule says why, once.
            let unhealthy = e.health.health == Health::Unhealthy && misconfigured.is_none();
            observations.push(rules.endpoint(
                &e.id,
                unhealthy,
                e.health.reason.as_deref().unwrap_or("healthy"),
            ));
            observations.push(rules.endpoint_misconfigured(&e.id, misconfigured));
        }
        let period_ms = i64::try_from(self.config.analytics.period.as_millis()).unwrap_or(i64::MAX);
        let confidences: Vec<f64> = self
            .policies
            .router()
            .recent(256)
            .iter()
            .filter(|d| unix_ms(d.at) >= now_ms - period_ms)
            .map(|d| f64::from(d.confidence))
            .collect();
        let mean = (!confidences.is_empty())
            .then(|| confidences.iter().sum::<f64>() / confidences.len() as f64);
        observations.push(rules.router_confidence(mean));
        if let (Some(needed), Some(held)) = (
            self.history.latest(crate::sampler::CONNECTIONS_NEEDED),
            self.history.latest(crate::sampler::CONNECTIONS),
        ) {
            observations.push(rules.efficiency(needed, held));
        }
        let notifications = alerter.evaluate(&Conditions {
            now_ms,
            observations,
        });
        drop(alerter);
        if let Some(notifier) = self.notifier.lock().as_ref() {
            for notification in notifications {
                notifier.notify(notification);
            }
        }
    }

    /// Alerts pending or firing now.
    pub fn alerts(&self) -> Vec<ActiveAlert> {
        self.alerter.lock().active()
    }

    /// Webhook delivery counters (zero before the loops start).
    pub fn notifier_stats(&self) -> NotifierStats {
        self.notifier
            .lock()
            .as_ref()
            .map(Notifier::stats)
            .unwrap_or_default()
    }

    async fn sample_decisions(&self) {
        let since = *self.sampled_until.lock();
        let fresh: Vec<DecisionSample> = self
            .policies
            .router()
            .recent(256)
            .into_iter()
            .map(DecisionSample::from)
            .filter(|d| d.ts_ms > since)
            .collect();
        let Some(newest) = fresh.iter().map(|d| d.ts_ms).max() else {
            return;
        };
        *self.sampled_until.lock() = newest;
        // An even spread over the period's decisions, newest included.
        let step = fresh.len().div_ceil(DECISION_SAMPLES).max(1);
        let samples: Vec<DecisionSample> = fresh.into_iter().rev().step_by(step).collect();
        let store = Arc::clone(&self.store);
        let written = tokio::task::spawn_blocking(move || store.insert_decisions(&samples)).await;
        if let Ok(Err(error)) = written {
            tracing::warn!(%error, "could not store decision samples");
        }
    }

    /// Stores the routing outcomes the pool has finished watching, each compared with the
    /// scorer's shadow model when one runs (the learning loop's data). Returns how many.
    pub async fn learn_once(&self) -> usize {
        let outcomes = self.proxy.drain_outcomes();
        if outcomes.is_empty() {
            return 0;
        }
        let scorer = Arc::clone(self.policies.scorer());
        let store = Arc::clone(&self.store);
        let written = tokio::task::spawn_blocking(move || {
            let records: Vec<OutcomeRecord> = outcomes
                .iter()
                .map(|outcome| {
                    let mut record = OutcomeRecord::from_outcome(outcome);
                    if let Some(judged) =
                        scorer.compare_shadow(&outcome.batch, outcome.chosen, record.quality)
                    {
                        record.shadow_predicted = Some(f64::from(judged.predicted));
                        record.shadow_agreed = Some(judged.agreed);
                    }
                    record
                })
                .collect();
            store.insert_outcomes(&records).map(|()| records.len())
        })
        .await;
        match written {
            Ok(Ok(count)) => count,
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not store routing outcomes");
                0
            }
            Err(error) => {
                tracing::warn!(%error, "routing outcome task failed");
                0
            }
        }
    }

    async fn housekeeping(&self) {
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || {
            let now = unix_ms_now();
            store.prune(now)?;
            for period in ReportPeriod::ALL {
                let length = period.length_ms();
                // Reports cover whole periods that ended at a boundary (UTC hours, days, weeks).
                let end = now - now.rem_euclid(length);
                let due = match store.latest_report(period)? {
                    Some((_, generated, body)) => {
                        let covered = body.get("end_ms").and_then(serde_json::Value::as_i64);
                        covered.unwrap_or(generated) < end
                    }
                    None => true,
                };
                if due {
                    let report = Report::build(&store, period, end)?;
                    if report.summary.minutes_with_data == 0 {
                        continue;
                    }
                    let body = serde_json::to_value(&report).unwrap_or_default();
                    store.insert_report(period, end - length, end, now, &body)?;
                    tracing::info!(period = period.as_str(), "report written");
                }
            }
            Ok::<_, StoreError>(())
        })
        .await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "housekeeping failed");
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metric history.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// Recent insights, newest first.
    pub fn insights(&self, limit: usize) -> Vec<Insight> {
        self.analyst.recent(limit)
    }

    /// Recent scaling records, newest first.
    pub fn scaling(&self, limit: usize) -> Vec<ScalingRecord> {
        self.scaler.recent(limit)
    }

    /// The scaler policy's latest plan.
    pub fn last_plan(&self) -> Option<crate::scaling::LastPlan> {
        self.scaler.last_plan()
    }

    /// The latest forecast of connections needed.
    pub fn prediction(&self) -> Option<Prediction> {
        self.analyst.prediction()
    }

    /// A report of the period ending now, built from the store.
    pub async fn report(&self, period: ReportPeriod) -> Result<Report, AnalyticsError> {
        let store = Arc::clone(&self.store);
        let built =
            tokio::task::spawn_blocking(move || Report::build(&store, period, unix_ms_now()))
                .await
                .map_err(|error| AnalyticsError::Task(error.to_string()))?;
        Ok(built?)
    }
}

#[derive(Clone, Copy)]
enum Job {
    Sample,
    Scale,
    Analyze,
    Learn,
    Housekeeping,
}
