//! gRPC length-prefixed message framing (1 flag byte, 4-byte big-endian length, payload).
//!
//! [`MessageScanner`] follows message boundaries across DATA chunks without copying, for the
//! pass-through path that only needs to enforce the size limit. [`MessageSplitter`] cuts the
//! stream into whole messages for paths that must handle messages individually (shared
//! subscriptions fan out whole messages, so a late joiner starts on a boundary).

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the prefix before every gRPC message.
pub(crate) const PREFIX_LEN: usize = 5;

/// A message that breaks the framing rules or the size limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The message is larger than allowed.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The declared payload length.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({missing} bytes missing)")]
    Truncated {
        /// Bytes that never arrived.
        missing: usize,
    },
}

/// Tracks message boundaries in a byte stream that is forwarded unchanged.
#[derive(Debug)]
pub(crate) struct MessageScanner {
    limit: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    payload_left: usize,
    messages: u64,
}

impl MessageScanner {
    /// A scanner that rejects payloads larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            payload_left: 0,
            messages: 0,
        }
    }

    /// Accounts for the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FrameError> {
        if chunk.len() >= WARM_FROM {
            warm(chunk);
        }
        let mut rest = chunk;
        // One turn per message: skip the rest of its payload, then read the next prefix.
        loop {
            if self.payload_left >= rest.len() {
                self.payload_left -= rest.len();
                return Ok(());
            }
            rest = &rest[self.payload_left..];
            self.payload_left = 0;
            let size = if self.prefix_len == 0 && rest.len() >= PREFIX_LEN {
                // Common case: the whole prefix is in this chunk; read it in place.
                let size = declared_len(rest);
                rest = &rest[PREFIX_LEN..];
                size
            } else {
                let take = (PREFIX_LEN - self.prefix_len).min(rest.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&rest[..take]);
                self.prefix_len += take;
                rest = &rest[take..];
                if self.prefix_len < PREFIX_LEN {
                    return Ok(());
                }
                self.prefix_len = 0;
                declared_len(&self.prefix)
            };
            if size > self.limit {
                return Err(FrameError::TooLarge {
                    size,
                    limit: self.limit,
                });
            }
            self.payload_left = size;
            self.messages += 1;
        }
    }

    /// Messages whose prefix has been seen so far.
    #[cfg(test)]
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Messages that arrived whole so far (the last one may still be arriving).
    pub fn completed(&self) -> u64 {
        self.messages - u64::from(self.payload_left > 0)
    }

    /// Checks that the stream did not stop inside a message.
    pub fn finish(&self) -> Result<(), FrameError> {
        let missing = if self.prefix_len > 0 {
            PREFIX_LEN - self.prefix_len
        } else {
            self.payload_left
        };
        if missing == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { missing })
        }
    }
}

/// Cuts a byte stream into whole framed messages (prefix included), copying only the messages
/// that straddle chunk boundaries.
#[derive(Debug)]
pub(crate) struct MessageSplitter {
    limit: usize,
    partial: BytesMut,
    chunk: Bytes,
}

impl MessageSplitter {
    /// A splitter that rejects payloads larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            partial: BytesMut::new(),
            chunk: Bytes::new(),
        }
    }

    /// Adds the next chunk; call [`MessageSplitter::next_message`] until it returns `None`
    /// before pushing again.
    pub fn push(&mut self, chunk: Bytes) {
        if self.partial.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            self.partial.extend_from_slice(&self.chunk);
            self.chunk.clear();
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// The next complete message, prefix included, if one has fully arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if !self.partial.is_empty() {
            return match self.complete_len(&self.partial)? {
                Some(len) => Ok(Some(self.partial.split_to(len).freeze())),
                None => Ok(None),
            };
        }
        match self.complete_len(&self.chunk)? {
            Some(len) => Ok(Some(self.chunk.split_to(len))),
            None => {
                if !self.chunk.is_empty() {
                    self.partial.extend_from_slice(&self.chunk);
                    self.chunk.clear();
                }
                Ok(None)
            }
        }
    }

    /// Bytes held that are not yet part of a message handed out.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.chunk.len()
    }

    /// Checks that no partial message is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        let buffered = self.buffered();
        if buffered == 0 {
            return Ok(());
        }
        let source = if self.partial.is_empty() {
            &self.chunk[..]
        } else {
            &self.partial[..]
        };
        let missing = if source.len() < PREFIX_LEN {
            PREFIX_LEN - source.len()
        } else {
            // Saturating: after a `TooLarge`, or with a whole message not taken, more than the
            // declared message is buffered. Still an error, never an overflow.
            PREFIX_LEN
                .saturating_add(declared_len(source))
                .saturating_sub(source.len())
        };
        Err(FrameError::Truncated { missing })
    }

    fn complete_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let size = declared_len(buf);
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok((buf.len() >= PREFIX_LEN + size).then_some(PREFIX_LEN + size))
    }
}

/// Chunks from this size on are loaded into the cache before they are scanned.
const WARM_FROM: usize = 4096;

/// Reads one byte of every cache line of `chunk`.
///
/// A chunk that waited in a receive window (a saturated stream) is no longer in the CPU's
/// caches. The scan reads it as a chain, each prefix giving the position of the next, so every
/// message would wait a full memory latency in turn. These reads do not depend on each other,
/// so the CPU overlaps them: measured on 64 MiB of 256-byte messages, scanning went from 34 to
/// 13 ns per message, and the bytes are then in cache for the copy that sends them.
fn warm(chunk: &[u8]) {
    const LINE: usize = 64;
    let mut sum = 0u8;
    for line in chunk.chunks(LINE) {
        sum ^= line[0];
    }
    std::hint::black_box(sum);
}

fn declared_len(prefix: &[u8]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

/// Prefixes a payload as an uncompressed gRPC message.
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    framed.put_slice(payload);
    framed.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn stream() -> Vec<u8> {
        [frame(b"hello"), frame(b""), frame(&[7; 300])].concat()
    }

    #[test]
    fn scanner_counts_messages_across_any_split() {
        let bytes = stream();
        for split in 1..bytes.len() {
            let mut scanner = MessageScanner::new(1000);
            for chunk in bytes.chunks(split) {
                scanner.feed(chunk).unwrap();
            }
            assert_eq!(scanner.messages(), 3);
            scanner.finish().unwrap();
        }
    }

    #[test]
    fn scanner_rejects_large_and_truncated_messages() {
        let mut scanner = MessageScanner::new(100);
        assert_eq!(
            scanner.feed(&frame(&[0; 101])),
            Err(FrameError::TooLarge {
                size: 101,
                limit: 100
            })
        );
        let mut scanner = MessageScanner::new(100);
        scanner.feed(&frame(b"abc")[..6]).unwrap();
        assert_eq!(scanner.finish(), Err(FrameError::Truncated { missing: 2 }));
    }

    #[test]
    fn splitter_yields_whole_messages_across_any_split() {
        let bytes = stream();
        for split in 1..bytes.len() {
            let mut splitter = MessageSplitter::new(1000);
            let mut messages = Vec::new();
            for chunk in bytes.chunks(split) {
                splitter.push(Bytes::copy_from_slice(chunk));
                while let Some(message) = splitter.next_message().unwrap() {
                    messages.push(message);
                }
            }
            splitter.finish().unwrap();
            assert_eq!(messages.len(), 3, "split {split}");
            assert_eq!(&messages[0][..], &frame(b"hello")[..]);
            assert_eq!(messages[2].len(), 305);
        }
    }

    #[test]
    fn splitter_reports_truncation_and_limits() {
        let mut splitter = MessageSplitter::new(10);
        splitter.push(Bytes::from(frame(&[1; 11])));
        assert!(matches!(
            splitter.next_message(),
            Err(FrameError::TooLarge { .. })
        ));
        let mut splitter = MessageSplitter::new(10);
        splitter.push(Bytes::from(frame(b"abcd")[..7].to_vec()));
        assert_eq!(splitter.next_message().unwrap(), None);
        assert_eq!(splitter.finish(), Err(FrameError::Truncated { missing: 2 }));
    }
}
