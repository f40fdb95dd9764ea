//! What the three relays (`call`, `share`, `resumable`) share: the setup admission made for a
//! call, opening an upstream stream for it (placement, rate limit, request headers), how a call
//! ends and what the monitor's breaker makes of that, and the status answers and final-status
//! bookkeeping every relay gives.
//!
//! It also decides when an upstream stream a call gave up on may be reset ([`let_go`]).
//!
//! This module opens upstream streams and words statuses; it never relays a byte of a call's
//! messages (the relays do) and must not use any of the relays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use tracing::Instrument;

use super::pump::OnFull;
use crate::Context;
use crate::breaker::{Outcome, Permit};
use crate::grpc::{self, Code, Status};
use crate::pool::{Lease, MonitorCall, Resume};
use crate::route::MonitorProfile;

/// Attempts to open an upstream stream before giving up (a connection can close between the
/// slot being reserved and the stream being opened, e.g. on GOAWAY).
const OPEN_ATTEMPTS: usize = 3;

/// The youngest an upstream stream may be when Sluice resets it. A provider's HTTP/2 server
/// counts streams reset before its application took them up (h2's limit is 20) and sends the
/// whole connection away past that, breaking every other call on it; a burst of calls that end
/// within a millisecond of opening (tiny deadlines, refused requests, monitors cancelling at
/// once) would trip it. A stream this old has long been taken up.
pub(super) const MIN_RESET_AGE: Duration = Duration::from_millis(100);

/// A long-lived upstream stream's send half and lease (a shared stream's, a subscription's),
/// owned by the task running it rather than by the future reading it, so that however that
/// future ends the stream goes through [`let_go`].
pub(super) struct KeptStream {
    pub lease: Lease,
    pub send: SendStream<Bytes>,
    pub opened: Instant,
}

impl KeptStream {
    /// Drops it now when its upstream `finished` it (nothing to reset), else through
    /// [`let_go`].
    pub(super) fn release(self, ctx: &Context, finished: bool) {
        let KeptStream {
            lease,
            send,
            opened,
        } = self;
        if finished {
            drop((send, lease));
        } else {
            let_go(ctx, opened, move || drop((send, lease)));
        }
    }
}

/// Lets go of an upstream stream a call has finished with: `release` drops its last handles
/// (h2 then resets it, unless it had ended) and its lease. A stream younger than
/// [`MIN_RESET_AGE`] is kept, slot and all, until it is that old; the monitor has its answer
/// already, so only the provider sees the difference.
pub(super) fn let_go(ctx: &Context, opened: Instant, release: impl FnOnce() + Send + 'static) {
    let left = MIN_RESET_AGE.saturating_sub(opened.elapsed());
    if left.is_zero() {
        release();
        return;
    }
    ctx.stats.incr(|s| &s.upstream_resets_deferred_total);
    tokio::spawn(async move {
        tokio::time::sleep(left).await;
        release();
    });
}

/// How an upstream stream's start is judged by the breakers: within `timeout` of the
/// monitor's request being in, its response must start (headers or a message), or, when
/// `strict` (the method sets `first_message_timeout`), its first message must arrive. A
/// stream that started is not judged on how long its messages take: a quiet subscription is
/// not a dead one.
#[derive(Debug, Clone, Copy)]
pub(super) struct FirstMessage {
    /// Time the upstream has once the request is in.
    pub timeout: Duration,
    /// Whether the first message, rather than the response's start, must come in time.
    pub strict: bool,
}

impl FirstMessage {
    /// The rule for calls of `method`.
    pub(super) fn for_method(
        config: &sluice_config::Config,
        method: Option<&sluice_config::MethodConfig>,
    ) -> Self {
        match method.and_then(|m| m.first_message_timeout) {
            Some(timeout) => Self {
                timeout,
                strict: true,
            },
            None => Self {
                timeout: config.breakers.first_message_timeout,
                strict: false,
            },
        }
    }
}

/// What admission decided about a call.
pub(super) struct CallSetup {
    /// The call's id (`x-sluice-stream`), unique in this process.
    pub stream: u64,
    pub profile: MonitorProfile,
    pub path: Arc<str>,
    pub deadline: Option<tokio::time::Instant>,
    pub max_message_bytes: usize,
    pub on_full: OnFull,
    /// The monitor breaker's leave for this call.
    pub monitor: Arc<MonitorPermit>,
    /// How the upstream stream's start is judged.
    pub first_message: FirstMessage,
    /// The method's `open_on_request`: open the upstream stream only once the request began.
    pub open_on_request: bool,
}

impl CallSetup {
    /// Who its upstream streams are opened for.
    pub(super) fn caller(&self) -> Caller<'_> {
        Caller {
            profile: &self.profile,
            stream: self.stream,
        }
    }
}

/// Who an upstream stream is opened for: the monitor, and the id of the call the placement is
/// logged under.
#[derive(Clone, Copy)]
pub(super) struct Caller<'a> {
    pub profile: &'a MonitorProfile,
    pub stream: u64,
}

/// The monitor breaker's leave for one call. The breaker counts only what the monitor caused:
/// [`End::MonitorFault`] (oversized or malformed messages, being cut off as lagging) and upstream
/// errors its own calls get while its endpoint is fine for everyone else
/// ([`monitor_blamed`]). The monitor's own deadline and cancellation, a silent request, and
/// Sluice's own unavailability count for nothing, so an outage never locks monitors out after
/// it. A call whose response has started counts as a success at once, so that a long-lived
/// stream does not hold a half-open breaker's probe for its whole life; if the monitor breaks a
/// rule later, that counts too.
pub(super) struct MonitorPermit {
    permit: parking_lot::Mutex<Permit>,
    /// Counts the call among the monitor's open calls while it lives.
    _call: MonitorCall,
}

impl MonitorPermit {
    /// The monitor as its breaker knows it: a configured monitor's id, or the name every
    /// unconfigured monitor shares.
    pub(super) fn name(&self) -> Arc<str> {
        Arc::clone(self.permit.lock().breaker().name())
    }

    /// Holds the monitor breaker's `permit` and the count of the monitor's open calls.
    pub(super) fn new(permit: Permit, call: MonitorCall) -> Self {
        Self {
            permit: parking_lot::Mutex::new(permit),
            _call: call,
        }
    }

    /// The response started reaching the monitor.
    pub(super) fn answered(&self) {
        self.permit.lock().record(Outcome::Success { slow: false });
    }

    /// The call ended as `end`.
    pub(super) fn ended(&self, end: &End) {
        let mut permit = self.permit.lock();
        match end {
            End::Completed(false) => permit.record(Outcome::Success { slow: false }),
            // Not the monitor's doing: the permit goes back unrecorded.
            End::Cancelled | End::Failed(_) => {}
            End::Completed(true) | End::MonitorFault(_) if permit.is_recorded() => {
                permit.breaker().observe(Outcome::Failure);
            }
            End::Completed(true) | End::MonitorFault(_) => permit.record(Outcome::Failure),
        }
    }
}

/// Whether a call that ended with the upstream's final status `headers` on `lease` counts
/// against its monitor: an error the service answered (`UNAVAILABLE`, `INTERNAL`) while the
/// endpoint's breaker is closed, which says the endpoint serves the others. During an outage
/// the endpoint's breaker opens (it trips before a monitor's, at its default thresholds) and
/// the monitors are not blamed. `DEADLINE_EXCEEDED` is the caller's own deadline: never.
pub(super) fn monitor_blamed(lease: &Lease, headers: &HeaderMap) -> bool {
    let error = matches!(
        headers.get("grpc-status").map(http::HeaderValue::as_bytes),
        Some(b"14" | b"13")
    );
    error
        && matches!(
            lease.connection().endpoint.breaker.state(),
            sluice_contract::breaker::BreakerState::Closed
                | sluice_contract::breaker::BreakerState::Disabled
        )
}

/// How a relayed call ended, for logs, counters and the monitor's breaker.
pub(super) enum End {
    /// The upstream's final status reached the monitor; `true` when it counts against the
    /// monitor ([`monitor_blamed`]).
    Completed(bool),
    /// The monitor left.
    Cancelled,
    /// The call failed for a reason that is not the monitor's: its own deadline, Sluice
    /// shutting down or finding no upstream, the upstream failing, or a silent request.
    Failed(Status),
    /// The monitor broke a rule: an oversized or malformed message, or it fell behind and was
    /// cut off. Only these count against its breaker.
    MonitorFault(Status),
}

/// Sends a status to a monitor whose response headers were not sent yet.
pub(super) fn reply(respond: &mut SendResponse<Bytes>, status: &Status) {
    let _ = respond.send_response(status.to_response(), true);
}

/// Resolves when a call must end early: at its deadline, or when Sluice stops and the shutdown
/// grace has run out. Yields the status the monitor gets.
pub(super) async fn must_end(ctx: &Context, deadline: Option<tokio::time::Instant>) -> Status {
    let mut terminating = ctx.terminate.subscribe();
    let deadline_reached = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline_reached => {
            ctx.stats.incr(|s| &s.deadline_exceeded_total);
            Status::new(Code::DeadlineExceeded, "deadline exceeded")
        }
        _ = terminating.wait_for(|stop| *stop) => Status::unavailable("sluice is shutting down"),
    }
}

/// Counts a monitor cut off for refusing data for `waited`, and gives the status it gets.
pub(super) fn cut_off_lagging(ctx: &Context, waited: std::time::Duration) -> Status {
    ctx.stats.incr(|s| &s.lagging_disconnects_total);
    Status::resource_exhausted(format!(
        "lagging: the monitor accepted no data for {waited:?}"
    ))
}

/// The status a monitor gets when its upstream stream failed.
pub(super) fn upstream_failure(error: &h2::Error) -> Status {
    if let Some(reason) = error.reason() {
        if error.is_go_away() {
            return Status::unavailable(format!("upstream connection closed (GOAWAY {reason:?})"));
        }
        let code = match reason {
            Reason::REFUSED_STREAM => Code::Unavailable,
            Reason::CANCEL => Code::Cancelled,
            Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        };
        return Status::new(code, format!("upstream reset the stream ({reason:?})"));
    }
    Status::unavailable(format!("upstream connection lost: {error}"))
}

/// The response head a monitor gets for an upstream's: its status, and its headers without the
/// hop-by-hop ones.
pub(super) fn response_head(status: StatusCode, headers: &HeaderMap) -> Response<()> {
    let mut head = Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = grpc::headers::response_headers(headers);
    head
}

/// An upstream stream that has been opened.
pub(super) struct OpenStream {
    pub lease: Lease,
    pub response: h2::client::ResponseFuture,
    pub send: SendStream<Bytes>,
    /// When it was opened, for [`let_go`].
    pub opened: Instant,
}

/// Reserves a slot and opens the upstream stream, retrying on connections that closed under us.
pub(super) async fn open_upstream(
    ctx: &Context,
    caller: Caller<'_>,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    end_of_stream: bool,
    deadline: Option<tokio::time::Instant>,
    resume: Option<&Resume>,
) -> Result<OpenStream, Status> {
    let mut last_error = String::new();
    let mut attempts = 0;
    // Connections found closed (e.g. after GOAWAY) do not use up attempts: each is marked and
    // never chosen again. The overall bound covers an upstream that closes every connection.
    for _ in 0..OPEN_ATTEMPTS * 8 {
        if attempts == OPEN_ATTEMPTS {
            break;
        }
        // One span per placement decision, inside the stream's span; the router's own spans
        // (a plugin call) nest in it.
        let decision = tracing::debug_span!("decision", attempt = attempts);
        let lease = ctx
            .pool
            .acquire(caller.profile, path.path(), caller.stream, resume)
            .instrument(decision.clone())
            .await?;
        if let Some(bucket) = &lease.connection().endpoint.rate_limit {
            bucket.acquire().await.map_err(|limited| {
                ctx.stats.incr(|s| &s.rate_limited_total);
                Status::resource_exhausted(format!(
                    "endpoint {}: {limited}",
                    lease.connection().endpoint.id
                ))
            })?;
        }
        decision.in_scope(|| {
            tracing::debug!(
                connection = lease.connection().id,
                endpoint = %lease.connection().endpoint.id,
                confidence = lease.decision().confidence,
                reason = %lease.decision().reason,
                "routed",
            );
        });
        let mut send_request = match lease.ready().await {
            Ok(send_request) => send_request,
            Err(error) => {
                last_error = error.to_string();
                if !error.is_go_away() {
                    attempts += 1;
                }
                continue;
            }
        };
        let request = upstream_request(&lease, path, headers.clone(), deadline)?;
        match send_request.send_request(request, end_of_stream) {
            Ok((response, send)) => {
                return Ok(OpenStream {
                    lease,
                    response,
                    send,
                    opened: Instant::now(),
                });
            }
            Err(error) => {
                lease.discard_connection();
                last_error = error.to_string();
                attempts += 1;
            }
        }
    }
    Err(Status::unavailable(format!(
        "could not open an upstream stream: {last_error}"
    )))
}

/// The upstream request: the monitor's headers (minus hop-by-hop and Sluice's own), the
/// endpoint's injected metadata, and the remaining deadline.
fn upstream_request(
    lease: &Lease,
    path: &http::uri::PathAndQuery,
    mut headers: HeaderMap,
    deadline: Option<tokio::time::Instant>,
) -> Result<Request<()>, Status> {
    let endpoint = &lease.connection().endpoint;
    let uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path.clone())
        .build()
        .map_err(|e| Status::internal(format!("cannot build upstream URI: {e}")))?;
    for (name, value) in &endpoint.metadata {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        headers.insert("grpc-timeout", grpc::timeout::encode(remaining));
    }
    let mut request = Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    Ok(request)
}
