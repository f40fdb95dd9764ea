//! One attempt of a resumable call: the upstream stream carrying it now, what it has said so
//! far, the request bytes waiting for its window, and why it may be given up.
//!
//! An attempt only tracks its own upstream stream; whether and where the call moves when it
//! breaks is the call's decision (`reopen`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Response};
use tokio::sync::watch;

use super::ResumeOptions;
use crate::Context;
use crate::forward::answers::{answer_of, describe, record_final_status};
use crate::forward::pump::{PumpError, poll_window};
use crate::forward::upstream::{CallSetup, OpenStream, let_go};
use crate::grpc::MessageSplitter;
use crate::pool::{FailureKind, Lease};
use sluice_config::Answer;

/// Where the current upstream stream's response is.
pub(super) enum Phase {
    Head(h2::client::ResponseFuture),
    Body(RecvStream),
    Trailers(RecvStream),
    Done,
}

/// One upstream stream carrying the call.
pub(super) struct Attempt {
    pub(super) lease: Lease,
    pub(super) send: Option<SendStream<Bytes>>,
    /// Request bytes waiting for the upstream's flow-control window. The relay never waits
    /// for that window with other work undone: a bidirectional upstream may be waiting for us
    /// to take its responses before it reads more requests.
    pub(super) outbox: VecDeque<Bytes>,
    /// End the request stream once the outbox is empty.
    end_after_outbox: bool,
    pub(super) phase: Phase,
    pub(super) splitter: MessageSplitter,
    pub(super) sent_at: Instant,
    first_seen: bool,
    pub(super) first_checked: bool,
    /// Whether the method holds the stream to its first message (not only its start).
    strict: bool,
    pub(super) first_due: Pin<Box<tokio::time::Sleep>>,
    pub(super) draining: watch::Receiver<bool>,
}

impl Attempt {
    /// The attempt on a freshly opened upstream stream.
    pub(super) fn new(open: OpenStream, setup: &CallSetup) -> Self {
        let draining = open.lease.draining();
        Self {
            draining,
            lease: open.lease,
            send: Some(open.send),
            outbox: VecDeque::new(),
            end_after_outbox: false,
            phase: Phase::Head(open.response),
            splitter: MessageSplitter::new(setup.max_message_bytes),
            sent_at: Instant::now(),
            first_seen: false,
            first_checked: false,
            strict: setup.first_message.strict,
            first_due: Box::pin(tokio::time::sleep(setup.first_message.timeout)),
        }
    }

    /// Queues request messages; with `end`, the request stream ends after them.
    pub(super) fn queue(&mut self, messages: impl IntoIterator<Item = Bytes>, end: bool) {
        self.outbox.extend(messages);
        self.end_after_outbox |= end;
        if self.outbox.is_empty() {
            self.end_request_if_due();
        }
    }

    /// Sends as much of the outbox as `window` allows.
    pub(super) fn flush(&mut self, mut window: usize) -> Result<(), h2::Error> {
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        while window > 0 {
            let Some(front) = self.outbox.front_mut() else {
                break;
            };
            let piece = front.split_to(window.min(front.len()));
            window -= piece.len();
            if front.is_empty() {
                self.outbox.pop_front();
            }
            let last = self.outbox.is_empty() && self.end_after_outbox;
            send.send_data(piece, last)?;
            if last {
                self.end_after_outbox = false;
            }
        }
        Ok(())
    }

    fn end_request_if_due(&mut self) {
        if self.end_after_outbox
            && let Some(send) = self.send.as_mut()
        {
            // A failure here shows up on the response side.
            let _ = send.send_data(Bytes::new(), true);
            self.end_after_outbox = false;
        }
    }

    /// The first response message arrived: the stream works.
    pub(super) fn saw_first_message(&mut self) {
        if !self.first_seen {
            self.first_seen = true;
            self.lease.first_message(self.sent_at.elapsed());
        }
    }

    /// The first-message timer went off: a stream still without a response message counts as
    /// failed (once), unless its response started and its method asks no more (a quiet
    /// stream: a working one).
    pub(super) fn first_message_due(&mut self) {
        self.first_checked = true;
        if self.first_seen {
            return;
        }
        let started = !matches!(self.phase, Phase::Head(_));
        if started && !self.strict {
            self.lease.quiet_but_working();
        } else {
            self.lease.failed(FailureKind::NoFirstMessage);
        }
    }

    /// Stops using this upstream stream: it is reset (CANCEL), though not before it is old
    /// enough ([`let_go`]).
    pub(super) fn abandon(self, ctx: &Context) {
        let Attempt {
            lease,
            mut send,
            phase,
            sent_at,
            ..
        } = self;
        // Only what keeps the stream open is kept: the send half, or the response side when
        // the send half is gone. A response side kept would buffer what the upstream sends
        // without giving the connection's window back.
        let phase = send.is_none().then_some(phase);
        let_go(ctx, sent_at, move || {
            if let Some(send) = send.as_mut() {
                send.send_reset(h2::Reason::CANCEL);
            }
            drop((phase, lease));
        });
    }
}

/// What an upstream stream said.
pub(super) enum UpstreamEvent {
    Head(Response<RecvStream>),
    Data(Bytes),
    Trailers(Option<HeaderMap>),
}

/// The next thing the upstream stream says; an error means it broke. Cancel-safe: every await
/// is a poll of h2 state.
pub(super) async fn next_event(phase: &mut Phase) -> Result<UpstreamEvent, h2::Error> {
    loop {
        match phase {
            Phase::Head(response) => return response.await.map(UpstreamEvent::Head),
            Phase::Body(body) => match body.data().await {
                Some(chunk) => return chunk.map(UpstreamEvent::Data),
                None => {
                    if let Phase::Body(body) = std::mem::replace(phase, Phase::Done) {
                        *phase = Phase::Trailers(body);
                    }
                }
            },
            Phase::Trailers(body) => return body.trailers().await.map(UpstreamEvent::Trailers),
            Phase::Done => return std::future::pending().await,
        }
    }
}

/// Why the current upstream stream is given up.
pub(super) struct Broken {
    /// The breaker failure, or `None` when the upstream never processed the stream or is going
    /// away on purpose (a migration).
    pub(super) failure: Option<FailureKind>,
    /// Its connection is draining: the stream moves, and the move starts a fresh budget.
    pub(super) drained: bool,
    /// The endpoint's answer said to go elsewhere: the resume does not use that endpoint.
    pub(super) avoid_endpoint: bool,
    pub(super) reason: String,
}

/// Whether the server never processed the stream: refused it, or cut it off with a GOAWAY.
pub(super) fn was_not_processed(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote())
}

/// What an attempt's final status calls for.
pub(super) enum FinalStatus {
    /// Try elsewhere.
    Resume(Broken),
    /// End the call with it; `recorded` when [`resumable_status`] has already recorded it on
    /// the lease (and witnessed it), so that the caller does not again.
    End { recorded: bool },
}

/// Whether a final status on `lease` means "try elsewhere" for this method, witnessed for
/// `monitor` when it is one that marks endpoints; blames nobody for those:
/// - `UNAVAILABLE`, when the endpoint's table calls it a failure and the method resumes on it;
/// - quota pushback, at once: the mark it may set ends by itself;
/// - refused credentials, only once the endpoint is marked misconfigured. Before that, one
///   monitor's request may have drawn the refusal for what it asked: resumed from endpoint to
///   endpoint, it would witness against each, and two such monitors would take the whole pool
///   out until an operator steps in. The monitor gets the answer instead.
pub(super) fn resumable_status(
    options: &ResumeOptions,
    lease: &Lease,
    headers: &HeaderMap,
    monitor: &std::sync::Arc<str>,
) -> FinalStatus {
    let Some(answered) = answer_of(lease, headers) else {
        return FinalStatus::End { recorded: false };
    };
    match answered {
        (_, answer @ (Answer::Pushback | Answer::Misconfigured)) => {
            let answered = record_final_status(lease, headers, monitor);
            let marked = lease
                .connection()
                .endpoint
                .health
                .standing
                .is_misconfigured();
            if answer == Answer::Misconfigured && !marked {
                return FinalStatus::End { recorded: true };
            }
            FinalStatus::Resume(Broken {
                failure: None,
                drained: false,
                avoid_endpoint: true,
                reason: format!(
                    "upstream answered {}; its endpoint takes no new streams for now",
                    answered.status
                ),
            })
        }
        (14, Answer::Failure) if options.on_unavailable => FinalStatus::Resume(Broken {
            failure: Some(FailureKind::Unavailable),
            drained: false,
            avoid_endpoint: false,
            reason: format!("upstream answered {}", describe(14, headers)),
        }),
        _ => FinalStatus::End { recorded: false },
    }
}

/// Waits for flow-control window for the upstream's queued request bytes.
pub(super) async fn poll_window_of(
    send: &mut Option<SendStream<Bytes>>,
    outbox: &VecDeque<Bytes>,
) -> Result<usize, PumpError> {
    match send.as_mut() {
        Some(send) => {
            send.reserve_capacity(outbox.iter().map(Bytes::len).sum());
            poll_fn(|cx| poll_window(send, cx)).await
        }
        None => std::future::pending().await,
    }
}
