//! The data plane's router: the router slot's plugin when there is a usable one, the built-in
//! power-of-two-choices policy otherwise, and the shadow fed off the data path.
//!
//! A plugin failure costs one call: that call is answered by the built-in policy, counted, and
//! the slot's breaker decides whether the plugin stays. The pool calls this without its class
//! group's lock, so a slow plugin delays only the stream being placed, by at most its deadline.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use sluice_contract::route::{RouteDecision, RouteRequest, Router, ScoredBatch};

use crate::builtin::PeakEwmaP2c;
use crate::decisions::{DecisionLog, RecordedDecision};
use crate::plugin::Plugin;
use crate::scorer::Scorer;
use crate::slot::{Answer, Slot, shadow_compare};
use crate::types::{self, check_decision};

/// Shadow inputs waiting for the shadow plugin; beyond this they are dropped and counted.
const SHADOW_QUEUE: usize = 1024;
thread_local! {
    /// This thread's routing question, refilled for every decision so that its buffers are
    /// reused instead of allocated per stream.
    static QUESTION: RefCell<Option<types::RouteRequest>> = const { RefCell::new(None) };
}

struct ShadowJob {
    request: types::RouteRequest,
    active_choice: usize,
}

/// Routes with the router slot.
pub struct PolicyRouter {
    slot: Arc<Slot>,
    /// The model plugins score with; while a configured one cannot answer, the built-in
    /// policy decides.
    scorer: Arc<dyn Scorer>,
    shadow_jobs: SyncSender<ShadowJob>,
    decisions: DecisionLog,
    builtin_label: Arc<str>,
}

impl PolicyRouter {
    pub(crate) fn new(slot: Arc<Slot>, scorer: Arc<dyn Scorer>) -> Self {
        let (shadow_jobs, receiver) = std::sync::mpsc::sync_channel(SHADOW_QUEUE);
        let worker_slot = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("sluice-shadow-router".to_owned())
            .spawn(move || shadow_worker(&worker_slot, &receiver));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the shadow router thread; shadow plugins get no input");
        }
        Self {
            slot,
            scorer,
            shadow_jobs,
            decisions: DecisionLog::default(),
            builtin_label: Arc::from("builtin"),
        }
    }

    /// The last `n` decisions (at most [`crate::decisions::RECENT`]), newest last.
    pub fn recent(&self, n: usize) -> Vec<RecordedDecision> {
        self.decisions.recent(n)
    }

    /// The last `n` decisions for `monitor` (at most [`crate::decisions::PER_MONITOR`]),
    /// newest last.
    pub fn recent_for(&self, monitor: &str, n: usize) -> Vec<RecordedDecision> {
        self.decisions.for_monitor(monitor, n)
    }

    fn remember(
        &self,
        request: &RouteRequest<'_>,
        decision: &RouteDecision,
        policy: &Arc<str>,
        fallback: bool,
    ) {
        let Some(chosen) = request.candidates.get(decision.index) else {
            return;
        };
        let record = RecordedDecision {
            at: SystemTime::now(),
            monitor: Arc::clone(&request.monitor.id),
            method: request.method.to_owned(),
            stream: request.stream,
            policy: Arc::clone(policy),
            fallback,
            connection_id: chosen.connection_id,
            candidates: request.candidates.len(),
            confidence: decision.confidence,
            reason: decision.reason.to_string(),
        };
        self.decisions.record(record);
    }

    fn builtin(&self, request: &RouteRequest<'_>, why: Option<&str>) -> Option<RouteDecision> {
        let mut decision = PeakEwmaP2c::pick(request.candidates)?;
        if let Some(why) = why {
            decision.reason = Cow::Owned(format!("{} [fallback: {why}]", decision.reason));
        }
        Some(decision)
    }

    fn offer_shadow(&self, shadow: &Plugin, request: types::RouteRequest, active_choice: usize) {
        let job = ShadowJob {
            request,
            active_choice,
        };
        if let Err(TrySendError::Full(_)) = self.shadow_jobs.try_send(job) {
            shadow.stats.shadow_dropped.fetch_add(1, Relaxed);
        }
    }

    fn ask(
        &self,
        plugin: Arc<Plugin>,
        question: &types::RouteRequest,
    ) -> Answer<(types::Decision, Option<ScoredBatch>)> {
        self.slot.call_plugin(
            plugin,
            |plugin| plugin.route_scored(question),
            |(decision, _)| check_decision(decision, question.candidates.len()),
        )
    }

    /// The shadow, when this call is sampled for it.
    fn sampled(&self) -> Option<Arc<Plugin>> {
        self.slot
            .shadow()
            .filter(|_| fastrand::f64() < self.slot.settings().shadow_share())
    }
}

impl Router for PolicyRouter {
    fn name(&self) -> &str {
        "policy"
    }

    fn route(&self, request: &RouteRequest<'_>) -> Option<RouteDecision> {
        if let Some(why) = self.scorer.unavailable() {
            self.slot.used_builtin();
            let decision = self.builtin(request, Some(&format!("scorer unavailable: {why}")))?;
            self.remember(request, &decision, &self.builtin_label, true);
            return Some(decision);
        }
        let answer = if let Some(plugin) = self.slot.callable() {
            let _span =
                tracing::debug_span!("route", candidates = request.candidates.len()).entered();
            QUESTION.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => {
                    let question = scratch.get_or_insert_with(|| types::route_request(request));
                    types::fill_route_request(question, request);
                    self.ask(plugin, question)
                }
                // Only reachable if a plugin call re-entered routing on this thread.
                Err(_) => self.ask(plugin, &types::route_request(request)),
            })
        } else {
            self.slot.used_builtin();
            Answer::NoPlugin
        };
        let (decision, policy, fallback) = match answer {
            Answer::Answered((decision, scored), plugin) => {
                // Only a batch with one row per candidate says which row was chosen.
                let scored = scored.filter(|batch| {
                    batch.scores.len() == request.candidates.len()
                        && batch.values.len() == batch.scores.len() * batch.columns as usize
                });
                let decision = RouteDecision {
                    index: decision.choice as usize,
                    confidence: decision.confidence,
                    reason: Cow::Owned(types::truncate_reason(
                        decision.reasoning,
                        types::MAX_REASON_BYTES,
                    )),
                    alternatives: decision.alternatives.iter().map(|&a| a as usize).collect(),
                    scored: scored.map(Box::new),
                };
                (decision, Arc::clone(plugin.label()), false)
            }
            Answer::NoPlugin => (
                self.builtin(request, None)?,
                Arc::clone(&self.builtin_label),
                false,
            ),
            Answer::Failed(failure, plugin) => {
                let why = format!("{} {}", plugin.label(), failure.kind());
                (
                    self.builtin(request, Some(&why))?,
                    Arc::clone(plugin.label()),
                    true,
                )
            }
        };
        if let Some(shadow) = self.sampled() {
            self.offer_shadow(&shadow, types::route_request(request), decision.index);
        }
        self.remember(request, &decision, &policy, fallback);
        Some(decision)
    }
}

/// Runs shadow calls until the router is dropped.
fn shadow_worker(slot: &Slot, jobs: &Receiver<ShadowJob>) {
    while let Ok(job) = jobs.recv() {
        let Some(shadow) = slot.shadow() else {
            continue;
        };
        let candidates = job.request.candidates.len();
        shadow_compare(
            &shadow,
            |shadow| shadow.route(&job.request),
            |decision| check_decision(decision, candidates),
            |decision| decision.choice as usize == job.active_choice,
        );
    }
}
