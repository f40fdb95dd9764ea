//! The contract between Sluice's data plane and its policies: the plain records a policy sees
//! and the answers it gives.
//!
//! The data plane (`sluice-proxy`) builds these records from its pool and acts on the answers;
//! the policy engine (`sluice-policy`) and the scorer (`sluice-scorer`) read and write them
//! without knowing anything about HTTP/2, connections or streams. This crate holds data and the
//! traits that exchange it, nothing that does I/O or keeps a connection: what is here must stay
//! cheap to build and free of the proxy's dependencies.
//!
//! - [`route`]: a new stream's candidates, the router's decision, scored feature rows;
//! - [`traffic`]: a monitor's measured traffic, part of what a router sees;
//! - [`resume`]: what a resumer is told about a broken stream and what it answers;
//! - [`health`] and [`breaker`]: the endpoint states a candidate carries.

pub mod breaker;
pub mod health;
pub mod resume;
pub mod route;
pub mod traffic;
