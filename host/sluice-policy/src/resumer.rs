//! The data plane's resumer: the resumer slot's plugin when there is a usable one, the built-in
//! "replay unchanged" otherwise, and the shadow fed off the failover path.
//!
//! A resume happens once per broken stream, so the question is built afresh (payloads copied)
//! for every call. A plugin failure (trap, deadline, `error`, invalid answer) is counted like
//! any slot's failure and answered with [`ResumeAnswer::Failed`], which makes the host replay
//! the requests unchanged; the slot's breaker decides whether the plugin stays.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use bytes::Bytes;
use sluice_contract::resume::{
    Packing, RequestKind, ResumeAnswer, ResumeRequest, Resumer, Routing, Subscription, UpdateMark,
};

use crate::builtin::ReplayUnchanged;
use crate::plugin::{CallFailure, Plugin};
use crate::slot::{Answer, Slot, shadow_compare};
use crate::types::{self, check_resume};

/// Resume questions waiting for the shadow plugin; beyond this they are dropped and counted.
const SHADOW_QUEUE: usize = 64;

struct ShadowJob {
    request: types::ResumeRequest,
    /// What the host sends upstream for this resume (the active plugin's messages, or the
    /// requests unchanged): the shadow agrees when it answers the same messages.
    sent: Vec<Vec<u8>>,
}

/// Rewrites the requests of broken streams with the resumer slot.
pub struct PolicyResumer {
    slot: Arc<Slot>,
    shadow_jobs: SyncSender<ShadowJob>,
}

impl PolicyResumer {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        let (shadow_jobs, receiver) = std::sync::mpsc::sync_channel(SHADOW_QUEUE);
        let worker_slot = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("sluice-shadow-resumer".to_owned())
            .spawn(move || shadow_worker(&worker_slot, &receiver));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the shadow resumer thread; shadow plugins get no input");
        }
        Self { slot, shadow_jobs }
    }

    fn offer_shadow(&self, shadow: &Plugin, request: types::ResumeRequest, sent: Vec<Vec<u8>>) {
        if let Err(TrySendError::Full(_)) = self.shadow_jobs.try_send(ShadowJob { request, sent }) {
            shadow.stats.shadow_dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Resumer for PolicyResumer {
    fn resume(&self, request: &ResumeRequest<'_>) -> ResumeAnswer {
        // Nothing to replay: nothing to rewrite (the contract promises plugins a request).
        if request.requests.is_empty() {
            return ResumeAnswer::Unchanged;
        }
        let shadow = self.slot.shadow();
        let Some(plugin) = self.slot.callable() else {
            self.slot.used_builtin();
            if let Some(shadow) = shadow {
                let question = types::resume_request(request);
                let sent = question.requests.clone();
                self.offer_shadow(&shadow, question, sent);
            }
            return ReplayUnchanged.resume(request);
        };
        let question = types::resume_request(request);
        let _span =
            tracing::debug_span!("resume", method = request.method, attempt = request.attempt)
                .entered();
        let call = |plugin| {
            self.slot.call_plugin(
                plugin,
                |plugin| plugin.resume(&question),
                |messages| check_resume(messages, &question),
            )
        };
        let answer = match call(plugin) {
            // A deadline missed because this thread was descheduled (a loaded machine, many
            // streams resuming at once) says little about the plugin, and replaying unchanged
            // would send the monitor again what it has: one more try, counted like the first.
            Answer::Failed(CallFailure::Timeout(_), plugin) => {
                tracing::debug!(plugin = %plugin.label(), "resumer missed its deadline; trying once more");
                call(plugin)
            }
            answer => answer,
        };
        let (answer, sent) = match answer {
            Answer::Answered(messages, plugin) => {
                tracing::debug!(
                    plugin = %plugin.label(),
                    monitor = %request.monitor.id,
                    messages = messages.len(),
                    "requests rewritten for the resumed stream"
                );
                let sent = shadow.is_some().then(|| messages.clone());
                let replay = messages.into_iter().map(Bytes::from).collect();
                (ResumeAnswer::Replay(replay), sent)
            }
            Answer::Failed(failure, plugin) => {
                let reason = types::truncate_reason(
                    format!(
                        "resumer {} failed ({}): {failure}",
                        plugin.label(),
                        failure.kind()
                    ),
                    types::MAX_REASON_BYTES,
                );
                let sent = shadow.is_some().then(|| question.requests.clone());
                (ResumeAnswer::Failed(reason), sent)
            }
            // `call_plugin` always calls the plugin it is given.
            Answer::NoPlugin => (
                ResumeAnswer::Unchanged,
                shadow.is_some().then(|| question.requests.clone()),
            ),
        };
        if let (Some(shadow), Some(sent)) = (shadow, sent) {
            self.offer_shadow(&shadow, question, sent);
        }
        answer
    }

    fn classify(&self, method: &str, message: &Bytes) -> RequestKind {
        let Some(plugin) = self.slot.callable() else {
            self.slot.used_builtin();
            return RequestKind::Unknown;
        };
        match self.slot.call_plugin(
            plugin,
            |plugin| plugin.classify(method, message),
            |_| Ok(()),
        ) {
            Answer::Answered(kind, _) => match kind {
                types::RequestKind::Unknown => RequestKind::Unknown,
                types::RequestKind::Subscribe(subscription) => {
                    RequestKind::Subscribe(Subscription {
                        share_key: subscription.share_key.map(Bytes::from),
                        packing: subscription.packing.map(|packing| Packing {
                            group: Bytes::from(packing.group),
                            filters: packing.filters,
                        }),
                    })
                }
                types::RequestKind::Ping(reply) => RequestKind::Ping(reply.map(Bytes::from)),
            },
            Answer::Failed(failure, plugin) => {
                tracing::debug!(plugin = %plugin.label(), %failure, method, "classify failed");
                RequestKind::Unknown
            }
            Answer::NoPlugin => RequestKind::Unknown,
        }
    }

    fn pack(&self, method: &str, members: &[(u32, Bytes)]) -> Option<Bytes> {
        let plugin = self.slot.callable()?;
        let members: Vec<types::PackMember> = members
            .iter()
            .map(|(tag, subscription)| types::PackMember {
                tag: *tag,
                subscription: subscription.to_vec(),
            })
            .collect();
        match self
            .slot
            .call_plugin(plugin, |plugin| plugin.pack(method, &members), |_| Ok(()))
        {
            Answer::Answered(request, _) => Some(Bytes::from(request)),
            Answer::Failed(failure, plugin) => {
                tracing::warn!(plugin = %plugin.label(), %failure, method, "pack failed");
                None
            }
            Answer::NoPlugin => None,
        }
    }

    fn unpack(&self, method: &str, messages: &[Bytes]) -> Option<Vec<Routing>> {
        let plugin = self.slot.callable()?;
        let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
        let count = payloads.len();
        let answer = self.slot.call_plugin(
            plugin,
            |plugin| plugin.unpack(method, &payloads),
            |routes| check_count(routes, count, "unpack"),
        );
        match answer {
            Answer::Answered(routes, _) => Some(
                routes
                    .into_iter()
                    .map(|route| match route {
                        types::Routing::Everyone => Routing::Everyone,
                        types::Routing::Members(members) => Routing::Members(
                            members
                                .into_iter()
                                .map(|(tag, message)| (tag, Bytes::from(message)))
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
            Answer::Failed(failure, plugin) => {
                tracing::warn!(plugin = %plugin.label(), %failure, method, "unpack failed");
                None
            }
            Answer::NoPlugin => None,
        }
    }

    fn mark(&self, method: &str, messages: &[Bytes]) -> Option<Vec<UpdateMark>> {
        let Some(plugin) = self.slot.callable() else {
            self.slot.used_builtin();
            return None;
        };
        let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
        let count = payloads.len();
        let answer = self.slot.call_plugin(
            plugin,
            |plugin| plugin.mark(method, &payloads),
            |marks| check_count(marks, count, "mark"),
        );
        match answer {
            Answer::Answered(marks, _) => Some(
                marks
                    .into_iter()
                    .map(|mark| UpdateMark {
                        position: mark.position,
                        key: mark.key.map(Bytes::from),
                    })
                    .collect(),
            ),
            Answer::Failed(failure, plugin) => {
                tracing::debug!(plugin = %plugin.label(), %failure, method, "mark failed");
                None
            }
            Answer::NoPlugin => None,
        }
    }
}

/// Checks a batch answer (`mark`, `unpack`) has one entry per message.
fn check_count<T>(answers: &[T], messages: usize, what: &str) -> Result<(), String> {
    if answers.len() == messages {
        Ok(())
    } else {
        Err(format!(
            "{what} answered {} entries for {messages} messages",
            answers.len()
        ))
    }
}

/// Runs shadow calls until the resumer is dropped.
fn shadow_worker(slot: &Slot, jobs: &Receiver<ShadowJob>) {
    while let Ok(job) = jobs.recv() {
        let Some(shadow) = slot.shadow() else {
            continue;
        };
        shadow_compare(
            &shadow,
            |shadow| shadow.resume(&job.request),
            |messages| check_resume(messages, &job.request),
            |messages| *messages == job.sent,
        );
    }
}
