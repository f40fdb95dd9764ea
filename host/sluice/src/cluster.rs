//! The cluster's admin route (`GET /api/v1/cluster`) and this instance's default id.
//!
//! The membership itself is `sluice-cluster`'s; this module only shows it.

use std::sync::Arc;

use axum::Json;
use axum::routing::get;
use sluice_cluster::{ClusterHandle, ClusterState};

/// `GET /api/v1/cluster`: the instances, each one's use, demand and share per endpoint, the
/// limits split, this instance's shares and its etcd connection.
pub fn routes(cluster: &Arc<ClusterHandle>) -> axum::Router {
    let cluster = Arc::clone(cluster);
    axum::Router::new().route(
        "/api/v1/cluster",
        get(move || {
            let state: Arc<ClusterState> = cluster.state();
            async move { Json((*state).clone()) }
        }),
    )
}

/// This host's name and the monitor listener's port, e.g. `sluice-0-10000`.
pub fn default_instance(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{port}")
}
