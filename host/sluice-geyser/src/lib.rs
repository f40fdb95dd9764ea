//! A mock Yellowstone (Solana Geyser, "Dragon's Mouth") provider for tests, benches and the
//! demo, built on the `yellowstone-grpc-proto` crate's generated types and service code.
//!
//! It serves `geyser.Geyser/Subscribe` as real providers do: bidirectional, with named filters,
//! client pings answered with pongs, server pings every `ping_interval`, `from_slot` replays
//! from an in-memory window (an error beyond it), `x-token` checks and per-account limits on
//! subscriptions, connections and filters. Its chain is synthetic but deterministic (see
//! [`chain`]), so two mocks started alike serve the same updates at the same time.
//!
//! The `sluice-geyser` binary runs it as a process, which tests SIGKILL and restart. Nothing
//! here knows about Sluice.

pub mod chain;
pub mod filter;
pub mod service;
pub mod stats;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use yellowstone_grpc_proto::geyser::geyser_server::GeyserServer;

pub use chain::ChainConfig;
pub use service::{AccessConfig, TOKEN_HEADER};
pub use stats::GeyserStats;
/// The generated Yellowstone types and client (`proto::geyser::geyser_client::GeyserClient`).
pub use yellowstone_grpc_proto as proto;

/// Largest message the mock encodes or decodes.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Everything a mock provider does.
#[derive(Debug, Clone)]
pub struct GeyserConfig {
    /// What its chain produces.
    pub chain: ChainConfig,
    /// Tokens and limits.
    pub access: AccessConfig,
    /// Time between server pings on each subscription. Default 15 s, as real providers.
    pub ping_interval: Duration,
}

impl Default for GeyserConfig {
    fn default() -> Self {
        Self {
            chain: ChainConfig::default(),
            access: AccessConfig::default(),
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// A running mock provider. Dropping it leaves it running; [`GeyserHandle::stop`] ends it.
#[derive(Debug)]
pub struct GeyserHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<GeyserStats>,
    server: JoinHandle<()>,
    chain: JoinHandle<()>,
}

impl GeyserHandle {
    /// Stops serving and producing slots (in-process; the binary is stopped by a signal).
    pub fn stop(self) {
        self.server.abort();
        self.chain.abort();
    }
}

/// Starts a mock provider on `addr` (port 0 picks a free one).
pub async fn spawn(addr: SocketAddr, config: GeyserConfig) -> std::io::Result<GeyserHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let chain = chain::Chain::new(config.chain);
    let stats = Arc::new(GeyserStats::default());
    let service = service::GeyserService::new(
        Arc::clone(&chain),
        config.access,
        config.ping_interval,
        Arc::clone(&stats),
    );
    let producing = tokio::spawn(chain.run());
    let server = GeyserServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let serving = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the mock Geyser stopped serving");
        }
    });
    Ok(GeyserHandle {
        addr,
        stats,
        server: serving,
        chain: producing,
    })
}
