//! Which headers cross the proxy, in each direction.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are dropped. Sluice's own
//! `x-sluice-*` metadata is for the proxy and never reaches an upstream; in a response, those
//! names are Sluice's to set (the attribution), so an upstream's are dropped too. Everything
//! else, including `te: trailers` and binary metadata, passes through untouched.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TRANSFER_ENCODING, UPGRADE};

/// The metadata a monitor uses to name itself.
pub(crate) const MONITOR_HEADER: &str = "x-sluice-monitor";
/// The metadata a monitor uses to prove its identity when its config entry has a token.
pub(crate) const TOKEN_HEADER: &str = "x-sluice-token";

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection" | "host")
}

/// Copies the headers that must reach the upstream from a monitor's request.
pub(crate) fn request_headers(from: &HeaderMap, extra_capacity: usize) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len() + extra_capacity);
    for (name, value) in from {
        if is_hop_by_hop(name) || is_sluices(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Copies the headers or trailers that must reach the monitor from an upstream response.
pub(crate) fn response_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !is_hop_by_hop(name) && !is_sluices(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Whether `name` is one of Sluice's own (`x-sluice-*`).
fn is_sluices(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-sluice-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_sluice_headers() {
        let mut from = HeaderMap::new();
        from.insert("connection", "close".parse().unwrap());
        from.insert("keep-alive", "1".parse().unwrap());
        from.insert("te", "trailers".parse().unwrap());
        from.insert(MONITOR_HEADER, "m1".parse().unwrap());
        from.insert(TOKEN_HEADER, "t".parse().unwrap());
        from.append("x-custom", "a".parse().unwrap());
        from.append("x-custom", "b".parse().unwrap());
        from.insert("trace-bin", "AAEC".parse().unwrap());
        let out = request_headers(&from, 0);
        assert_eq!(out.len(), 4);
        assert_eq!(out["te"], "trailers");
        assert_eq!(out.get_all("x-custom").iter().count(), 2);
        assert!(out.contains_key("trace-bin"));
        assert!(!out.contains_key(MONITOR_HEADER));
        // An upstream's answer keeps its own metadata; Sluice's names are Sluice's to set.
        from.insert("x-sluice-endpoint", "spoofed".parse().unwrap());
        let back = response_headers(&from);
        assert!(!back.contains_key("connection"));
        assert!(!back.contains_key(MONITOR_HEADER));
        assert!(!back.contains_key("x-sluice-endpoint"));
        assert_eq!(back.get_all("x-custom").iter().count(), 2);
    }
}
