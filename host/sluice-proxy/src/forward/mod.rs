//! Forwarding one monitor call: admission, opening the upstream stream, relaying both
//! directions, and ending the call with the right status.
//!
//! This module owns the life of a stream. It never decides placement (the pool and its router
//! do) and never decodes payloads.
//!
//! [`serve`] admits a call and hands it to the relay its method is configured for:
//! - `call`: the plain relay, DATA frames in both directions under flow control;
//! - `share`: identical server-streaming requests ride one upstream stream;
//! - `subscription`: bidirectional subscriptions (`share` and `bidi`), shared, kept alive and
//!   resumed with the resumer plugin's knowledge of their protocol;
//! - `resumable`: whole messages, and a stream that outlives the upstream streams carrying it.
//!
//! The four stand side by side and never use one another: what they share (the call's setup,
//! opening an upstream stream, status answers) is in `upstream`, reading an upstream's final
//! status for its endpoint is `answers`', telling the monitor who served it is
//! `attribution`'s, fanning one upstream stream out to many monitors is `fanout`'s, and moving
//! DATA under flow control is `pump`'s.

mod answers;
mod attribution;
mod call;
mod fanout;
mod pump;
mod request;
mod resumable;
mod share;
mod subscription;
mod upstream;

use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tracing::Instrument;

use crate::Context;
use crate::grpc::{self, Code, Status};
use fanout::ShareOptions;
use pump::OnFull;
use resumable::ResumeOptions;
use subscription::SubscriptionOptions;
use upstream::{CallSetup, MonitorPermit};

pub(crate) use fanout::ShareRegistry;
pub(crate) use request::RequestBudget;
pub(crate) use subscription::{PackRegistry, SubscriptionRegistry};

/// Which relay serves a call, with its method's options.
enum Relay {
    Plain,
    Shared(ShareOptions),
    Subscription(SubscriptionOptions),
    Resumable(ResumeOptions),
}

/// Serves one call from a monitor to its end; `certified` is the monitor its connection's
/// client certificate names, under mutual TLS.
pub(crate) async fn serve(
    ctx: Arc<Context>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    certified: Option<Arc<str>>,
) {
    ctx.stats.incr(|s| &s.downstream_streams_total);
    let _active = ctx.stats.hold(|s| &s.downstream_streams_active);
    let (setup, relay) = match admit(&ctx, &request, certified.as_deref()) {
        Ok(admitted) => admitted,
        Err(response) => {
            let _ = respond.send_response(response, true);
            return;
        }
    };
    let monitor = Arc::clone(&setup.monitor);
    let span = tracing::debug_span!(
        "stream",
        id = setup.stream,
        monitor = %setup.profile.id,
        class = %setup.profile.class,
        method = %setup.path,
    );
    async move {
        // The opt-in paths are boxed so that the plain path's future, which every call
        // builds and moves, stays small.
        let end = match relay {
            Relay::Shared(options) => {
                Box::pin(share::serve(ctx, setup, options, request, respond)).await
            }
            Relay::Subscription(options) => {
                Box::pin(subscription::serve(ctx, setup, options, request, respond)).await
            }
            Relay::Resumable(options) => {
                Box::pin(resumable::serve(&ctx, setup, options, request, respond)).await
            }
            Relay::Plain => call::serve(&ctx, setup, request, respond).await,
        };
        monitor.ended(&end);
    }
    .instrument(span)
    .await
}

/// Checks the call is gRPC and the monitor is allowed, and gathers its options.
fn admit(
    ctx: &Context,
    request: &Request<RecvStream>,
    certified: Option<&str>,
) -> Result<(CallSetup, Relay), Response<()>> {
    if request.method() != http::Method::POST {
        return Err(Status::new(
            Code::Unimplemented,
            "only gRPC calls (HTTP/2 POST) are proxied",
        )
        .to_response());
    }
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        let mut response =
            Status::new(Code::Unknown, "content-type must be application/grpc").to_response();
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Err(response);
    }
    let path = request.uri().path();
    let profile = ctx
        .monitors
        .identify(request.headers(), certified)
        .map_err(|status| {
            ctx.stats.incr(|s| &s.unauthenticated_total);
            tracing::debug!(method = path, reason = %status.message, "monitor refused");
            status.to_response()
        })?;
    let (permit, call) = ctx.pool.admit_monitor(&profile).map_err(|status| {
        ctx.stats.incr(|s| &s.breaker_rejected_total);
        tracing::debug!(monitor = %profile.id, %status, "monitor breaker refused the call");
        status.to_response()
    })?;
    let method = ctx.config.method(path);
    let class = ctx.config.classes.get(profile.class);
    let on_full = match class.lag_policy {
        sluice_config::LagPolicy::Block => OnFull::Wait,
        sluice_config::LagPolicy::Disconnect => OnFull::GiveUpAfter(class.lag_timeout),
    };
    let deadline = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| grpc::timeout::parse(v.as_bytes()))
        .map(|timeout| tokio::time::Instant::now() + timeout);
    // Shared streams are not resumed (the config refuses a method with both).
    let relay = match method {
        Some(m) if m.share && m.bidi => {
            Relay::Subscription(SubscriptionOptions::from_config(m, &ctx.config.endpoints))
        }
        Some(m) if m.share => Relay::Shared(ShareOptions::from_config(m)),
        Some(m) if m.resume.resumes() => Relay::Resumable(ResumeOptions::from_config(m)),
        _ => Relay::Plain,
    };
    let setup = CallSetup {
        stream: ctx
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        profile,
        path: Arc::from(path),
        deadline,
        max_message_bytes: method
            .and_then(|m| m.max_message_bytes)
            .unwrap_or(ctx.config.server.max_message_bytes),
        on_full,
        first_message: upstream::FirstMessage::for_method(&ctx.config, method),
        open_on_request: method.is_some_and(|m| m.open_on_request),
        monitor: Arc::new(MonitorPermit::new(permit, call)),
    };
    Ok((setup, relay))
}
