//! The attacks made of gRPC calls, sent with the `h2` crate's client (a real HTTP/2 stack
//! that obeys flow control and stream limits, but sends what it is told): silent bodies,
//! impersonation with tiny deadlines, huge declared messages, a flood of streams and a flood of
//! monitor ids.
//!
//! Each is bounded in count and in time (`hold`) and returns how its calls ended. They must not
//! judge what they saw: the tests and the bench do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use prost::Message;

use super::{ECHO, Observed};
use crate::pb;

/// How a call ended, as an [`Observed::outcomes`] key, with the `grpc-message` if any.
type Ending = (String, Option<String>);

/// Opens an HTTP/2 connection with the `h2` client.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// Opens `n` connections; those that fail are left out.
async fn connect_all(addr: SocketAddr, n: usize) -> Vec<SendRequest<Bytes>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(send) = connect(addr).await {
            out.push(send);
        }
    }
    out
}

/// The call's destination: its method and the monitor it names, with `extra` headers.
struct Call<'a> {
    path: &'a str,
    monitor: &'a str,
    extra: &'a [(&'a str, &'a str)],
}

/// The HTTP/2 request of `call` to `addr`.
fn request(addr: SocketAddr, call: &Call<'_>) -> Result<http::Request<()>, String> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{}", call.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-sluice-monitor", call.monitor);
    for (name, value) in call.extra {
        request = request.header(*name, *value);
    }
    request.body(()).map_err(|e| format!("request: {e}"))
}

/// Starts `call` (its request stream left open) on one of `conns`, round robin by `i`; returns
/// its response and body sender.
async fn start(
    conns: &[SendRequest<Bytes>],
    i: usize,
    addr: SocketAddr,
    call: Call<'_>,
) -> Result<(ResponseFuture, h2::SendStream<Bytes>), String> {
    // Built before any await: nothing borrowed from `call` lives across one.
    let request = request(addr, &call)?;
    let send = conns
        .get(i % conns.len().max(1))
        .ok_or("no connection")?
        .clone();
    let mut send = send.ready().await.map_err(|e| format!("ready: {e}"))?;
    send.send_request(request, false)
        .map_err(|e| format!("send: {e}"))
}

/// A gRPC message: the 5-byte prefix and `message`.
fn grpc_message(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The name of a `grpc-status` value (`DeadlineExceeded`).
fn status_name(value: &str) -> String {
    value
        .parse::<i32>()
        .map(|code| format!("{:?}", tonic::Code::from_i32(code)))
        .unwrap_or_else(|_| format!("grpc-status {value:?}"))
}

/// How an `h2` error ended a call.
fn h2_ending(error: &h2::Error) -> String {
    match error.reason() {
        Some(reason) if error.is_go_away() => format!("goaway:{reason:?}"),
        Some(reason) => format!("reset:{reason:?}"),
        None => "io".to_owned(),
    }
}

/// Waits for a call's response and reads it to its end, until `until`: the status it ended with
/// (`open` when it was still running at `until`).
async fn ending(response: ResponseFuture, until: Instant) -> Ending {
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let left = || until.saturating_duration_since(Instant::now());
    let response = match tokio::time::timeout(left(), response).await {
        Err(_) => return ("open".to_owned(), None),
        Ok(Err(error)) => return (h2_ending(&error), None),
        Ok(Ok(response)) => response,
    };
    if response.status() != http::StatusCode::OK {
        return (format!("http:{}", response.status().as_u16()), None);
    }
    if let Some(status) = header(response.headers(), "grpc-status") {
        return (
            status_name(&status),
            header(response.headers(), "grpc-message"),
        );
    }
    let mut body = response.into_body();
    let read = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| h2_ending(&e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(|e| h2_ending(&e))?;
        Ok::<_, String>(trailers)
    };
    match tokio::time::timeout(left(), read).await {
        Err(_) => ("open".to_owned(), None),
        Ok(Err(ending)) => (ending, None),
        Ok(Ok(Some(trailers))) => match header(&trailers, "grpc-status") {
            Some(status) => (status_name(&status), header(&trailers, "grpc-message")),
            None => ("no grpc-status".to_owned(), None),
        },
        Ok(Ok(None)) => ("no trailers".to_owned(), None),
    }
}

/// Adds one call's ending to `observed`.
fn count(observed: &mut Observed, (key, message): Ending) {
    if let Some(message) = message {
        observed.messages.entry(key.clone()).or_insert(message);
    }
    *observed.outcomes.entry(key).or_default() += 1;
}

/// Waits for every call of `running` and counts how it ended.
async fn collect(observed: &mut Observed, running: Vec<tokio::task::JoinHandle<Ending>>) {
    for call in running {
        if let Ok(ending) = call.await {
            count(observed, ending);
        }
    }
}

/// `calls` calls over `conns` connections, alternating over `monitors` and `paths`, each
/// sending its HEADERS (with `grpc-timeout: timeout` when given) and never a body, held until
/// they end or `hold` passes. `attempts` is the calls; outcomes how they ended.
pub(super) async fn silent_bodies(
    addr: SocketAddr,
    monitors: &[&str],
    paths: &[&str],
    calls: usize,
    conns: usize,
    timeout: Option<&str>,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let senders = connect_all(addr, conns).await;
    let extra: Vec<(&str, &str)> = timeout.iter().map(|t| ("grpc-timeout", *t)).collect();
    let mut observed = Observed::default();
    let mut running = Vec::with_capacity(calls);
    for i in 0..calls {
        if Instant::now() >= until {
            break;
        }
        observed.attempts += 1;
        let call = Call {
            path: paths[i % paths.len()],
            monitor: monitors[i % monitors.len()],
            extra: &extra,
        };
        match start(&senders, i, addr, call).await {
            // The body sender lives as long as the call: dropping it would end the stream.
            Ok((response, body)) => running.push(tokio::spawn(async move {
                let ending = ending(response, until).await;
                drop(body);
                ending
            })),
            Err(error) => count(&mut observed, (error, None)),
        }
    }
    collect(&mut observed, running).await;
    observed.elapsed = started.elapsed();
    observed
}

/// Request messages the huge-message calls declare: one larger than any stream's window, and
/// one that fits a window (128 KiB) but is never completed.
const DECLARED: [u32; 2] = [120 * 1024, 16 * 1024 * 1024];
/// What the huge-message calls send each [`TRICKLE_EVERY`], as flow control lets them.
const TRICKLE_CHUNK: usize = 16 * 1024;
/// See [`TRICKLE_CHUNK`].
const TRICKLE_EVERY: Duration = Duration::from_millis(10);

/// For each size of [`DECLARED`] (the smaller first), `calls` calls as `huge` over two
/// connections, alternating over `paths`, each declaring one request message of that size (its
/// 5-byte prefix) and then sending it [`TRICKLE_CHUNK`] bytes every [`TRICKLE_EVERY`] as far as
/// flow control lets it, but never its last byte, until the call ends or `hold` passes. The
/// sizes go one after the other, each once the calls of the one before have ended: the small
/// ones together hold more than the server's budget whatever the large ones' refusals do to
/// the breaker the unconfigured monitors share.
/// `attempts` is the calls; `bytes_sent` the request bytes the server let through; `peak` the
/// most one call got through.
pub(super) async fn huge_messages(
    addr: SocketAddr,
    paths: &[&str],
    calls: usize,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let senders = connect_all(addr, 2).await;
    let mut observed = Observed::default();
    for declared in DECLARED {
        let mut running = Vec::with_capacity(calls);
        for i in 0..calls {
            observed.attempts += 1;
            let call = Call {
                path: paths[i % paths.len()],
                monitor: "huge",
                extra: &[],
            };
            match start(&senders, i, addr, call).await {
                Ok((response, body)) => running.push(tokio::spawn(async move {
                    let answer = tokio::spawn(ending(response, until));
                    let granted = trickle(body, declared, until, &answer).await;
                    let ending = answer
                        .await
                        .unwrap_or_else(|_| ("panicked".to_owned(), None));
                    (ending, granted)
                })),
                Err(error) => count(&mut observed, (error, None)),
            }
        }
        for call in running {
            if let Ok((ending, granted)) = call.await {
                observed.bytes_sent += granted;
                observed.peak = observed.peak.max(granted);
                count(&mut observed, ending);
            }
        }
    }
    observed.elapsed = started.elapsed();
    observed
}

/// Sends the prefix of a `declared`-byte message and then zeros, [`TRICKLE_CHUNK`] bytes every
/// [`TRICKLE_EVERY`] as flow control grants them, short of the message's last byte, until
/// `answer` finished or `until`; returns the bytes granted.
async fn trickle(
    mut body: h2::SendStream<Bytes>,
    declared: u32,
    until: Instant,
    answer: &tokio::task::JoinHandle<Ending>,
) -> u64 {
    let mut pending = Vec::from([0u8]);
    pending.extend_from_slice(&declared.to_be_bytes());
    // Everything but the message's last byte.
    let mut left = u64::from(declared) + 4;
    let mut granted = 0u64;
    while Instant::now() < until && !answer.is_finished() {
        if pending.is_empty() {
            let next = left.min(TRICKLE_CHUNK as u64) as usize;
            if next == 0 {
                // All but the last byte sent: hold the call as it is.
                tokio::time::sleep(TRICKLE_EVERY).await;
                continue;
            }
            pending = vec![0u8; next];
        }
        body.reserve_capacity(pending.len());
        let wait = TRICKLE_EVERY.min(until.saturating_duration_since(Instant::now()));
        let capacity =
            tokio::time::timeout(wait, std::future::poll_fn(|cx| body.poll_capacity(cx))).await;
        match capacity {
            Ok(Some(Ok(n))) if n > 0 => {
                let n = n.min(pending.len());
                let rest = pending.split_off(n);
                if body.send_data(Bytes::from(pending), false).is_err() {
                    break;
                }
                granted += n as u64;
                left -= n as u64;
                pending = rest;
                tokio::time::sleep(wait).await;
            }
            // Stream closed: the call has ended.
            Ok(None | Some(Err(_))) => break,
            // No capacity within the wait: try again.
            Ok(Some(Ok(_))) | Err(_) => {}
        }
    }
    granted
}

/// `streams` server-streaming calls (`Subscribe`, each on a topic of its own, one event a
/// second) as `monitor` over `conns` connections, all held until `hold` passes. `attempts` is
/// the calls; outcomes how they ended (`open`: still streaming at the end).
pub(super) async fn stream_flood(
    addr: SocketAddr,
    monitor: &str,
    streams: usize,
    conns: usize,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let senders = connect_all(addr, conns).await;
    let mut observed = Observed::default();
    let mut running = Vec::with_capacity(streams);
    for i in 0..streams {
        if Instant::now() >= until {
            break;
        }
        let message = pb::SubscribeRequest {
            topic: format!("flood-{i}"),
            rate: 1.0,
            payload_bytes: 8,
            ..Default::default()
        }
        .encode_to_vec();
        observed.attempts += 1;
        let call = Call {
            path: crate::SUBSCRIBE,
            monitor,
            extra: &[],
        };
        match start(&senders, i, addr, call).await {
            Ok((response, mut body)) => {
                let _ = body.send_data(grpc_message(&message), true);
                running.push(tokio::spawn(ending(response, until)));
            }
            Err(error) => count(&mut observed, (error, None)),
        }
    }
    collect(&mut observed, running).await;
    observed.elapsed = started.elapsed();
    observed
}

/// `ids` unary Echo calls over `conns` connections (`in_flight` at a time), each naming a
/// monitor of its own (`flood-<n>`), followed by three invalid ids (200 bytes long, with a
/// space, with `<>`), until done or `hold` passes. `attempts` is the calls; outcomes how they
/// ended.
pub(super) async fn monitor_id_flood(
    addr: SocketAddr,
    ids: usize,
    conns: usize,
    in_flight: usize,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let senders = connect_all(addr, conns).await;
    let invalid = ["x".repeat(200), "bad id".to_owned(), "bad<id>".to_owned()];
    let names = (0..ids).map(|i| format!("flood-{i}")).chain(invalid);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut observed = Observed::default();
    let mut running = Vec::new();
    for (i, monitor) in names.enumerate() {
        let Ok(place) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        if Instant::now() >= until {
            break;
        }
        observed.attempts += 1;
        let senders = senders.clone();
        running.push(tokio::spawn(async move {
            let _place = place;
            let call = Call {
                path: ECHO,
                monitor: &monitor,
                extra: &[],
            };
            match start(&senders, i, addr, call).await {
                Ok((response, mut body)) => {
                    let _ = body.send_data(grpc_message(&[]), true);
                    ending(response, until).await
                }
                Err(error) => (error, None),
            }
        }));
    }
    collect(&mut observed, running).await;
    observed.elapsed = started.elapsed();
    observed
}
