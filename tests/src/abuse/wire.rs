//! HTTP/2 written by hand, for the attacks the `h2` crate's client refuses to make: frames are a
//! 9-byte header and a payload, header blocks are HPACK literals without indexing (so the
//! server's decoder table never changes and no Huffman code is needed), and [`RawConn`] is a
//! client connection that sends whatever it is given and tallies what the server answers.
//!
//! It owns the wire format and the tally. It must not decide what to send: the attacks in
//! [`super::floods`] do.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 section 6).
pub mod kind {
    /// DATA
    pub const DATA: u8 = 0;
    /// HEADERS
    pub const HEADERS: u8 = 1;
    /// RST_STREAM
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS
    pub const SETTINGS: u8 = 4;
    /// PING
    pub const PING: u8 = 6;
    /// GOAWAY
    pub const GOAWAY: u8 = 7;
    /// CONTINUATION
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
}

/// The HTTP/2 error code CANCEL.
pub const CANCEL: u32 = 0x8;
/// The HTTP/2 error code ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The largest frame payload every peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
pub const MAX_FRAME: usize = 16_384;

/// One frame: header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `entries` (identifier, value).
pub fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(entries.len() * 6);
    for (id, value) in entries {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &payload)
}

/// An RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A DATA frame carrying one gRPC message of `message` bytes (length prefix included).
pub fn grpc_data(stream: u32, message: &[u8], end_stream: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(5 + message.len());
    payload.push(0);
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message);
    frame(
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream,
        &payload,
    )
}

/// Appends an HPACK integer with an `prefix_bits`-bit prefix whose high bits are `first`.
fn integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends one header as an HPACK "literal header field without indexing, new name", with
/// plain (not Huffman) strings.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    integer(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of a gRPC request to `path` on `authority`, with `extra` headers after the
/// standard ones.
pub fn request_block(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::with_capacity(256);
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        literal(&mut block, name, value.as_bytes());
    }
    block
}

/// `block` as a HEADERS frame followed by as many CONTINUATION frames as it needs
/// ([`MAX_FRAME`] bytes each), the last with END_HEADERS.
pub fn header_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    let mut out = Vec::with_capacity(block.len() + 9 * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() {
            flag::END_HEADERS
        } else {
            0
        };
        let (kind, flags) = if i == 0 {
            let end = if end_stream { flag::END_STREAM } else { 0 };
            (kind::HEADERS, last | end)
        } else {
            (kind::CONTINUATION, last)
        };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// What the server sent on one connection.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Frames received, by type.
    pub frames: BTreeMap<u8, u64>,
    /// The GOAWAY received, if any: (last stream id, error code).
    pub goaway: Option<(u32, u32)>,
    /// RST_STREAM frames received, by error code.
    pub resets: BTreeMap<u32, u64>,
    /// Streams that received at least one DATA frame (an answer with a message).
    pub streams_with_data: u64,
    /// HEADERS frames that ended their stream (trailers-only answers, refusals, trailers).
    pub headers_ending_stream: u64,
    /// PING and SETTINGS acknowledgements received, by frame type.
    pub acks: BTreeMap<u8, u64>,
    /// Bytes received.
    pub bytes: u64,
    /// When the first GOAWAY came, counted from the connect.
    pub goaway_after: Option<Duration>,
    /// When the server closed the connection (EOF or error), counted from the connect.
    pub closed_after: Option<Duration>,
    /// Stream ids that received DATA (to count each once).
    data_streams: std::collections::BTreeSet<u32>,
}

impl Tally {
    /// Counts a frame received `at` (since the connect).
    fn record(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8], at: Duration) {
        *self.frames.entry(kind).or_default() += 1;
        self.bytes += 9 + payload.len() as u64;
        match kind {
            kind::GOAWAY if payload.len() >= 8 => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                self.goaway = Some((last & 0x7fff_ffff, code));
                self.goaway_after.get_or_insert(at);
            }
            kind::RST_STREAM if payload.len() >= 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                *self.resets.entry(code).or_default() += 1;
            }
            kind::DATA if self.data_streams.insert(stream) => self.streams_with_data += 1,
            kind::HEADERS if flags & flag::END_STREAM != 0 => self.headers_ending_stream += 1,
            kind::PING | kind::SETTINGS if flags & flag::ACK != 0 => {
                *self.acks.entry(kind).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Frames of `kind` received.
    pub fn count(&self, kind: u8) -> u64 {
        self.frames.get(&kind).copied().unwrap_or(0)
    }

    /// When the server first sent the connection away (GOAWAY) or closed it, since the connect.
    pub fn sent_away_after(&self) -> Option<Duration> {
        match (self.goaway_after, self.closed_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acknowledgements (PING or SETTINGS frames with ACK) of `kind` received.
    pub fn acks(&self, kind: u8) -> u64 {
        self.acks.get(&kind).copied().unwrap_or(0)
    }
}

/// Whether a [`RawConn`] reads what the server sends while the attack writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Read and tally every frame as it comes.
    Drain,
    /// Read nothing until [`RawConn::finish`]: the server's replies back up in the socket, as
    /// with a client that never reads (the classic PING and SETTINGS flood).
    Ignore,
}

/// A client HTTP/2 connection written frame by frame.
pub struct RawConn {
    write: OwnedWriteHalf,
    tally: Arc<parking_lot::Mutex<Tally>>,
    /// Opens the reader when [`Reading::Ignore`] held it back.
    gate: watch::Sender<bool>,
    reader: tokio::task::JoinHandle<()>,
    /// Bytes written so far, the preface included.
    pub bytes_sent: u64,
    /// The next client stream id.
    next_stream: u32,
    /// `host:port` for `:authority`.
    pub authority: String,
}

impl RawConn {
    /// Connects, sends the preface and an empty SETTINGS, waits (up to `limit`) for the server's
    /// SETTINGS and acknowledges them, as a well-behaved client would. Only a failed TCP connect
    /// is an error: a server that sends the connection away or closes it during the handshake
    /// shows in the [`Tally`].
    pub async fn connect(addr: SocketAddr, reading: Reading, limit: Duration) -> io::Result<Self> {
        let started = Instant::now();
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut read, mut write) = tcp.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[]));
        let mut tally = Tally::default();
        let settled = tokio::time::timeout(limit, async {
            write.write_all(&hello).await?;
            loop {
                let (kind, flags, stream, payload) = read_frame(&mut read).await?;
                tally.record(kind, flags, stream, &payload, started.elapsed());
                if kind == kind::SETTINGS && flags & flag::ACK == 0 {
                    let ack = frame(kind::SETTINGS, flag::ACK, 0, &[]);
                    write.write_all(&ack).await?;
                    return Ok::<_, io::Error>(ack.len());
                }
            }
        })
        .await;
        let (bytes_sent, open) = match settled {
            Ok(Ok(ack)) => ((hello.len() + ack) as u64, true),
            // Closed (or silent) before the handshake ended: nothing more to read.
            Ok(Err(_)) | Err(_) => {
                tally.closed_after = Some(started.elapsed());
                (hello.len() as u64, false)
            }
        };
        let tally = Arc::new(parking_lot::Mutex::new(tally));
        let (gate, mut opened) = watch::channel(reading == Reading::Drain);
        let shared = Arc::clone(&tally);
        let reader = tokio::spawn(async move {
            // A dropped gate sender means the connection is being torn down: read nothing.
            if !open || opened.wait_for(|open| *open).await.is_err() {
                return;
            }
            loop {
                match read_frame(&mut read).await {
                    Ok((kind, flags, stream, payload)) => {
                        let at = started.elapsed();
                        shared.lock().record(kind, flags, stream, &payload, at);
                    }
                    Err(_) => {
                        shared.lock().closed_after = Some(started.elapsed());
                        return;
                    }
                }
            }
        });
        Ok(Self {
            write,
            tally,
            gate,
            reader,
            bytes_sent,
            next_stream: 1,
            authority: addr.to_string(),
        })
    }

    /// Writes `bytes`; an error means the server closed or reset the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write.write_all(bytes).await?;
        self.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// A fresh client stream id (odd, increasing).
    pub fn stream_id(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// What the server sent so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().clone()
    }

    /// Whether the server has closed the connection or sent GOAWAY (as far as read so far).
    pub fn sent_away(&self) -> bool {
        let tally = self.tally.lock();
        tally.goaway.is_some() || tally.closed_after.is_some()
    }

    /// Stops writing, reads what the server still sends for up to `drain` (what it had sent
    /// when the reader was held back), and returns the tally. The connection stays open until
    /// then, so a close in the tally is the server's.
    pub async fn finish(self, drain: Duration) -> Tally {
        let _ = self.gate.send(true);
        let mut reader = self.reader;
        if tokio::time::timeout(drain, &mut reader).await.is_err() {
            reader.abort();
        }
        drop(self.write);
        self.tally.lock().clone()
    }
}

/// Reads one frame: (type, flags, stream id, payload).
pub(super) async fn read_frame(read: &mut OwnedReadHalf) -> io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_use_the_prefix_then_seven_bit_groups() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        let mut out = Vec::new();
        integer(&mut out, 0, 7, 10);
        assert_eq!(out, [10]);
    }

    #[test]
    fn a_long_block_splits_into_headers_and_continuations() {
        let block = vec![0u8; MAX_FRAME * 2 + 1];
        let frames = header_frames(1, &block, true);
        assert_eq!(frames.len(), block.len() + 27);
        assert_eq!(frames[3], kind::HEADERS);
        assert_eq!(frames[4], flag::END_STREAM);
        let second = 9 + MAX_FRAME;
        assert_eq!(frames[second + 3], kind::CONTINUATION);
        assert_eq!(frames[second + 4], 0);
        let third = 2 * (9 + MAX_FRAME);
        assert_eq!(frames[third + 4], flag::END_HEADERS);
    }
}
