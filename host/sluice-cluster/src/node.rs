//! One instance in the cluster: its lease, its record, the leader's election, and the share of
//! each limited endpoint it enforces.
//!
//! Every `interval` the instance renews its lease, reads the leader's grants and enforces its
//! own (the pool drains connections above a shrunk share and takes nothing new above it), and
//! writes its record: what it uses, wants and enforces. The instance that won the election also
//! recomputes the grants from every record ([`crate::allocate`]). While etcd cannot be reached
//! the instance keeps its last grants until its lease would have expired, then enforces the
//! safe static share (each limit divided by `max_instances`); it serves its open streams
//! throughout. This module never places a stream: the pool does, within the share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    TlsOptions,
};
use serde::Serialize;
use sluice_config::ClusterConfig;
use sluice_proxy::ProxyView;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::allocate::{next_grants, targets};
use crate::records::{Amounts, Grants, Keys, Member, PerEndpoint};

/// How this instance reaches etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdState {
    /// Not reached yet since start: limited endpoints take nothing until the first grant, or
    /// the static share once a lease's time has passed.
    Connecting,
    /// Lease renewed within the last interval.
    Connected,
    /// Unreachable, within what the lease allows: the last grants still hold.
    Unreachable,
    /// Unreachable for longer than the lease: the static share holds.
    Fallback,
}

/// What the cluster looks like from this instance, for the admin API, `/metrics` and the
/// dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterState {
    /// The cluster's name.
    pub name: String,
    /// This instance's id.
    pub instance: String,
    /// Its connection to etcd.
    pub etcd: EtcdState,
    /// Whether it is the leader (computes the grants).
    pub leader: bool,
    /// The members as last read (their use, demand and enforced shares).
    pub members: Vec<Member>,
    /// The limits split, per endpoint.
    pub limits: PerEndpoint,
    /// What this instance enforces now, per endpoint.
    pub shares: PerEndpoint,
    /// The revision of the grants it enforces (0: none, or the static share).
    pub grants_revision: u64,
}

/// A running cluster member. Dropping it leaves its lease to expire; [`ClusterHandle::leave`]
/// gives its share back and revokes it.
pub struct ClusterHandle {
    state: watch::Receiver<Arc<ClusterState>>,
    task: JoinHandle<()>,
    leave: Arc<tokio::sync::Notify>,
}

impl ClusterHandle {
    /// The cluster as of the last interval.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
    }

    /// Leaves the cluster (drains this instance's connections to limited endpoints, then
    /// revokes the lease, so the others grow at once) and stops.
    pub async fn leave(mut self) {
        self.leave.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One etcd session: a client, a lease and its keep-alive, and the election campaign.
struct Session {
    client: Client,
    lease: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
    campaign: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.campaign.abort();
    }
}

struct Node {
    config: ClusterConfig,
    keys: Keys,
    id: String,
    admin: Option<String>,
    proxy: ProxyView,
    /// Limited endpoints: id to (max_connections, max_streams).
    caps: BTreeMap<String, (Option<u32>, Option<u32>)>,
    session: Option<Session>,
    leader: Arc<AtomicBool>,
    /// The last renewal of the lease (start time before any).
    renewed: Instant,
    ever_renewed: bool,
    applied: PerEndpoint,
    applied_revision: u64,
    members: Vec<Member>,
    state: watch::Sender<Arc<ClusterState>>,
}

/// Joins the cluster of `config` as `instance` and keeps the pool's shares of its limited
/// endpoints as the cluster grants them. `admin` is this instance's admin API URL, shown to
/// operators.
pub fn start(
    config: ClusterConfig,
    instance: String,
    admin: Option<String>,
    proxy: ProxyView,
) -> ClusterHandle {
    let caps: BTreeMap<String, (Option<u32>, Option<u32>)> = proxy
        .shared_caps()
        .into_iter()
        .map(|(id, connections, streams)| (id.to_string(), (connections, streams)))
        .collect();
    let limits = caps
        .iter()
        .map(|(id, (c, s))| {
            let amounts = Amounts {
                connections: c.unwrap_or(0),
                streams: s.unwrap_or(0),
            };
            (id.clone(), amounts)
        })
        .collect();
    let (state, receiver) = watch::channel(Arc::new(ClusterState {
        name: config.name.clone(),
        instance: instance.clone(),
        etcd: EtcdState::Connecting,
        leader: false,
        members: Vec::new(),
        limits,
        shares: PerEndpoint::new(),
        grants_revision: 0,
    }));
    let mut node = Node {
        keys: Keys::new(&config.name),
        config,
        id: instance,
        admin,
        proxy,
        caps,
        session: None,
        leader: Arc::new(AtomicBool::new(false)),
        renewed: Instant::now(),
        ever_renewed: false,
        applied: PerEndpoint::new(),
        applied_revision: 0,
        members: Vec::new(),
        state,
    };
    // Nothing of a limited endpoint is used before the cluster grants it.
    node.enforce(&PerEndpoint::new(), 0);
    let leave = Arc::new(tokio::sync::Notify::new());
    let leaving = Arc::clone(&leave);
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(node.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => node.tick().await,
                () = leaving.notified() => {
                    node.leave().await;
                    return;
                }
            }
        }
    });
    ClusterHandle {
        state: receiver,
        task,
        leave,
    }
}

impl Node {
    async fn tick(&mut self) {
        // A slow answer is not a lost etcd: within half a lease the grants still hold.
        let deadline = self.config.lease_ttl / 2;
        if self.session.is_none() {
            match tokio::time::timeout(deadline, self.connect()).await {
                Ok(Ok(session)) => self.session = Some(session),
                Ok(Err(error)) => tracing::debug!(%error, "etcd unreachable"),
                Err(_) => tracing::debug!("etcd did not answer in time"),
            }
        }
        if self.session.is_some() {
            match tokio::time::timeout(deadline, self.exchange()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "lost etcd; keeping the last grants while the lease lasts");
                    self.drop_session();
                }
                Err(_) => {
                    tracing::warn!(
                        "etcd did not answer in time; keeping the last grants while the lease lasts"
                    );
                    self.drop_session();
                }
            }
        }
        let lapsed = self.renewed.elapsed() >= self.config.lease_ttl;
        if self.session.is_none() && lapsed && self.applied_revision != u64::MAX {
            tracing::warn!(
                max_instances = self.config.max_instances,
                "etcd unreachable for longer than the lease: enforcing the static share"
            );
            let fallback = self.static_share();
            self.enforce(&fallback, u64::MAX);
        }
        self.publish_state(lapsed);
    }

    fn drop_session(&mut self) {
        self.session = None;
        self.leader.store(false, Relaxed);
    }

    async fn connect(&mut self) -> Result<Session, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.config.lease_ttl / 2)
            .with_timeout(self.config.lease_ttl / 2);
        if let (Some(user), Some(password)) = (&self.config.user, &self.config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(ca_file) = &self.config.ca_file {
            // Read at every connect, so that a renewed CA is picked up.
            let pem = std::fs::read(ca_file).map_err(|e| {
                etcd_client::Error::IoError(std::io::Error::new(
                    e.kind(),
                    format!("reading cluster.ca_file {}: {e}", ca_file.display()),
                ))
            })?;
            options =
                options.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
        }
        let mut client = Client::connect(&self.config.etcd, Some(options)).await?;
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        let (keeper, responses) = client.lease_keep_alive(lease).await?;
        self.renewed = Instant::now();
        self.ever_renewed = true;
        let campaign = tokio::spawn(campaign(
            client.clone(),
            self.keys.election(),
            self.id.clone(),
            lease,
            Arc::clone(&self.leader),
        ));
        tracing::info!(instance = %self.id, lease, "joined the cluster");
        Ok(Session {
            client,
            lease,
            keeper,
            responses,
            campaign,
        })
    }

    /// Renews the lease, applies the grants, writes the record and, as leader, the grants.
    async fn exchange(&mut self) -> Result<(), etcd_client::Error> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        session.keeper.keep_alive().await?;
        match session.responses.message().await? {
            Some(response) if response.ttl() > 0 => self.renewed = Instant::now(),
            _ => {
                tracing::warn!("the cluster lease expired; joining again");
                self.drop_session();
                return Ok(());
            }
        }
        let mut client = session.client.clone();
        let lease = session.lease;
        let grants = read_grants(&mut client, &self.keys).await?;
        if grants.revision != self.applied_revision {
            let mine = grants.members.get(&self.id).cloned().unwrap_or_default();
            self.enforce(&mine, grants.revision);
        }
        let record = self.record();
        let value = serde_json::to_vec(&record).unwrap_or_default();
        client
            .put(
                self.keys.member(&self.id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        let members = client
            .get(self.keys.members(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.members = members
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        if self.leader.load(Relaxed) {
            self.lead(&mut client, &grants).await?;
        }
        Ok(())
    }

    /// Recomputes the grants from the members' records and writes them when they changed.
    async fn lead(&self, client: &mut Client, current: &Grants) -> Result<(), etcd_client::Error> {
        let mut members: Vec<&Member> = self.members.iter().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let mut next: BTreeMap<String, PerEndpoint> = members
            .iter()
            .map(|m| (m.id.clone(), PerEndpoint::new()))
            .collect();
        for (endpoint, (max_connections, max_streams)) in &self.caps {
            for (limit, resource) in [
                (max_connections, Resource::Connections),
                (max_streams, Resource::Streams),
            ] {
                let Some(limit) = *limit else { continue };
                let of =
                    |amounts: &PerEndpoint| amounts.get(endpoint).map_or(0, |a| resource.of(a));
                let demands: Vec<u32> = members.iter().map(|m| of(&m.demand)).collect();
                let granted: Vec<u32> = members
                    .iter()
                    .map(|m| current.members.get(&m.id).map_or(0, &of))
                    .collect();
                let holding: Vec<u32> = members
                    .iter()
                    .map(|m| of(&m.applied).max(of(&m.used)))
                    .collect();
                let shares = next_grants(limit, &granted, &targets(limit, &demands), &holding);
                for (member, share) in members.iter().zip(shares) {
                    if let Some(grants) = next.get_mut(&member.id) {
                        resource.set(grants.entry(endpoint.clone()).or_default(), share);
                    }
                }
            }
        }
        if next != current.members {
            let grants = Grants {
                revision: current.revision + 1,
                members: next,
            };
            let value = serde_json::to_vec(&grants).unwrap_or_default();
            client.put(self.keys.grants(), value, None).await?;
            tracing::debug!(revision = grants.revision, "cluster grants changed");
        }
        Ok(())
    }

    /// Makes the pool enforce `grants` (limited endpoints missing from them get nothing).
    fn enforce(&mut self, grants: &PerEndpoint, revision: u64) {
        for (endpoint, (max_connections, max_streams)) in &self.caps {
            let grant = grants.get(endpoint).copied().unwrap_or_default();
            self.proxy.set_endpoint_share(
                endpoint,
                max_connections.map(|_| grant.connections),
                max_streams.map(|_| grant.streams),
            );
        }
        self.applied = grants.clone();
        self.applied_revision = revision;
    }

    /// Each limit divided by `max_instances`.
    fn static_share(&self) -> PerEndpoint {
        let n = self.config.max_instances.max(1);
        self.caps
            .iter()
            .map(|(id, (c, s))| {
                let amounts = Amounts {
                    connections: c.map_or(0, |c| c / n),
                    streams: s.map_or(0, |s| s / n),
                };
                (id.clone(), amounts)
            })
            .collect()
    }

    /// This instance's record: use, demand and what it enforces.
    fn record(&self) -> Member {
        let mut used = PerEndpoint::new();
        let mut demand = PerEndpoint::new();
        for endpoint in self.proxy.endpoints() {
            if !self.caps.contains_key(&*endpoint.id) {
                continue;
            }
            let limits = &endpoint.limits;
            let now = Amounts {
                connections: limits.connections as u32,
                streams: limits.streams as u32,
            };
            // Held back by a cap: it would use one more.
            let wants = Amounts {
                connections: now.connections
                    + u32::from(limits.reached.contains(&"max_connections")),
                streams: now.streams + u32::from(limits.reached.contains(&"max_streams")),
            };
            used.insert(endpoint.id.to_string(), now);
            demand.insert(endpoint.id.to_string(), wants);
        }
        Member {
            id: self.id.clone(),
            used,
            demand,
            applied: self.applied.clone(),
            applied_revision: self.applied_revision,
            admin: self.admin.clone(),
        }
    }

    fn publish_state(&self, lapsed: bool) {
        let etcd = match (&self.session, self.ever_renewed, lapsed) {
            (Some(_), _, _) => EtcdState::Connected,
            (None, false, false) => EtcdState::Connecting,
            (None, _, false) => EtcdState::Unreachable,
            (None, _, true) => EtcdState::Fallback,
        };
        let previous = self.state.borrow().clone();
        self.state.send_replace(Arc::new(ClusterState {
            etcd,
            leader: self.leader.load(Relaxed),
            members: self.members.clone(),
            shares: self.applied.clone(),
            grants_revision: if self.applied_revision == u64::MAX {
                0
            } else {
                self.applied_revision
            },
            ..(*previous).clone()
        }));
    }

    /// Gives its share back and revokes the lease, so that the others grow into it at once:
    /// first it takes nothing new and drains its connections to the limited endpoints (for at
    /// most the lease's time), so that no instance grows into connections still open.
    async fn leave(&mut self) {
        self.enforce(&PerEndpoint::new(), 0);
        let deadline = Instant::now() + self.config.lease_ttl;
        while Instant::now() < deadline && self.holds_connections() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(session) = self.session.as_mut() {
            let lease = session.lease;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), session.client.lease_revoke(lease))
                    .await;
        }
        self.drop_session();
    }
}

impl Node {
    /// Whether any connection to a limited endpoint is open.
    fn holds_connections(&self) -> bool {
        self.proxy
            .endpoints()
            .iter()
            .any(|e| self.caps.contains_key(&*e.id) && e.limits.connections > 0)
    }
}

/// One of the limits a cluster splits.
#[derive(Debug, Clone, Copy)]
enum Resource {
    Connections,
    Streams,
}

impl Resource {
    fn of(self, amounts: &Amounts) -> u32 {
        match self {
            Resource::Connections => amounts.connections,
            Resource::Streams => amounts.streams,
        }
    }

    fn set(self, amounts: &mut Amounts, value: u32) {
        match self {
            Resource::Connections => amounts.connections = value,
            Resource::Streams => amounts.streams = value,
        }
    }
}

/// Runs for the leadership with `lease` until won (then `leader` is set); the session aborts
/// it when it ends.
async fn campaign(
    mut client: Client,
    election: String,
    id: String,
    lease: i64,
    leader: Arc<AtomicBool>,
) {
    // A campaign waits for the current leader to go, longer than the client's request
    // timeout: each attempt that times out is followed by another.
    loop {
        match client.campaign(election.clone(), id.clone(), lease).await {
            Ok(_) => {
                leader.store(true, Relaxed);
                tracing::info!("leading the cluster");
                return;
            }
            Err(error) => tracing::trace!(%error, "still campaigning"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader's grants (empty before the first).
async fn read_grants(client: &mut Client, keys: &Keys) -> Result<Grants, etcd_client::Error> {
    let response = client.get(keys.grants(), None).await?;
    Ok(response
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok())
        .unwrap_or_default())
}
