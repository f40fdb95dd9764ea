//! gRPC over HTTP/2 as the proxy sees it: status codes, deadlines, header hygiene and message
//! framing.
//!
//! This module knows the wire format only. It never decodes message payloads: Sluice forwards
//! protobuf bytes it does not understand.

mod framing;
pub(crate) mod headers;
#[cfg(test)]
mod proptests;
mod status;
pub mod timeout;

pub(crate) use framing::{FrameError, MessageScanner, MessageSplitter, PREFIX_LEN, frame};
pub(crate) use status::{Code, Status};
