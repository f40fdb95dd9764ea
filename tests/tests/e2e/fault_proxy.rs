//! The fault-injection proxy itself, against a real echo server on loopback.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::fault::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bound of every wait that is expected to succeed.
const LIMIT: Duration = Duration::from_secs(5);

/// How long a read must stay silent to count as "timed out".
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server: writes back everything it reads, on every connection. Aborting the returned
/// task stops it (connections included, as they belong to its `JoinSet`).
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            connections.spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, task)
}

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = bounded("connect", TcpStream::connect(proxy.addr()))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Writes `message` and reads exactly as many bytes back, returning them.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    bounded("echo", stream.read_exact(&mut back)).await.unwrap();
    back
}

/// Waits until `condition` holds, failing the test after [`LIMIT`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    bounded(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Whether a read shows the connection closed by the other side: EOF or a reset.
fn closed(read: io::Result<usize>) -> bool {
    match read {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

#[tokio::test]
async fn passes_bytes_both_ways_and_counts_connections() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(proxy.upstream(), upstream);
    assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));

    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    assert_eq!(round_trip(&mut a, b"hello").await, b"hello");
    // A payload larger than one chunk and than the socket buffers, read while being written.
    let big: Vec<u8> = (0..4 * 1024 * 1024_u32).map(|i| i as u8).collect();
    let (mut read, mut write) = b.split();
    let (_, back) = bounded("big echo", async {
        tokio::join!(write.write_all(&big), async {
            let mut back = vec![0; big.len()];
            read.read_exact(&mut back).await.unwrap();
            back
        })
    })
    .await;
    assert!(back == big, "the echoed bytes differ");
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.connections(), 2);

    // A client's close reaches the upstream, whose close comes back: the connection ends.
    drop(a);
    eventually("one connection closed", || proxy.connections() == 1).await;
    b.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded("EOF", b.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    eventually("all connections closed", || proxy.connections() == 0).await;
    server.abort();
}

#[tokio::test]
async fn black_hole_holds_bytes_but_keeps_sockets_open() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    proxy.set(Fault::BlackHole);
    assert_eq!(proxy.fault(), Fault::BlackHole);
    open.write_all(b"lost?").await.unwrap();
    let mut buf = [0; 16];
    assert!(
        tokio::time::timeout(SILENCE, open.read(&mut buf))
            .await
            .is_err(),
        "a read through a black hole returned"
    );
    // New connections are still accepted, and are just as silent.
    let mut new = connect(&proxy).await;
    new.write_all(b"new").await.unwrap();
    assert!(
        tokio::time::timeout(SILENCE, new.read(&mut buf))
            .await
            .is_err(),
        "a read on a new connection through a black hole returned"
    );
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.connections(), 2);

    // Nothing was closed or dropped: lifting the fault delivers the held bytes, in order.
    proxy.set(Fault::Pass);
    let mut back = [0; 5];
    bounded("held bytes", open.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"lost?");
    let mut back = [0; 3];
    bounded("held bytes", new.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"new");
    assert_eq!(round_trip(&mut open, b"after").await, b"after");
    server.abort();
}

#[tokio::test]
async fn a_connection_made_during_a_black_hole_reaches_the_upstream_only_once_lifted() {
    // An echo server that counts the connections it accepted.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            connections.spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let count = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    let proxy = FaultProxy::start(upstream).await.unwrap();
    proxy.set(Fault::BlackHole);
    // One client gives up (it wrote first, as an HTTP/2 client writes its preface), one stays.
    let mut gave_up = connect(&proxy).await;
    gave_up.write_all(b"preface").await.unwrap();
    drop(gave_up);
    let mut stays = connect(&proxy).await;
    stays.write_all(b"held").await.unwrap();
    tokio::time::sleep(SILENCE).await;
    assert_eq!(
        count(),
        0,
        "the upstream heard of a connection made into the black hole"
    );

    proxy.set(Fault::Pass);
    let mut back = [0; 4];
    bounded("held bytes", stays.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"held");
    tokio::time::sleep(SILENCE).await;
    assert_eq!(
        count(),
        1,
        "only the client that stayed reaches the upstream"
    );
    assert_eq!(round_trip(&mut stays, b"after").await, b"after");
    server.abort();
}

#[tokio::test]
async fn latency_delays_every_chunk_in_both_directions_in_order() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut stream = connect(&proxy).await;
    round_trip(&mut stream, b"warm-up").await;

    let delay = Duration::from_millis(100);
    proxy.set(Fault::Latency(delay));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
    let elapsed = started.elapsed();
    // Once on the way out, once on the way back.
    assert!(elapsed >= 2 * delay, "round trip took only {elapsed:?}");

    // Chunks written in a burst keep their order and are pipelined, not delayed one by one.
    let started = Instant::now();
    let mut expected = Vec::new();
    for i in 0..20_u8 {
        let chunk = [i; 100];
        stream.write_all(&chunk).await.unwrap();
        expected.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut back = vec![0; expected.len()];
    bounded("burst", stream.read_exact(&mut back))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(back == expected, "bytes reordered");
    assert!(elapsed >= 2 * delay, "burst took only {elapsed:?}");
    assert!(
        elapsed < 20 * delay,
        "chunks were not pipelined: {elapsed:?}"
    );

    proxy.set(Fault::Pass);
    let started = Instant::now();
    round_trip(&mut stream, b"fast").await;
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());
    server.abort();
}

#[tokio::test]
async fn reset_all_resets_every_connection() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    round_trip(&mut a, b"a").await;
    round_trip(&mut b, b"b").await;
    // Also while black-holed: a reset is not traffic.
    proxy.set(Fault::BlackHole);

    proxy.reset_all();
    for stream in [&mut a, &mut b] {
        let mut buf = [0; 8];
        let read = bounded("reset", stream.read(&mut buf)).await;
        let error = read.expect_err("read after reset_all succeeded");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }
    eventually("connections gone", || proxy.connections() == 0).await;

    // The proxy itself carries on.
    proxy.set(Fault::Pass);
    let mut c = connect(&proxy).await;
    assert_eq!(round_trip(&mut c, b"again").await, b"again");
    assert_eq!(proxy.accepted(), 3);
    server.abort();
}

#[tokio::test]
async fn refuse_closes_new_connections_at_once() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"open").await;

    proxy.set(Fault::Refuse);
    let started = Instant::now();
    let mut refused = connect(&proxy).await;
    let mut buf = [0; 8];
    let read = bounded("refused read", refused.read(&mut buf)).await;
    assert!(closed(read), "refused connection not closed");
    assert!(started.elapsed() < Duration::from_secs(1));
    eventually("refused connection counted", || proxy.accepted() == 2).await;
    assert_eq!(proxy.connections(), 1);

    // The connection opened before keeps working.
    assert_eq!(round_trip(&mut open, b"still").await, b"still");

    proxy.set(Fault::Pass);
    let mut c = connect(&proxy).await;
    assert_eq!(round_trip(&mut c, b"back").await, b"back");
    server.abort();
}

#[tokio::test]
async fn unreachable_upstream_resets_the_client() {
    // A port nobody listens on: bind one, then free it.
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = FaultProxy::start(free).await.unwrap();
    let mut stream = connect(&proxy).await;
    let mut buf = [0; 8];
    let read = bounded("read", stream.read(&mut buf)).await;
    assert!(closed(read), "connection to a dead upstream not closed");
    eventually("connection gone", || proxy.connections() == 0).await;
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    let (upstream, server) = echo_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let addr = proxy.addr();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"x").await;
    let mut held = connect(&proxy).await;
    proxy.set(Fault::Latency(Duration::from_secs(60)));
    held.write_all(b"held").await.unwrap();

    drop(proxy);
    for stream in [&mut open, &mut held] {
        let mut buf = [0; 8];
        let read = bounded("close after drop", stream.read(&mut buf)).await;
        assert!(closed(read), "connection survived the proxy");
    }
    // The listener is gone too.
    bounded("listener closed", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.abort();
}
