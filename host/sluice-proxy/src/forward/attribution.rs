//! Attribution: what a monitor is told about who served its call.
//!
//! The response headers name the endpoint serving the call (`x-sluice-endpoint`), its region
//! (`x-sluice-region`) and the call's id (`x-sluice-stream`), under which the decision log files
//! the router's placements of it (`GET /api/v1/decisions?stream=ID`). A shared call carries the
//! id of the call that opened the shared upstream stream: that is the placement it rides on. The
//! trailers list every endpoint that carried the call, in order and comma-separated
//! (`x-sluice-endpoints`; a resume onto another endpoint adds one), and how many times it was
//! resumed (`x-sluice-resumes`). An upstream's own `x-sluice-*` metadata never reaches the
//! monitor (`grpc::headers` drops it), so a monitor can trust these.
//!
//! This module words the metadata; the relays decide when it goes out. An answer Sluice gives
//! before any endpoint was chosen (no endpoint reachable, a refused call) carries none.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::pool::Lease;

/// The endpoint serving the call (response headers).
pub(crate) const ENDPOINT: &str = "x-sluice-endpoint";
/// The serving endpoint's region (response headers), when it has one.
pub(crate) const REGION: &str = "x-sluice-region";
/// The call's id in the decision log (response headers).
pub(crate) const STREAM: &str = "x-sluice-stream";
/// Every endpoint that carried the call, in order (trailers).
pub(crate) const ENDPOINTS: &str = "x-sluice-endpoints";
/// How many times the call was resumed (trailers).
pub(crate) const RESUMES: &str = "x-sluice-resumes";

/// Who has served one call so far.
#[derive(Debug, Clone)]
pub(super) struct Attribution {
    stream: u64,
    /// Endpoints in the order they carried the call, each once per turn.
    endpoints: Vec<Arc<str>>,
    /// The current endpoint's region.
    region: Arc<str>,
    resumes: u32,
}

impl Attribution {
    /// Call `stream`, served by the endpoint of `lease`.
    pub(super) fn new(stream: u64, lease: &Lease) -> Self {
        let endpoint = &lease.connection().endpoint;
        Self {
            stream,
            endpoints: vec![Arc::clone(&endpoint.id)],
            region: Arc::clone(&endpoint.region),
            resumes: 0,
        }
    }

    /// The call was resumed on the upstream stream of `lease`.
    pub(super) fn resumed_on(&mut self, lease: &Lease) {
        self.resumes += 1;
        let endpoint = &lease.connection().endpoint;
        if self.endpoints.last() != Some(&endpoint.id) {
            self.endpoints.push(Arc::clone(&endpoint.id));
        }
        self.region = Arc::clone(&endpoint.region);
    }

    /// Adds the serving endpoint, its region and the call's id to response headers.
    fn stamp_head(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.endpoints.last().and_then(|id| value(id)) {
            headers.insert(HeaderName::from_static(ENDPOINT), value);
        }
        match value(&self.region) {
            Some(region) => headers.insert(HeaderName::from_static(REGION), region),
            None => headers.remove(REGION),
        };
        headers.insert(
            HeaderName::from_static(STREAM),
            HeaderValue::from(self.stream),
        );
    }

    /// Adds the head's metadata to a response's headers and, when the response ends with them
    /// (trailers-only, `ends`), the trailers' too: those headers are its trailers.
    pub(super) fn stamp_response(&self, headers: &mut HeaderMap, ends: bool) {
        self.stamp_head(headers);
        if ends {
            self.stamp_trailers(headers);
        }
    }

    /// Adds every endpoint used and the number of resumes to trailers.
    pub(super) fn stamp_trailers(&self, trailers: &mut HeaderMap) {
        if let Some(value) = value(&self.endpoints.join(",")) {
            trailers.insert(HeaderName::from_static(ENDPOINTS), value);
        }
        trailers.insert(
            HeaderName::from_static(RESUMES),
            HeaderValue::from(self.resumes),
        );
    }

    /// `trailers` with [`Attribution::stamp_trailers`] applied.
    pub(super) fn stamped_trailers(&self, mut trailers: HeaderMap) -> HeaderMap {
        self.stamp_trailers(&mut trailers);
        trailers
    }
}

/// A header value for `text`, its UTF-8 bytes as they are; `None` for text with control
/// characters, which no header may carry (the header is then left out).
fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(text.as_bytes()).ok()
}
