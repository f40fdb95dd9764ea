//! Yellowstone (Solana Geyser) helpers: mock providers in the test process or as processes to
//! SIGKILL, subscriptions through Sluice or direct, and the identity of an update, so that what
//! a monitor received can be checked update by update.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_config::{Config, MethodConfig};
use sluice_geyser::proto::geyser::geyser_client::GeyserClient;
use sluice_geyser::proto::geyser::subscribe_update::UpdateOneof;
use sluice_geyser::proto::geyser::{
    SubscribeRequest, SubscribeRequestFilterAccounts, SubscribeRequestFilterBlocksMeta,
    SubscribeRequestFilterSlots, SubscribeRequestPing, SubscribeUpdate,
};
use sluice_geyser::{ChainConfig, GeyserConfig, GeyserHandle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::plugins::{built_plugins, plugins_config};
use crate::process::{parse_stats, piped, wait_for_lines};

/// The Geyser subscription method.
pub const SUBSCRIBE_PATH: &str = "/geyser.Geyser/Subscribe";

/// Time between the mocks' slots in tests: fast enough for many slots in a second.
pub const SLOT_INTERVAL: Duration = Duration::from_millis(20);

/// A mock provider's settings for tests: a slot every [`SLOT_INTERVAL`], `ping_interval` pings.
pub fn mock_config(ping_interval: Duration) -> GeyserConfig {
    GeyserConfig {
        chain: ChainConfig {
            slot_interval: SLOT_INTERVAL,
            ..ChainConfig::default()
        },
        ping_interval,
        ..GeyserConfig::default()
    }
}

/// Starts a mock provider in this process on a free loopback port.
pub async fn mock(config: GeyserConfig) -> GeyserHandle {
    sluice_geyser::spawn(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("mock Geyser starts")
}

/// The method rule of shared, resumed Yellowstone subscriptions.
pub fn subscribe_method() -> MethodConfig {
    MethodConfig {
        share: true,
        bidi: true,
        ..MethodConfig::new(SUBSCRIBE_PATH)
    }
}

/// The built Yellowstone resumer, or `None` when the test must skip (see [`built_plugins`]).
pub fn yellowstone_plugin() -> Option<PathBuf> {
    Some(built_plugins()?.join("yellowstone.wasm"))
}

/// A config for Sluice in front of `providers` (with `x-token` metadata per provider when
/// given), sharing Subscribe with the Yellowstone resumer `plugin`.
pub fn sluice_config(providers: &[(SocketAddr, Option<&str>)], plugin: PathBuf) -> Config {
    let mut config = Config::default();
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.shutdown_grace = Duration::from_millis(200);
    config.endpoints = providers
        .iter()
        .enumerate()
        .map(|(i, (addr, token))| {
            let mut endpoint = crate::endpoint(&format!("geyser-{i}"), &format!("http://{addr}"));
            if let Some(token) = token {
                endpoint
                    .metadata
                    .insert("x-token".into(), (*token).to_owned());
            }
            endpoint
        })
        .collect();
    config.methods = vec![subscribe_method()];
    config.plugins = plugins_config();
    config.plugins.resumer.file = Some(plugin);
    config
}

/// A request for slots and block metas (two filter maps, so that encoders may order them
/// differently) and, when `accounts`, every account.
pub fn slots_request(accounts: bool) -> SubscribeRequest {
    let mut request = SubscribeRequest::default();
    request
        .slots
        .insert("slots".into(), SubscribeRequestFilterSlots::default());
    request
        .blocks_meta
        .insert("meta".into(), SubscribeRequestFilterBlocksMeta::default());
    if accounts {
        request
            .accounts
            .insert("accounts".into(), SubscribeRequestFilterAccounts::default());
    }
    request
}

/// A ping request.
pub fn ping(id: i32) -> SubscribeRequest {
    SubscribeRequest {
        ping: Some(SubscribeRequestPing { id }),
        ..SubscribeRequest::default()
    }
}

/// One monitor's open Subscribe call.
pub struct Subscription {
    sender: mpsc::Sender<SubscribeRequest>,
    /// Its updates.
    pub updates: tonic::Streaming<SubscribeUpdate>,
    /// Its response headers.
    pub headers: MetadataMap,
}

impl Subscription {
    /// Subscribes with `first` on a connection of its own to `addr`.
    pub async fn open(addr: SocketAddr, first: SubscribeRequest) -> Result<Self, tonic::Status> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client =
            GeyserClient::new(channel).max_decoding_message_size(sluice_geyser::MAX_MESSAGE_SIZE);
        let (sender, receiver) = mpsc::channel(16);
        sender.send(first).await.expect("queued");
        let response = client.subscribe(ReceiverStream::new(receiver)).await?;
        let headers = response.metadata().clone();
        Ok(Self {
            sender,
            updates: response.into_inner(),
            headers,
        })
    }

    /// Sends another request message (a ping, new filters).
    pub async fn send(&self, request: SubscribeRequest) {
        self.sender
            .send(request)
            .await
            .expect("request stream open");
    }

    /// The next update within `limit`; `Err` with the status when the call ended.
    pub async fn next(&mut self, limit: Duration) -> Result<SubscribeUpdate, tonic::Status> {
        match tokio::time::timeout(limit, self.updates.message()).await {
            Ok(Ok(Some(update))) => Ok(update),
            Ok(Ok(None)) => Err(tonic::Status::ok("ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no update within {limit:?}"
            ))),
        }
    }
}

/// What an update is, whatever its bytes: its kind, slot and key, as a monitor compares a
/// stream with another (`None` for pings and pongs).
pub fn identity(update: &SubscribeUpdate) -> Option<(u64, String)> {
    match update.update_oneof.as_ref()? {
        UpdateOneof::Slot(slot) => Some((slot.slot, format!("slot {}", slot.status))),
        UpdateOneof::BlockMeta(meta) => Some((meta.slot, format!("meta {}", meta.blockhash))),
        UpdateOneof::Account(account) => {
            let info = account.account.as_ref()?;
            Some((
                account.slot,
                format!("account {:?} {}", &info.pubkey[..4], info.write_version),
            ))
        }
        UpdateOneof::Transaction(tx) => Some((
            tx.slot,
            format!("tx {:?}", &tx.transaction.as_ref()?.signature[..8]),
        )),
        _ => None,
    }
}

/// A `sluice-geyser` child process. Dropping it kills it.
pub struct GeyserProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its latest `sluice-geyser stats` line (with `--stats-every`), by counter name.
    stats: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl GeyserProcess {
    /// Starts `sluice-geyser` on `addr` (port 0: a free one) with [`SLOT_INTERVAL`] and `extra`
    /// options.
    pub fn start(addr: SocketAddr, extra: &[&str]) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = piped("sluice-geyser")
                .args(["--listen", &addr.to_string(), "--slot-interval", "20ms"])
                .args(extra)
                .spawn()
                .expect("spawning sluice-geyser");
            let stats = Arc::new(Mutex::new(BTreeMap::new()));
            let latest = Arc::clone(&stats);
            let listening =
                wait_for_lines(&mut child, &["sluice-geyser listening on "], move |line| {
                    if let Some(counters) = parse_stats("sluice-geyser stats ", line) {
                        *latest.lock().unwrap_or_else(PoisonError::into_inner) = counters;
                    }
                })
                .ok()
                .and_then(|lines| lines[0].parse::<SocketAddr>().ok());
            match listening {
                Some(addr) => return Self { child, addr, stats },
                // The port of a killed process may take a moment to be free.
                None if std::time::Instant::now() < deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => panic!("sluice-geyser did not start on {addr}"),
            }
        }
    }

    /// Its counters as of its latest stats line (empty without `--stats-every`).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(mut self) -> SocketAddr {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.addr
    }
}

impl Drop for GeyserProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
