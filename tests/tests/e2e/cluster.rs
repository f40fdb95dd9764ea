//! Several Sluice instances sharing one provider budget through a real etcd: the provider's
//! connection limit is never exceeded as instances join, leave and die, the survivors grow
//! into a dead instance's share within its lease plus a second, and an instance that loses
//! etcd keeps serving and falls back to the static share.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sluice_cluster::{ClusterHandle, EtcdState};
use sluice_config::{ClusterConfig, Config, EndpointLimits};
use sluice_feed::{FeedConfig, FeedHandle, ProviderLimits};
use sluice_proxy::ProxyHandle;
use sluice_tests::etcd::Etcd;
use sluice_tests::*;

/// The provider account's connection limit, shared by every instance.
const LIMIT: u32 = 6;
const TTL: Duration = Duration::from_secs(2);

/// One instance: its data plane and its membership.
struct Instance {
    proxy: ProxyHandle,
    cluster: Option<ClusterHandle>,
    monitors: Vec<tokio::task::JoinHandle<()>>,
}

impl Instance {
    /// Starts instance `id` with `monitors` streams of its own.
    async fn start(feed: &FeedHandle, etcd: &[String], id: &str, monitors: usize) -> Self {
        let mut config: Config = config_for(&[feed]);
        config.endpoints[0].limits = EndpointLimits {
            max_connections: Some(LIMIT),
            ..EndpointLimits::default()
        };
        // One stream per connection: each instance wants a connection per monitor stream.
        config.classes.event.max_streams_per_connection = 1;
        config.pool.max_connections = 20;
        config.pool.queue_timeout = Duration::from_secs(30);
        // A shrunk share drains the connections above it; the streams on them that cannot
        // move end after this, and their monitors subscribe again.
        config.pool.max_drain_time = Duration::from_secs(1);
        config.cluster = Some(ClusterConfig {
            instance: Some(id.to_owned()),
            lease_ttl: TTL,
            interval: Duration::from_millis(100),
            ..ClusterConfig::new(etcd.to_vec())
        });
        let proxy = sluice(config.clone()).await;
        let cluster = sluice_cluster::start(
            config.cluster.clone().expect("cluster config"),
            id.to_owned(),
            None,
            proxy.view(),
        );
        let addr = proxy.addr();
        let monitors = (0..monitors)
            .map(|i| {
                tokio::spawn(async move {
                    let mut client = client(addr).await;
                    loop {
                        let request = as_monitor(subscribe("t", 20.0, 8, 0), &format!("m{i}"));
                        if let Ok(response) = client.subscribe(request).await {
                            let mut stream = response.into_inner();
                            while let Ok(Some(_)) = stream.message().await {}
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        Self {
            proxy,
            cluster: Some(cluster),
            monitors,
        }
    }

    fn cluster(&self) -> &ClusterHandle {
        self.cluster.as_ref().expect("running")
    }

    /// Its share of the endpoint's connections now.
    fn share(&self) -> u32 {
        self.cluster()
            .state()
            .shares
            .get("feed-0")
            .map_or(0, |a| a.connections)
    }

    /// Dies without leaving: its connections close (as a killed process's sockets do) and its
    /// lease runs out in etcd.
    async fn die(mut self) {
        drop(self.cluster.take());
        for monitor in &self.monitors {
            monitor.abort();
        }
        // An in-process pool outlives its front; closing its connections is what the kernel
        // does for a killed process.
        self.proxy
            .view()
            .set_endpoint_share("feed-0", Some(0), None);
        let closed = eventually(Duration::from_secs(5), || {
            self.proxy.endpoints()[0].limits.connections == 0
        })
        .await;
        assert!(closed, "the dying instance's connections closed");
        self.proxy.shutdown().await;
    }
}

/// A provider whose account allows [`LIMIT`] connections, counting any beyond.
async fn provider() -> FeedHandle {
    feed_with(FeedConfig {
        name: "provider".into(),
        limits: ProviderLimits {
            max_connections: Some(u64::from(LIMIT)),
            ..ProviderLimits::default()
        },
        ..FeedConfig::default()
    })
    .await
}

/// Waits until `condition` holds, checking the provider's limit every 20 ms meanwhile.
async fn holding_the_limit(
    feed: &FeedHandle,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        assert_eq!(
            feed.stats.connection_violations.load(Relaxed),
            0,
            "the provider's limit was exceeded"
        );
        assert!(feed.stats.connections_peak.load(Relaxed) <= u64::from(LIMIT));
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_budget_as_they_join_leave_and_die() {
    let Some(etcd) = Etcd::single() else {
        return;
    };
    let feed = provider().await;
    let urls = vec![etcd.url()];
    let a = Instance::start(&feed, &urls, "a", 8).await;
    // Eight streams each: more than any share, so every instance always wants more.
    let b = Instance::start(&feed, &urls, "b", 8).await;
    assert!(
        holding_the_limit(&feed, Duration::from_secs(10), || a.share() + b.share()
            == LIMIT
            && a.share() > 0
            && b.share() > 0)
        .await,
        "two instances split the limit: {} + {}",
        a.share(),
        b.share()
    );
    assert!(
        holding_the_limit(&feed, Duration::from_secs(10), || {
            feed.stats.connections_open.load(Relaxed) == u64::from(LIMIT)
        })
        .await,
        "the instances use the whole budget"
    );

    // A third joins: the others shrink first, then it grows.
    let c = Instance::start(&feed, &urls, "c", 8).await;
    assert!(
        holding_the_limit(&feed, Duration::from_secs(15), || c.share() >= 1
            && a.share() + b.share() + c.share() <= LIMIT)
        .await,
        "the newcomer gets a share: {} {} {}",
        a.share(),
        b.share(),
        c.share()
    );
    let members = a.cluster().state().members.len();
    assert_eq!(members, 3, "every instance sees the others");

    // One dies: the others grow into its share once its lease expires.
    let died = Instant::now();
    c.die().await;
    assert!(
        holding_the_limit(
            &feed,
            TTL + Duration::from_secs(1) + Duration::from_millis(500),
            || { a.share() + b.share() == LIMIT }
        )
        .await,
        "the survivors reach the full budget within the lease plus a second: {} + {}",
        a.share(),
        b.share()
    );
    println!("budget regained {:?} after the death", died.elapsed());

    // One leaves cleanly: the other grows at once.
    let leaving = b.cluster.expect("running");
    leaving.leave().await;
    b.proxy.shutdown().await;
    assert!(
        holding_the_limit(&feed, Duration::from_secs(3), || a.share() == LIMIT).await,
        "the last one takes the whole budget: {}",
        a.share()
    );
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_loses_etcd_keeps_serving_and_falls_back_to_the_static_share() {
    let Some(mut etcd) = Etcd::single() else {
        return;
    };
    let feed = provider().await;
    let urls = vec![etcd.url()];
    let a = Instance::start(&feed, &urls, "a", 2).await;
    assert!(
        holding_the_limit(&feed, Duration::from_secs(10), || a.share() == LIMIT).await,
        "alone, it gets the whole budget"
    );
    let mut open = open_subscription(a.proxy.addr(), "watcher", subscribe("w", 50.0, 8, 0)).await;
    open.message()
        .await
        .expect("a first event")
        .expect("an event");

    etcd.kill();
    // Within the lease it keeps its grant.
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(
        a.share(),
        LIMIT,
        "the last grant holds while the lease would"
    );
    assert!(
        holding_the_limit(&feed, TTL * 2, || a.cluster().state().etcd
            == EtcdState::Fallback)
        .await,
        "falls back once the lease would have expired"
    );
    let fallback = LIMIT / ClusterConfig::new(vec![]).max_instances;
    assert_eq!(
        a.share(),
        fallback,
        "the static share: limit / max_instances"
    );
    // Its open streams were served throughout.
    for _ in 0..5 {
        let event = tokio::time::timeout(Duration::from_secs(5), open.message())
            .await
            .expect("events keep coming")
            .expect("the stream is open");
        assert!(event.is_some());
    }

    etcd.start();
    assert!(
        holding_the_limit(&feed, Duration::from_secs(10), || a.share() == LIMIT
            && a.cluster().state().etcd == EtcdState::Connected)
        .await,
        "rejoins and grows again once etcd is back: {}",
        a.share()
    );
}
