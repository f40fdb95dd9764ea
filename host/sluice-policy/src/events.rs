//! A bounded log of what happened to plugins (loaded, refused, swapped, disabled, ...), for the
//! admin API and the dashboard. Every event is also written to the tracing log.

use std::collections::VecDeque;
use std::time::SystemTime;

use parking_lot::Mutex;
use sluice_config::SlotKind;

/// Events kept; older ones are dropped.
const CAPACITY: usize = 256;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A plugin became a slot's active plugin.
    Activated,
    /// A plugin became a slot's shadow.
    ShadowLoaded,
    /// The shadow was promoted to active.
    Promoted,
    /// A previous version was made active again.
    RolledBack,
    /// A plugin was refused (invalid, wrong world, failed self-test); the previous one stays.
    LoadFailed,
    /// The breaker disabled the active plugin; the built-in policy took over.
    Disabled,
    /// A disabled plugin was enabled again.
    Enabled,
    /// A slot went back to its built-in policy.
    Cleared,
}

impl EventKind {
    /// Lowercase name for the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Activated => "activated",
            EventKind::ShadowLoaded => "shadow_loaded",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
            EventKind::LoadFailed => "load_failed",
            EventKind::Disabled => "disabled",
            EventKind::Enabled => "enabled",
            EventKind::Cleared => "cleared",
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
pub struct PolicyEvent {
    /// Increasing sequence number.
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// The slot concerned.
    pub slot: SlotKind,
    /// What happened.
    pub kind: EventKind,
    /// The plugin concerned (`name@vN`, or the file name when it was refused).
    pub plugin: String,
    /// Details: the reason for a refusal or a disable.
    pub message: String,
}

/// The bounded event log.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<(u64, VecDeque<PolicyEvent>)>,
}

impl EventLog {
    /// Records an event and logs it (refusals and disables as warnings).
    pub fn record(
        &self,
        slot: SlotKind,
        kind: EventKind,
        plugin: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        match kind {
            EventKind::LoadFailed | EventKind::Disabled => {
                tracing::warn!(%slot, plugin, event = kind.as_str(), "{message}");
            }
            _ => tracing::info!(%slot, plugin, event = kind.as_str(), "{message}"),
        }
        let mut inner = self.inner.lock();
        inner.0 += 1;
        let event = PolicyEvent {
            seq: inner.0,
            at: SystemTime::now(),
            slot,
            kind,
            plugin: plugin.to_owned(),
            message,
        };
        if inner.1.len() == CAPACITY {
            inner.1.pop_front();
        }
        inner.1.push_back(event);
    }

    /// Events after `seq` (0 for all kept), oldest first.
    pub fn since(&self, seq: u64) -> Vec<PolicyEvent> {
        self.inner
            .lock()
            .1
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}
