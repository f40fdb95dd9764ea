//! The Geyser service: `Subscribe` with filters, pings, `from_slot` replays and per-account
//! limits, plus the small unary calls a client makes around it.
//!
//! A `Subscribe` call is admitted against its account's limits (by `x-token`): subscriptions
//! open at once, and connections (distinct peers) holding them. Each request message on the
//! stream either is a ping (`ping` set and no filters), answered with a pong, or replaces the
//! filters; with `from_slot` it first replays the kept slots from there, or ends the call with
//! `INVALID_ARGUMENT` naming the first available slot when that is too old. The server pings
//! every `ping_interval`. This module does not build updates (`chain`) or match them
//! (`filter`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use yellowstone_grpc_proto::geyser::geyser_server::Geyser;
use yellowstone_grpc_proto::geyser::subscribe_update::UpdateOneof;
use yellowstone_grpc_proto::geyser::{
    GetBlockHeightRequest, GetBlockHeightResponse, GetLatestBlockhashRequest,
    GetLatestBlockhashResponse, GetSlotRequest, GetSlotResponse, GetVersionRequest,
    GetVersionResponse, IsBlockhashValidRequest, IsBlockhashValidResponse, PingRequest,
    PongResponse, SubscribeDeshredRequest, SubscribeGossipRequest, SubscribeReplayInfoRequest,
    SubscribeReplayInfoResponse, SubscribeRequest, SubscribeUpdate, SubscribeUpdateDeshred,
    SubscribeUpdateGossip, SubscribeUpdatePing, SubscribeUpdatePong,
};

use crate::chain::{Chain, Slot};
use crate::filter::Filter;
use crate::stats::GeyserStats;

/// The metadata key that carries a client's token.
pub const TOKEN_HEADER: &str = "x-token";

/// Who may subscribe, and how much.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Token to account name. Empty: every call is the anonymous account's, tokens unchecked.
    pub tokens: HashMap<String, String>,
    /// Subscriptions one account may hold at once.
    pub max_subscriptions: Option<usize>,
    /// Connections (distinct peers) one account may hold subscriptions on at once.
    pub max_connections: Option<usize>,
    /// Named filters one subscription may hold.
    pub max_filters: Option<usize>,
}

/// One account's use.
#[derive(Debug, Default)]
struct Usage {
    subscriptions: usize,
    /// Subscriptions per peer.
    peers: HashMap<SocketAddr, usize>,
}

/// The service.
#[derive(Debug)]
pub struct GeyserService {
    chain: Arc<Chain>,
    access: AccessConfig,
    ping_interval: Duration,
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    stats: Arc<GeyserStats>,
}

/// A subscription's hold on its account's limits, released when the call ends.
struct Admission {
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    stats: Arc<GeyserStats>,
    account: String,
    peer: SocketAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut usage = self.usage.lock();
        if let Some(account) = usage.get_mut(&self.account) {
            account.subscriptions -= 1;
            if let Some(count) = account.peers.get_mut(&self.peer) {
                *count -= 1;
                if *count == 0 {
                    account.peers.remove(&self.peer);
                }
            }
        }
        self.stats.subscription_ended();
    }
}

impl GeyserService {
    /// A service over `chain`.
    pub fn new(
        chain: Arc<Chain>,
        access: AccessConfig,
        ping_interval: Duration,
        stats: Arc<GeyserStats>,
    ) -> Self {
        Self {
            chain,
            access,
            ping_interval,
            usage: Arc::default(),
            stats,
        }
    }

    /// The account `metadata`'s token names.
    fn account<T>(&self, request: &Request<T>) -> Result<String, Status> {
        if self.access.tokens.is_empty() {
            return Ok("anonymous".to_owned());
        }
        let token = request
            .metadata()
            .get(TOKEN_HEADER)
            .ok_or_else(|| Status::unauthenticated("missing x-token"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("invalid x-token"))?;
        self.access
            .tokens
            .get(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("invalid x-token"))
    }

    /// Admits one more subscription of `account` on `peer`, or says which limit refuses it.
    fn admit(&self, account: String, peer: SocketAddr) -> Result<Admission, Status> {
        let mut usage = self.usage.lock();
        let current = usage.entry(account.clone()).or_default();
        if let Some(max) = self.access.max_subscriptions
            && current.subscriptions >= max
        {
            self.stats.refused();
            return Err(Status::resource_exhausted(format!(
                "subscription limit reached: {max} per account"
            )));
        }
        if let Some(max) = self.access.max_connections
            && !current.peers.contains_key(&peer)
            && current.peers.len() >= max
        {
            self.stats.refused();
            return Err(Status::resource_exhausted(format!(
                "connection limit reached: {max} per account"
            )));
        }
        current.subscriptions += 1;
        *current.peers.entry(peer).or_default() += 1;
        let connections = current.peers.len();
        self.stats.subscription_started(connections);
        Ok(Admission {
            usage: Arc::clone(&self.usage),
            stats: Arc::clone(&self.stats),
            account,
            peer,
        })
    }
}

type UpdateStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Geyser for GeyserService {
    type SubscribeStream = UpdateStream<SubscribeUpdate>;
    type SubscribeDeshredStream = UpdateStream<SubscribeUpdateDeshred>;
    type SubscribeGossipStream = UpdateStream<SubscribeUpdateGossip>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let account = self.account(&request)?;
        let peer = request
            .remote_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let admission = self.admit(account, peer)?;
        let (sender, receiver) = mpsc::channel(256);
        let session = Session {
            chain: Arc::clone(&self.chain),
            max_filters: self.access.max_filters,
            ping_interval: self.ping_interval,
            stats: Arc::clone(&self.stats),
            sender,
        };
        tokio::spawn(session.run(request.into_inner(), admission));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn subscribe_deshred(
        &self,
        _request: Request<Streaming<SubscribeDeshredRequest>>,
    ) -> Result<Response<Self::SubscribeDeshredStream>, Status> {
        Err(Status::unimplemented(
            "this mock Geyser does not serve deshred",
        ))
    }

    async fn subscribe_gossip(
        &self,
        _request: Request<SubscribeGossipRequest>,
    ) -> Result<Response<Self::SubscribeGossipStream>, Status> {
        Err(Status::unimplemented(
            "this mock Geyser does not serve gossip",
        ))
    }

    async fn subscribe_replay_info(
        &self,
        request: Request<SubscribeReplayInfoRequest>,
    ) -> Result<Response<SubscribeReplayInfoResponse>, Status> {
        self.account(&request)?;
        Ok(Response::new(SubscribeReplayInfoResponse {
            first_available: self.chain.first_available(),
        }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        self.account(&request)?;
        Ok(Response::new(PongResponse {
            count: request.into_inner().count,
        }))
    }

    async fn get_latest_blockhash(
        &self,
        _request: Request<GetLatestBlockhashRequest>,
    ) -> Result<Response<GetLatestBlockhashResponse>, Status> {
        Err(Status::unimplemented(
            "this mock Geyser does not serve blockhashes",
        ))
    }

    async fn get_block_height(
        &self,
        _request: Request<GetBlockHeightRequest>,
    ) -> Result<Response<GetBlockHeightResponse>, Status> {
        Err(Status::unimplemented(
            "this mock Geyser does not serve block heights",
        ))
    }

    async fn get_slot(
        &self,
        request: Request<GetSlotRequest>,
    ) -> Result<Response<GetSlotResponse>, Status> {
        self.account(&request)?;
        Ok(Response::new(GetSlotResponse {
            slot: self.chain.latest().unwrap_or_default(),
        }))
    }

    async fn is_blockhash_valid(
        &self,
        _request: Request<IsBlockhashValidRequest>,
    ) -> Result<Response<IsBlockhashValidResponse>, Status> {
        Err(Status::unimplemented(
            "this mock Geyser does not serve blockhashes",
        ))
    }

    async fn get_version(
        &self,
        _request: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse {
            version: concat!("sluice-geyser ", env!("CARGO_PKG_VERSION")).to_owned(),
        }))
    }
}

/// One `Subscribe` call's task.
struct Session {
    chain: Arc<Chain>,
    max_filters: Option<usize>,
    ping_interval: Duration,
    stats: Arc<GeyserStats>,
    sender: mpsc::Sender<Result<SubscribeUpdate, Status>>,
}

impl Session {
    /// Serves the call until the client leaves or an error ends it.
    async fn run(self, mut requests: Streaming<SubscribeRequest>, _admission: Admission) {
        let mut filter: Option<Filter> = None;
        let mut live: Option<broadcast::Receiver<Arc<Slot>>> = None;
        let mut requests_open = true;
        let mut pings = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ping_interval,
            self.ping_interval,
        );
        let ended = loop {
            let next_slot = async {
                match live.as_mut() {
                    Some(live) => live.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = requests.message(), if requests_open => match request {
                    Ok(Some(request)) => match self.on_request(request, &mut filter, &mut live).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(status) => break status,
                    },
                    // A client that half-closes keeps its subscription.
                    Ok(None) => requests_open = false,
                    Err(_) => return,
                },
                slot = next_slot => match slot {
                    Ok(slot) => {
                        if let Some(filter) = &filter
                            && !self.send_slot(&slot, filter).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        break Status::resource_exhausted(format!(
                            "subscriber too slow: {missed} slots dropped"
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break Status::unavailable("the chain stopped");
                    }
                },
                _ = pings.tick() => {
                    if !self.send(Vec::new(), UpdateOneof::Ping(SubscribeUpdatePing {}), SystemTime::now()).await {
                        return;
                    }
                }
                () = self.sender.closed() => return,
            }
        };
        let _ = self.sender.send(Err(ended)).await;
    }

    /// Handles one request message; `Ok(false)` when the client is gone.
    async fn on_request(
        &self,
        request: SubscribeRequest,
        filter: &mut Option<Filter>,
        live: &mut Option<broadcast::Receiver<Arc<Slot>>>,
    ) -> Result<bool, Status> {
        let has_filters = !(request.slots.is_empty()
            && request.accounts.is_empty()
            && request.transactions.is_empty()
            && request.transactions_status.is_empty()
            && request.blocks.is_empty()
            && request.blocks_meta.is_empty()
            && request.entry.is_empty()
            && request.block_footer.is_empty());
        if let Some(ping) = request.ping {
            self.stats.ping_answered();
            let pong = UpdateOneof::Pong(SubscribeUpdatePong { id: ping.id });
            if !self.send(Vec::new(), pong, SystemTime::now()).await {
                return Ok(false);
            }
            if !has_filters {
                return Ok(true);
            }
        }
        let new_filter = Filter::new(&request, self.max_filters)?;
        match request.from_slot {
            Some(from) => {
                let (kept, receiver) = self.chain.replay_from(from).map_err(|first| {
                    self.stats.replay_refused();
                    Status::invalid_argument(format!(
                        "from_slot {from} is not available: first available slot is {}",
                        first.map_or_else(|| "none yet".to_owned(), |s| s.to_string())
                    ))
                })?;
                self.stats.replayed();
                *live = Some(receiver);
                for slot in kept {
                    if !self.send_slot(&slot, &new_filter).await {
                        return Ok(false);
                    }
                }
            }
            None => {
                if live.is_none() {
                    *live = Some(self.chain.subscribe());
                }
            }
        }
        *filter = Some(new_filter);
        Ok(true)
    }

    /// Sends the updates of `slot` that `filter` matches; `false` when the client is gone.
    async fn send_slot(&self, slot: &Slot, filter: &Filter) -> bool {
        for update in &slot.updates {
            let names = filter.matches(update);
            if !names.is_empty() && !self.send(names, update.body.clone(), slot.created_at).await {
                return false;
            }
        }
        true
    }

    /// Sends one update stamped `created_at`; `false` when the client is gone.
    async fn send(&self, filters: Vec<String>, body: UpdateOneof, created_at: SystemTime) -> bool {
        let update = SubscribeUpdate {
            filters,
            update_oneof: Some(body),
            created_at: Some(created_at.into()),
        };
        let sent = self.sender.send(Ok(update)).await.is_ok();
        if sent {
            self.stats.update_sent();
        }
        sent
    }
}
