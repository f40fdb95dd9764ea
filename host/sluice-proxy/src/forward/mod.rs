//! Forwarding one monitor call: admission, opening the upstream stream, relaying both
//! directions, and ending the call with the right status.
//!
//! This module owns the life of a stream. It never decides placement (the pool and its router
//! do) and never decodes payloads.

mod call;
pub mod pump;
mod resumable;
mod share;

pub(crate) use call::serve;
pub(crate) use share::ShareRegistry;
