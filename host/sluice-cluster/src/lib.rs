//! Several Sluice instances sharing one provider budget, coordinated through etcd.
//!
//! A provider's limits are per account, not per instance: each endpoint's `max_connections`
//! and `max_streams` are split between the live instances of a cluster. Each instance holds a
//! lease and writes what it uses and wants; the elected leader grants each a share, in
//! proportion to demand above a floor, growing one only into room the others no longer hold,
//! so that the shares never add up to more than the limit ([`allocate`]). Each instance's pool
//! enforces its share ([`node`]).
//!
//! This crate never places a stream or opens a connection: the pool does, within the share.

pub mod allocate;
pub mod node;
pub mod records;

pub use node::{ClusterHandle, ClusterState, EtcdState, start};
