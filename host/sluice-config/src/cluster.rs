//! `[cluster]`: several Sluice instances sharing their endpoints' limits through etcd.
//!
//! Without the table Sluice runs alone. This module describes the table and checks it; joining
//! the cluster and splitting the limits are `sluice-cluster`'s.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The cluster this instance belongs to and how it reaches etcd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs, e.g. `["http://10.0.0.5:2379"]`; at least one.
    pub etcd: Vec<String>,
    /// The cluster's name: instances with the same name share one budget. Default `sluice`.
    #[serde(default = "default_name")]
    pub name: String,
    /// This instance's id, unique in the cluster. Default: the host name and the monitor
    /// listener's port (`host-10000`).
    #[serde(default)]
    pub instance: Option<String>,
    /// The membership lease's time to live: an instance that stops renewing it (killed, cut
    /// off) leaves the cluster this long after its last renewal, and the others then grow into
    /// its share. Default 5 s; at least 2 s.
    #[serde(default = "default_lease_ttl", with = "crate::duration")]
    pub lease_ttl: Duration,
    /// The most instances the cluster runs: an instance that has lost etcd for longer than its
    /// lease falls back to each limit divided by this, never more. Default 3.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// How often an instance publishes its use and demand and reads its grant (and the leader
    /// recomputes the shares). Default 250 ms.
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    /// etcd user name and password (password may be `${VAR}`).
    #[serde(default)]
    pub user: Option<String>,
    /// See `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA bundle that verifies etcd's certificate (TLS, with `https://` URLs).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_name() -> String {
    "sluice".to_owned()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

fn default_max_instances() -> u32 {
    3
}

fn default_interval() -> Duration {
    Duration::from_millis(250)
}

impl ClusterConfig {
    /// A cluster of `etcd` with every other key at its default.
    pub fn new(etcd: Vec<String>) -> Self {
        Self {
            etcd,
            name: default_name(),
            instance: None,
            lease_ttl: default_lease_ttl(),
            max_instances: default_max_instances(),
            interval: default_interval(),
            user: None,
            password: None,
            ca_file: None,
        }
    }

    /// Checks the table, naming offending keys under `cluster`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.etcd.is_empty() {
            return Err(crate::invalid(
                "cluster.etcd",
                "needs at least one etcd URL",
            ));
        }
        if let Some(url) = self
            .etcd
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(crate::invalid(
                "cluster.etcd",
                format!("{url:?} must be an http:// or https:// URL"),
            ));
        }
        let valid_name = |text: &str| {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !valid_name(&self.name) {
            return Err(crate::invalid(
                "cluster.name",
                "must be letters, digits, '-', '_' or '.'",
            ));
        }
        if let Some(instance) = &self.instance
            && !valid_name(instance)
        {
            return Err(crate::invalid(
                "cluster.instance",
                "must be letters, digits, '-', '_' or '.'",
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(crate::invalid("cluster.lease_ttl", "must be at least 2s"));
        }
        if self.max_instances == 0 {
            return Err(crate::invalid(
                "cluster.max_instances",
                "must be at least 1",
            ));
        }
        if self.interval.is_zero() || self.interval * 4 > self.lease_ttl {
            return Err(crate::invalid(
                "cluster.interval",
                "must be above 0 and at most a quarter of lease_ttl",
            ));
        }
        if self.etcd.iter().any(|u| u.starts_with("https://")) && self.ca_file.is_none() {
            return Err(crate::invalid(
                "cluster.ca_file",
                "https:// etcd URLs need the CA that signed etcd's certificate",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(crate::invalid(
                "cluster.user",
                "user and password go together",
            ));
        }
        Ok(())
    }
}
