//! Backpressure: a slow monitor slows only its own stream (block), or is cut off as lagging
//! (disconnect); buffering per stream stays bounded either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_config::LagPolicy;
use sluice_tests::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slow_monitor_does_not_slow_a_fast_one_on_the_same_connection() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.max_connections = Some(1);
    let proxy = sluice(config).await;

    // The slow monitor reads one event and then nothing.
    let mut slow_client = client(proxy.addr()).await;
    let mut slow = subscribe_on(&mut slow_client, subscribe("slow", 0.0, 1024, 0), "slow").await;
    slow.message().await.unwrap().unwrap();

    // The fast monitor, on another client connection but the same upstream connection, must
    // still get everything.
    const FAST_EVENTS: u64 = 20_000;
    let received = bounded(
        LIMIT,
        "fast monitor",
        receive_in_order(proxy.addr(), FAST_EVENTS),
    )
    .await;
    assert_eq!(received, FAST_EVENTS);
    assert_eq!(
        proxy.snapshot().connections,
        1,
        "both streams shared one upstream connection"
    );

    // Flow control held the slow stream's upstream back: it produced only about the windows
    // and buffers along the path (a few MiB), not what the fast one got.
    let slow_sent = upstream.stats.snapshot().events_sent - FAST_EVENTS;
    assert!(
        slow_sent < 8_000,
        "slow stream was not held back: {slow_sent} events sent"
    );

    // Nothing was lost for the slow monitor either: it resumes reading where it stopped.
    for expected in 1..2_000 {
        let event = bounded(LIMIT, "slow monitor catching up", slow.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, expected);
    }
}

#[tokio::test]
async fn a_stream_that_stalled_alone_does_not_starve_the_next_one() {
    // With two streams per connection, the first stream is alone at first and gets the whole
    // window budget; it stalls holding all of it. The connection window must still leave the
    // second stream its own.
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.max_connections = Some(1);
    // Every class: the connection window is sized for the largest.
    config.classes.realtime.max_streams_per_connection = 2;
    config.classes.event.max_streams_per_connection = 2;
    config.classes.state.max_streams_per_connection = 2;
    let proxy = sluice(config).await;

    // A small window at the monitor, so that what the stream holds is Sluice's upstream window.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr()))
        .expect("valid uri")
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .expect("client connects");
    let mut slow_client = pb::feed_client::FeedClient::new(channel);
    let mut slow = bounded(
        LIMIT,
        "the first stream",
        subscribe_on(
            &mut slow_client,
            subscribe("slow", 0.0, 16 * 1024, 0),
            "slow",
        ),
    )
    .await;
    bounded(LIMIT, "the first event", slow.message())
        .await
        .unwrap()
        .unwrap();
    // Let it fill its window: the upstream stops once flow control holds it back.
    let mut last = 0;
    let mut stalled = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = upstream.stats.snapshot().events_sent;
        if sent == last {
            stalled = true;
            break;
        }
        last = sent;
    }
    assert!(stalled, "flow control never held the first stream back");

    const FAST_EVENTS: u64 = 2_000;
    let received = bounded(
        LIMIT,
        "the second stream",
        receive_in_order(proxy.addr(), FAST_EVENTS),
    )
    .await;
    assert_eq!(received, FAST_EVENTS);
    assert_eq!(
        proxy.snapshot().connections,
        1,
        "both streams shared one connection"
    );
    drop(slow);
}

#[tokio::test]
async fn a_lagging_monitor_is_disconnected_with_resource_exhausted() {
    let upstream = feed("up").await;
    let mut config = config_for(&[&upstream]);
    config.classes.event.lag_policy = LagPolicy::Disconnect;
    config.classes.event.lag_timeout = Duration::from_millis(300);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let mut stream = subscribe_on(&mut c, subscribe("t", 0.0, 4096, 0), "laggard").await;
    stream.message().await.unwrap().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .snapshot()
            .stats
            .lagging_disconnects_total
            == 1)
        .await,
        "the lagging monitor was not cut off"
    );
    let status = bounded(LIMIT, "drain until the status", status_at_end(&mut stream)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("lagging"), "{status:?}");
    assert!(
        upstream_subscriptions_reach(&upstream, 0).await,
        "the upstream stream of a cut-off monitor was not cancelled"
    );
}

#[tokio::test]
async fn stream_windows_follow_the_number_of_streams_on_the_upstream_connection() {
    const KIB: usize = 1024;
    let probe = WindowProbe::start().await;
    let mut config = config_with_endpoint("probe", &format!("http://{}", probe.addr));
    config.classes.event.max_connections = Some(1);
    let proxy = sluice(config).await;
    let mut monitor = client(proxy.addr()).await;
    let window_of = |i: usize| probe.windows.lock().get(i).map(|w| w.load(SeqCst));

    // Alone on its connection, a stream gets the whole budget (1 MiB by default).
    let first = bounded(
        LIMIT,
        "the first stream",
        subscribe_on(&mut monitor, subscribe("t", 0.0, 64, 0), "m0"),
    )
    .await;
    assert!(
        eventually(LIMIT, || window_of(0) == Some(1024 * KIB)).await,
        "a lone stream got a window of {:?} bytes",
        window_of(0)
    );

    // Eight streams share the budget no longer: every one, the first included, is cut to the
    // 128 KiB floor, so a busy connection pins no more than a window per stream.
    let mut others = Vec::new();
    for i in 1..8 {
        let monitor_id = format!("m{i}");
        let stream = subscribe_on(&mut monitor, subscribe("t", 0.0, 64, 0), &monitor_id);
        others.push(bounded(LIMIT, "another stream", stream).await);
    }
    let all_at_floor = || (0..8).all(|i| window_of(i) == Some(128 * KIB));
    assert!(
        eventually(LIMIT, all_at_floor).await,
        "windows with eight streams: {:?}",
        (0..8).map(window_of).collect::<Vec<_>>()
    );
    assert_eq!(
        proxy.snapshot().connections,
        1,
        "all streams shared one connection"
    );

    // When the others end, the stream left alone gets its deep window back.
    drop(others);
    assert!(
        eventually(LIMIT, || window_of(0) == Some(1024 * KIB)).await,
        "the remaining stream's window stayed at {:?} bytes",
        window_of(0)
    );
    drop(first);
}

/// Subscribes as monitor `fast` on a client connection of its own to `count` unthrottled 1 KiB
/// events, checks they arrive in order, and returns how many arrived.
async fn receive_in_order(proxy: std::net::SocketAddr, count: u64) -> u64 {
    let mut fast = open_subscription(proxy, "fast", subscribe("fast", 0.0, 1024, count)).await;
    let mut next = 0;
    while let Some(event) = fast.message().await.unwrap() {
        assert_eq!(event.seq, next);
        next += 1;
    }
    next
}

/// An HTTP/2 upstream that answers every stream with response headers, sends nothing, and keeps
/// track of the send window the client grants each stream (in the order the streams arrived).
struct WindowProbe {
    addr: std::net::SocketAddr,
    windows: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WindowProbe {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let windows = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&windows);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(Self::serve(tcp, Arc::clone(&recorded)));
            }
        });
        Self {
            addr,
            windows,
            task,
        }
    }

    async fn serve(tcp: tokio::net::TcpStream, windows: Arc<Mutex<Vec<Arc<AtomicUsize>>>>) {
        // Buffering limit well above any window, so the capacity h2 reports is the window.
        let handshake = h2::server::Builder::new()
            .max_send_buffer_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tcp);
        let Ok(mut connection) = handshake.await else {
            return;
        };
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            let window = Arc::new(AtomicUsize::new(0));
            windows.lock().push(Arc::clone(&window));
            tokio::spawn(async move {
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response");
                let Ok(mut send) = respond.send_response(response, false) else {
                    return;
                };
                send.reserve_capacity(16 << 20);
                // A shrinking window wakes nobody on the sending side, so sample it; the loop
                // ends when the client resets the stream.
                loop {
                    window.store(send.capacity(), SeqCst);
                    tokio::select! {
                        _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            });
        }
    }
}

impl Drop for WindowProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
