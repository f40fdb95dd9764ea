//! Write coalescing for HTTP/2 connection tasks.
//!
//! Stream tasks queue frames and wake their connection's task, which then writes. Two things
//! would otherwise make that one system call per frame:
//! - polled at once, the connection writes the frames of the first stream task that woke it;
//!   [`YieldFirst`] defers each wake-up by one scheduler round, so that every stream task that
//!   is ready runs and queues its frames first. A monitor connection that has just accepted a
//!   stream accepts the next one at once ([`YieldFirst::resumed`]): the calls of a batch are
//!   all spawned before any of them opens its upstream stream, so their requests reach the
//!   upstream connection together;
//! - h2 writes each DATA frame larger than a few hundred bytes with a `writev` of its own, and
//!   flushes after each. [`CoalescedIo`] takes those writes into one buffer and the
//!   connection's driver writes it out once per poll ([`Flusher::flush_deferred`]), or as soon
//!   as [`FLUSH_AT`] bytes are waiting.
//!
//! Under light load this costs one scheduler round and one copy of each byte; under load it
//! saves most of the system calls, and the peer wakes once per batch instead of once per frame.
//! Nothing here knows about HTTP/2: it only decides when bytes reach the socket, and so how
//! little each stream needs queued to keep it busy ([`SEND_BUFFER_BYTES`], which both the
//! monitor side and the upstream side give h2).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes at which a flush writes at once instead of at the end of the poll.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// Most bytes h2 queues per stream for writing, on both sides (the monitor connections of
/// `front` and the upstream ones of `pool::connector`). The connection's write buffer here
/// gathers frames across streams, so a stream needs no more than this to keep its socket busy:
/// 64 KiB gave the same throughput under one and 100 saturated streams, with about 5 MB more
/// peak RSS at 100.
pub(crate) const SEND_BUFFER_BYTES: usize = 32 * 1024;
/// Most bytes buffered; writes beyond this wait until the socket takes some. It bounds what a
/// monitor that stopped reading costs on top of its streams' own send buffers.
const BUFFER_LIMIT: usize = FLUSH_AT + 32 * 1024;
/// Buffer capacity kept between polls. A buffer that outgrows it grows to [`BUFFER_LIMIT`] at
/// once (one allocation instead of a copy per doubling), and is freed again after a poll of the
/// connection that buffered less than this: a busy connection does not allocate on every poll,
/// and one that goes quiet keeps the large buffer only until its next poll (never more than
/// [`BUFFER_LIMIT`]).
const RETAINED_CAPACITY: usize = 16 * 1024;

/// Wraps a future so that each wake-up is deferred by one scheduler round.
pub(crate) struct YieldFirst<F> {
    inner: F,
    yielded: bool,
}

impl<F> YieldFirst<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }

    /// Polls `inner` at once on the first poll, and defers later wake-ups. For a task that is
    /// running anyway: it has no wake-up to defer.
    pub(crate) fn resumed(inner: F) -> Self {
        Self {
            inner,
            yielded: true,
        }
    }
}

impl<F: Future + Unpin> Future for YieldFirst<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Wraps `io` for an HTTP/2 connection: the connection writes into a buffer, and its driver
/// writes the buffer out through the returned [`Flusher`] after each poll.
pub(crate) fn coalesced<T>(io: T) -> (CoalescedIo<T>, Flusher<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        pending: Vec::new(),
        written: 0,
        buffered_this_poll: 0,
        unflushed: false,
        deferred: false,
        error: None,
    }));
    (
        CoalescedIo {
            shared: Arc::clone(&shared),
        },
        Flusher { shared },
    )
}

/// The transport half given to h2.
///
/// Until the driver first calls [`Flusher::flush_deferred`] (during the HTTP/2 handshake,
/// which nobody drives yet), every flush writes at once.
pub(crate) struct CoalescedIo<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

/// The driver's half: writes out what the connection buffered.
pub(crate) struct Flusher<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

struct Shared<T> {
    io: T,
    /// Bytes accepted from the connection; `pending[written..]` has not reached the socket.
    pending: Vec<u8>,
    written: usize,
    /// Bytes buffered since the driver's last flush: whether the connection is busy enough to
    /// keep a large buffer.
    buffered_this_poll: usize,
    /// Bytes went to `io` since its last flush. A TLS stream may still hold some of them after
    /// a write that met a full socket; only its flush sends them.
    unflushed: bool,
    /// Flushes below [`FLUSH_AT`] are left to the driver.
    deferred: bool,
    /// A write error met by the driver, reported on the connection's next write or flush.
    error: Option<io::Error>,
}

impl<T: AsyncWrite + Unpin> Shared<T> {
    fn unwritten(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Writes buffered bytes and flushes `io`, until nothing is left or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.error.take() {
            return Poll::Ready(Err(error));
        }
        while self.written < self.pending.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // Behind a slow reader the buffer never empties: drop what was sent, so
                    // that it holds no more than the unsent bytes.
                    self.pending.drain(..self.written);
                    self.written = 0;
                    return Poll::Pending;
                }
            }
        }
        self.written = 0;
        self.pending.clear();
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Appends `data` to the buffer (the caller has checked the room).
    fn buffer(&mut self, data: &[u8]) {
        let needed = self.pending.len() + data.len();
        if needed > self.pending.capacity() {
            let target = if needed > RETAINED_CAPACITY {
                BUFFER_LIMIT.max(needed)
            } else {
                RETAINED_CAPACITY
            };
            self.pending.reserve_exact(target - self.pending.len());
        }
        self.pending.extend_from_slice(data);
        self.buffered_this_poll += data.len();
    }

    /// Makes room for a write: drains first when the buffer is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Some(error) = self.error.take() {
            return Poll::Ready(Err(error));
        }
        if self.unwritten() >= BUFFER_LIMIT {
            // Pending only while the socket cannot take the whole buffer; a partial write
            // still makes room.
            if let Poll::Ready(Err(error)) = self.poll_drain(cx) {
                return Poll::Ready(Err(error));
            }
            if self.unwritten() >= BUFFER_LIMIT {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(BUFFER_LIMIT - self.unwritten()))
    }
}

impl<T: AsyncWrite + Unpin> Flusher<T> {
    /// Writes out what the connection buffered during its last poll. Call it after each poll
    /// of the connection, from the same task: when the socket is full, that task is woken once
    /// it can take more.
    pub(crate) fn flush_deferred(&self, cx: &mut Context<'_>) {
        let mut shared = self.shared.lock();
        shared.deferred = true;
        match shared.poll_drain(cx) {
            Poll::Ready(Ok(())) => {
                if shared.pending.capacity() > RETAINED_CAPACITY
                    && shared.buffered_this_poll < RETAINED_CAPACITY
                {
                    shared.pending = Vec::new();
                }
            }
            Poll::Ready(Err(error)) => {
                // The connection learns of it on its next write or flush, which every poll of
                // an HTTP/2 connection ends with; poll it again so it does.
                shared.error = Some(error);
                cx.waker().wake_by_ref();
            }
            Poll::Pending => {}
        }
        shared.buffered_this_poll = 0;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.shared.lock();
        let room = ready!(shared.poll_room(cx))?;
        let n = room.min(buf.len());
        shared.buffer(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.shared.lock();
        let mut room = ready!(shared.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            let take = room.min(buf.len());
            shared.buffer(&buf[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        // Copying a chain of slices is as cheap as copying one; saying so keeps h2 from
        // copying large DATA frames into its own buffer first.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        if shared.deferred && shared.unwritten() < FLUSH_AT {
            if let Some(error) = shared.error.take() {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(()));
        }
        shared.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        ready!(shared.poll_drain(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Polls `f` once with a no-op waker.
    fn poll_once<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        f(&mut cx)
    }

    #[tokio::test]
    async fn deferred_flushes_reach_the_socket_only_when_the_driver_flushes() {
        let (near, mut far) = tokio::io::duplex(BUFFER_LIMIT * 2);
        let (mut io, flusher) = coalesced(near);
        // Before the driver runs (the handshake), a flush writes at once.
        io.write_all(b"preface").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 7];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"preface");

        poll_once(|cx| flusher.flush_deferred(cx));
        io.write_all(b"frame one;").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"frame two").await.unwrap();
        io.flush().await.unwrap();
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut probe)).await;
        assert!(early.is_err(), "a small deferred flush must not write");

        poll_once(|cx| flusher.flush_deferred(cx));
        let mut got = [0u8; 19];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"frame one;frame two");
    }

    #[tokio::test]
    async fn a_full_flush_threshold_writes_without_waiting_for_the_driver() {
        let (near, mut far) = tokio::io::duplex(BUFFER_LIMIT * 2);
        let (mut io, flusher) = coalesced(near);
        poll_once(|cx| flusher.flush_deferred(cx));
        let chunk = vec![7u8; FLUSH_AT];
        io.write_all(&chunk).await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0u8; FLUSH_AT];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, chunk);
    }

    #[tokio::test]
    async fn a_slow_reader_holds_writes_back_at_the_buffer_limit() {
        // The peer takes nothing: the socket fills, then the buffer, then writes wait.
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut io, flusher) = coalesced(near);
        poll_once(|cx| flusher.flush_deferred(cx));
        let data = vec![1u8; BUFFER_LIMIT + 4096];
        let accepted = poll_once(|cx| {
            let mut total = 0;
            while let Poll::Ready(Ok(n)) = Pin::new(&mut io).poll_write(cx, &data[total..]) {
                total += n;
                if total == data.len() {
                    break;
                }
            }
            total
        });
        assert!(
            accepted <= BUFFER_LIMIT + 1024,
            "accepted {accepted} bytes past a full buffer"
        );
        // Once the peer reads, everything gets through.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            while got.len() < data.len() {
                let n = far.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let rest = vec![1u8; BUFFER_LIMIT + 4096 - accepted];
        io.write_all(&rest).await.unwrap();
        io.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), BUFFER_LIMIT + 4096);
    }

    /// A transport that, like a TLS stream, takes writes into a buffer of its own and sends
    /// them only when flushed.
    struct SendsOnFlush {
        inner: tokio::io::DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for SendsOnFlush {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for SendsOnFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_driver_flushes_a_transport_that_holds_writes_back() {
        let (near, mut far) = tokio::io::duplex(BUFFER_LIMIT * 2);
        let (mut io, flusher) = coalesced(SendsOnFlush {
            inner: near,
            held: Vec::new(),
        });
        poll_once(|cx| flusher.flush_deferred(cx));
        io.write_all(b"last frame").await.unwrap();
        io.flush().await.unwrap();
        poll_once(|cx| flusher.flush_deferred(cx));
        let mut got = [0u8; 10];
        tokio::time::timeout(std::time::Duration::from_secs(5), far.read_exact(&mut got))
            .await
            .expect("the bytes must not stay in the transport's buffer")
            .unwrap();
        assert_eq!(&got, b"last frame");
    }

    #[tokio::test]
    async fn a_reader_that_keeps_falling_behind_does_not_grow_the_buffer() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut io, flusher) = coalesced(near);
        poll_once(|cx| flusher.flush_deferred(cx));
        let data = vec![3u8; 8192];
        let mut sink = vec![0u8; 4096];
        for _ in 0..100 {
            // A fresh cooperative budget, as a connection task has on each poll: the duplex
            // refuses all writes once the test task has used its budget up.
            tokio::task::yield_now().await;
            // Fill until the connection's writes must wait, then let the reader take a little.
            poll_once(
                |cx| while let Poll::Ready(Ok(_)) = Pin::new(&mut io).poll_write(cx, &data) {},
            );
            let held = io.shared.lock().pending.len();
            assert!(
                held <= BUFFER_LIMIT,
                "{held} bytes held behind a slow reader"
            );
            let _ = far.read(&mut sink).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_busy_connection_keeps_its_buffer_and_an_idle_one_frees_it() {
        let (near, mut far) = tokio::io::duplex(BUFFER_LIMIT * 4);
        let (mut io, flusher) = coalesced(near);
        poll_once(|cx| flusher.flush_deferred(cx));
        let capacity = |io: &CoalescedIo<_>| io.shared.lock().pending.capacity();
        let mut sink = vec![0u8; BUFFER_LIMIT];
        // Large polls: the buffer grows to its limit in one step and stays.
        for _ in 0..3 {
            io.write_all(&[5u8; 40 * 1024]).await.unwrap();
            assert_eq!(capacity(&io), BUFFER_LIMIT, "grown in one step");
            poll_once(|cx| flusher.flush_deferred(cx));
            assert_eq!(capacity(&io), BUFFER_LIMIT, "kept while busy");
            far.read_exact(&mut sink[..40 * 1024]).await.unwrap();
        }
        // A quiet poll: the large buffer is freed.
        io.write_all(b"ping").await.unwrap();
        poll_once(|cx| flusher.flush_deferred(cx));
        assert_eq!(capacity(&io), 0);
        far.read_exact(&mut sink[..4]).await.unwrap();
        assert_eq!(&sink[..4], b"ping");
    }

    #[tokio::test]
    async fn a_write_error_met_by_the_driver_reaches_the_connection() {
        let (near, far) = tokio::io::duplex(64);
        let (mut io, flusher) = coalesced(near);
        poll_once(|cx| flusher.flush_deferred(cx));
        drop(far);
        io.write_all(b"lost").await.unwrap();
        io.flush().await.unwrap();
        poll_once(|cx| flusher.flush_deferred(cx));
        let error = io.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    /// Polls a future that is always ready: how many polls it took, and how many wake-ups.
    fn polls_until_ready(mut future: YieldFirst<std::future::Ready<()>>) -> (u32, u32) {
        let (wakes, waker) = crate::testing::WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        loop {
            polls += 1;
            if Pin::new(&mut future).poll(&mut cx).is_ready() {
                break;
            }
            assert!(polls < 3, "never ready");
        }
        (polls, wakes.take())
    }

    #[test]
    fn a_new_yield_first_defers_one_round_and_a_resumed_one_does_not() {
        // Woken: it lets the other ready tasks run first, and asks to be polled again.
        assert_eq!(
            polls_until_ready(YieldFirst::new(std::future::ready(()))),
            (2, 1)
        );
        // Running anyway (the connection just accepted a stream): straight to the inner poll.
        assert_eq!(
            polls_until_ready(YieldFirst::resumed(std::future::ready(()))),
            (1, 0)
        );
    }
}
