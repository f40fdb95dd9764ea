//! What instances write to etcd, as JSON: each member's record (under its lease) and the
//! leader's grants. Keys live under `/sluice/<cluster>/`.
//!
//! Plain data and key names only: reading and writing them is `node`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Use, demand or a grant of one endpoint's limited resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    /// Connections.
    pub connections: u32,
    /// Open streams.
    pub streams: u32,
}

/// Per endpoint id.
pub type PerEndpoint = BTreeMap<String, Amounts>;

/// A member's record, renewed every interval under its lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Its instance id.
    pub id: String,
    /// What it uses now (connections still draining included).
    pub used: PerEndpoint,
    /// What it would use with room: its use, plus one where a limit holds it back.
    pub demand: PerEndpoint,
    /// The grants it enforces now, and the revision of the grants they came from (0: none).
    pub applied: PerEndpoint,
    /// See `applied`.
    pub applied_revision: u64,
    /// Its admin API, if it has one, for operators.
    pub admin: Option<String>,
}

/// The leader's grants: what each member may use of each limited endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grants {
    /// Raised by one at every change.
    pub revision: u64,
    /// Member id to its grants.
    pub members: BTreeMap<String, PerEndpoint>,
}

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of cluster `name`.
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("/sluice/{name}/"),
        }
    }

    /// The prefix of every member record.
    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    /// Member `id`'s record.
    pub fn member(&self, id: &str) -> String {
        format!("{}members/{id}", self.prefix)
    }

    /// The leader's grants.
    pub fn grants(&self) -> String {
        format!("{}grants", self.prefix)
    }

    /// The election the leader wins.
    pub fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }
}
