//! An upstream's final status, read as its endpoint's `[endpoints.answers]` table says, and the
//! bookkeeping that follows: the stream's outcome on its lease (success, a breaker failure, or
//! nothing for answers that say nothing about the endpoint's health), a quota pushback or a
//! misconfigured mark on the endpoint.
//!
//! Every relay ends its upstream streams through [`record_final_status`]; what the monitor gets
//! and whether a resumable stream moves stay the relays' decisions.

use std::sync::Arc;

use http::HeaderMap;
use sluice_config::{Answer, CODE_NAMES};

use crate::health::standing::Mark;
use crate::pool::{FailureKind, Lease};

/// What a final upstream status said, once its endpoint's table has read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answered {
    /// The treatment.
    pub answer: Answer,
    /// The status, as `CODE: message`, for logs and resume reasons.
    pub status: String,
}

/// The name a shared upstream stream's answers are witnessed under: it carries the request of
/// every monitor that joined it.
pub(super) const SHARED_WITNESS: &str = "(a shared stream)";

/// The gRPC status code of final headers or trailers, if they carry one.
pub(super) fn status_code(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `CODE: message` of final headers or trailers.
pub(super) fn describe(code: u32, headers: &HeaderMap) -> String {
    let name = usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .map_or_else(|| code.to_string(), |n| (*n).to_owned());
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    format!("{name}: {message}")
}

/// The server's `grpc-retry-pushback-ms`, when it sent one (gRFC A6).
fn pushback_ms(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get("grpc-retry-pushback-ms")?.to_str().ok()?;
    // Unreadable is "do not retry" too: the server asked for something, not for nothing.
    Some(value.trim().parse().unwrap_or(-1))
}

/// The code of the final status `headers` of the stream on `lease`, with its endpoint's
/// treatment of it; `None` for `OK` or no status.
pub(super) fn answer_of(lease: &Lease, headers: &HeaderMap) -> Option<(u32, Answer)> {
    let code = status_code(headers).filter(|code| *code != 0)?;
    Some((code, lease.connection().endpoint.answers.answer(code)))
}

/// Reads the final status `headers` of the stream on `lease`, made for `monitor`, with its
/// endpoint's table, records the stream's outcome and marks the endpoint when the answer says
/// so and enough different monitors got it (`witnesses`). A stream that ended without a status
/// (`OK` implied) is a success.
pub(super) fn record_final_status(
    lease: &Lease,
    headers: &HeaderMap,
    monitor: &Arc<str>,
) -> Answered {
    let Some((code, answer)) = answer_of(lease, headers) else {
        lease.finished();
        return Answered {
            answer: Answer::Pass,
            status: "OK".to_owned(),
        };
    };
    let endpoint = &lease.connection().endpoint;
    let status = describe(code, headers);
    let standing = &endpoint.health.standing;
    let witnessed = |mark: Mark| {
        let due = standing.witness(mark, monitor, endpoint.answers.witnesses);
        if !due {
            tracing::info!(
                endpoint = %endpoint.id,
                monitor = %monitor,
                status = %status,
                "answer noted; the endpoint is marked once another monitor gets it too"
            );
        }
        due
    };
    match answer {
        Answer::Failure => lease.failed(match code {
            14 => FailureKind::Unavailable,
            4 => FailureKind::DeadlineExceeded,
            _ => FailureKind::Answered,
        }),
        Answer::Pushback if witnessed(Mark::Pushback) => {
            let pause = endpoint.answers.pushback_for(pushback_ms(headers));
            tracing::warn!(
                endpoint = %endpoint.id,
                pause_ms = pause.as_millis() as u64,
                status = %status,
                "quota pushback: the endpoint takes no new streams for a while"
            );
            standing.push_back(pause, status.clone());
        }
        Answer::Misconfigured if witnessed(Mark::Misconfigured) => {
            if standing.misconfigure(status.clone()) {
                tracing::error!(
                    endpoint = %endpoint.id,
                    status = %status,
                    "the endpoint refused Sluice's credentials: it takes no new streams until \
                     re-enabled (POST /api/v1/endpoints/{{id}}/enable) or restarted with a new config"
                );
            }
        }
        // Not marked yet, and not the endpoint's failure either.
        Answer::Pushback | Answer::Misconfigured => {}
        Answer::Pass => lease.finished(),
    }
    Answered { answer, status }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn statuses_are_named_and_pushback_read_as_grpc_says() {
        let quota = headers(&[
            ("grpc-status", "8"),
            ("grpc-message", "quota"),
            ("grpc-retry-pushback-ms", "750"),
        ]);
        assert_eq!(status_code(&quota), Some(8));
        assert_eq!(describe(8, &quota), "RESOURCE_EXHAUSTED: quota");
        assert_eq!(pushback_ms(&quota), Some(750));
        assert_eq!(
            pushback_ms(&headers(&[("grpc-retry-pushback-ms", "-1")])),
            Some(-1)
        );
        assert_eq!(
            pushback_ms(&headers(&[("grpc-retry-pushback-ms", "soon")])),
            Some(-1)
        );
        assert_eq!(pushback_ms(&headers(&[])), None);
        assert_eq!(describe(99, &headers(&[])), "99: ");
        assert_eq!(status_code(&headers(&[("grpc-status", "x")])), None);
    }
}
