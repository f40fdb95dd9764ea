//! Resuming a call: a new upstream stream for it, within the method's resume attempts and
//! time, with the replay queued on it (rewritten by the resumer when one is loaded).
//!
//! It opens the next attempt and stops there: relaying on it is the call's job again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use sluice_contract::resume::{ResumeAnswer, ResumeRequest};

use super::ResumeOptions;
use super::attempt::Attempt;
use super::replay::ReplayBuffer;
use crate::Context;
use crate::forward::upstream::{CallSetup, open_upstream};
use crate::grpc::{PREFIX_LEN, Status, frame};
use crate::pool::Resume;

/// What a resume needs to know about the call so far.
pub(super) struct ResumeState<'a> {
    pub(super) replay: &'a ReplayBuffer,
    pub(super) request_ended: bool,
    pub(super) last_response: Option<&'a Bytes>,
    pub(super) delivered: u64,
    pub(super) attempt: u32,
    /// The broken connection and its placement's alternatives.
    pub(super) retry: Resume,
    pub(super) reason: &'a str,
}

/// Upstream streams opened and time spent resuming since the monitor last received a message
/// (or since a migration, or a break of a long-lived upstream stream). A stream that keeps
/// breaking before it delivers anything runs out of budget, however often it reopens.
#[derive(Debug, Default)]
pub(super) struct ResumeBudget {
    attempts: u32,
    since: Option<Instant>,
}

/// Opens a new upstream stream for the call with the replay queued on it, within the method's
/// resume attempts (upstream streams opened) and time. While no endpoint can take it (backing
/// off, breakers open, queues full) it waits and tries again, until the time runs out.
pub(super) async fn reopen(
    ctx: &Arc<Context>,
    setup: &CallSetup,
    options: &ResumeOptions,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    state: ResumeState<'_>,
    budget: &mut ResumeBudget,
) -> Result<Attempt, Status> {
    let started = *budget.since.get_or_insert_with(Instant::now);
    let messages = replay_messages(ctx, setup, &state);
    let mut last_error = state.reason.to_owned();
    let mut refusals: u32 = 0;
    if budget.attempts > 0 {
        // The last resumed stream broke before delivering anything: do not hammer.
        tokio::time::sleep(
            resume_pause(budget.attempts).min(options.timeout.saturating_sub(started.elapsed())),
        )
        .await;
    }
    while budget.attempts < options.attempts {
        let Some(remaining) = options.timeout.checked_sub(started.elapsed()) else {
            break;
        };
        let opened = tokio::time::timeout(
            remaining,
            open_upstream(
                ctx,
                setup.caller(),
                path,
                headers,
                false,
                setup.deadline,
                Some(&state.retry),
            ),
        )
        .await;
        match opened {
            Ok(Ok(open)) => {
                budget.attempts += 1;
                let mut attempt = Attempt::new(open, setup);
                attempt.queue(messages, state.request_ended);
                return Ok(attempt);
            }
            Ok(Err(status)) => last_error = status.message,
            Err(_) => break,
        }
        // Nothing could take the stream now. Wait a little (growing, with jitter, so that many
        // streams resuming at once spread out) for back-offs and open breakers to pass.
        refusals += 1;
        tokio::time::sleep(
            resume_pause(refusals).min(options.timeout.saturating_sub(started.elapsed())),
        )
        .await;
    }
    Err(Status::unavailable(format!(
        "upstream stream broke ({}) and could not be resumed within {} attempts and {:?}: {last_error}",
        state.reason, options.attempts, options.timeout
    )))
}

/// The pause after the `n`th fruitless try: 40 ms doubling to 640 ms, with jitter so that many
/// streams resuming at once spread out.
fn resume_pause(n: u32) -> Duration {
    Duration::from_millis(20 * (1 << n.clamp(1, 5))).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The framed request messages to send on the new upstream stream: the replay, rewritten by
/// the resumer when one is loaded.
fn replay_messages(ctx: &Context, setup: &CallSetup, state: &ResumeState<'_>) -> Vec<Bytes> {
    let recorded: Vec<Bytes> = state.replay.messages.iter().cloned().collect();
    if state.replay.any_compressed() {
        return recorded;
    }
    let payloads: Vec<Bytes> = recorded.iter().map(|m| m.slice(PREFIX_LEN..)).collect();
    let request = ResumeRequest {
        monitor: &setup.profile,
        method: &setup.path,
        requests: &payloads,
        last_response: state.last_response,
        responses_delivered: state.delivered,
        attempt: state.attempt,
    };
    match ctx.resumer.resume(&request) {
        ResumeAnswer::Replay(rewritten) => rewritten.iter().map(|p| frame(p)).collect(),
        ResumeAnswer::Unchanged => recorded,
        ResumeAnswer::Failed(reason) => {
            tracing::warn!(%reason, "resumer failed; replaying the requests unchanged");
            recorded
        }
    }
}
