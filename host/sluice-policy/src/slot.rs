//! A policy slot: the active plugin, an optional shadow, earlier versions for rollback, the
//! breaker that disables a failing plugin, and the fallback count.
//!
//! Reading the active plugin is one atomic load (`arc-swap`), so swaps never block the data
//! path. This module decides what a failure means (count, trip the breaker); it does not run
//! plugins itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use sluice_config::{SlotConfig, SlotKind};

use crate::events::{EventKind, EventLog};
use crate::plugin::{CallFailure, Plugin};

/// Earlier active versions kept for rollback.
const HISTORY: usize = 8;

/// One slot's plugins and counters.
pub struct Slot {
    kind: SlotKind,
    settings: SlotConfig,
    active: ArcSwapOption<Plugin>,
    shadow: ArcSwapOption<Plugin>,
    history: Mutex<VecDeque<Arc<Plugin>>>,
    next_version: AtomicU32,
    events: Arc<EventLog>,
    /// Calls answered by the built-in policy (no plugin, plugin disabled, or plugin failed).
    pub fallbacks: AtomicU64,
    /// Calls answered by the built-in policy because the plugin failed.
    pub failed_calls: AtomicU64,
    /// Swaps serialise here so that versions and history stay consistent; readers never take it.
    swap: Mutex<()>,
}

impl Slot {
    pub(crate) fn new(kind: SlotKind, settings: SlotConfig, events: Arc<EventLog>) -> Self {
        Self {
            kind,
            settings,
            active: ArcSwapOption::empty(),
            shadow: ArcSwapOption::empty(),
            history: Mutex::new(VecDeque::new()),
            next_version: AtomicU32::new(1),
            events,
            fallbacks: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            swap: Mutex::new(()),
        }
    }

    /// Which slot this is.
    pub fn kind(&self) -> SlotKind {
        self.kind
    }

    /// The slot's configuration.
    pub fn settings(&self) -> &SlotConfig {
        &self.settings
    }

    /// The active plugin, disabled or not.
    pub fn active(&self) -> Option<Arc<Plugin>> {
        self.active.load_full()
    }

    /// The active plugin when it may be called.
    pub fn callable(&self) -> Option<Arc<Plugin>> {
        self.active.load_full().filter(|p| !p.is_disabled())
    }

    /// The shadow plugin.
    pub fn shadow(&self) -> Option<Arc<Plugin>> {
        self.shadow.load_full()
    }

    /// Earlier active versions, newest last.
    pub fn history(&self) -> Vec<Arc<Plugin>> {
        self.history.lock().iter().cloned().collect()
    }

    pub(crate) fn next_version(&self) -> u32 {
        self.next_version.fetch_add(1, Relaxed)
    }

    /// Makes `plugin` active; the previous one goes to the history.
    pub(crate) fn activate(&self, plugin: Arc<Plugin>, kind: EventKind, message: String) {
        let _swap = self.swap.lock();
        let label = Arc::clone(plugin.label());
        if let Some(previous) = self.active.swap(Some(plugin)) {
            self.keep(previous);
        }
        self.events.record(self.kind, kind, &label, message);
    }

    /// Adds a replaced plugin to the history, dropping the oldest beyond [`HISTORY`]. Its idle
    /// instances go: a version in the history is only kept to be made active again.
    fn keep(&self, plugin: Arc<Plugin>) {
        plugin.release_instances();
        let mut history = self.history.lock();
        while history.len() >= HISTORY {
            history.pop_front();
        }
        history.push_back(plugin);
    }

    /// Makes `plugin` the shadow.
    pub(crate) fn set_shadow(&self, plugin: Arc<Plugin>) {
        let _swap = self.swap.lock();
        let label = Arc::clone(plugin.label());
        self.shadow.store(Some(plugin));
        self.events.record(
            self.kind,
            EventKind::ShadowLoaded,
            &label,
            "receives sampled inputs off the data path",
        );
    }

    /// Promotes the shadow to active.
    pub(crate) fn promote(&self) -> Result<Arc<Plugin>, String> {
        let shadow = {
            let _swap = self.swap.lock();
            self.shadow.swap(None)
        };
        let shadow =
            shadow.ok_or_else(|| format!("the {} slot has no shadow plugin", self.kind))?;
        let agreement = agreement(&shadow);
        self.activate(
            Arc::clone(&shadow),
            EventKind::Promoted,
            format!("shadow promoted (agreement {agreement})"),
        );
        Ok(shadow)
    }

    /// Makes the newest earlier version active again.
    pub(crate) fn rollback(&self) -> Result<Arc<Plugin>, String> {
        let _swap = self.swap.lock();
        let previous = self
            .history
            .lock()
            .pop_back()
            .ok_or_else(|| format!("the {} slot has no earlier version", self.kind))?;
        previous.disabled.store(false, Relaxed);
        previous.stats.reset_breaker();
        let replaced = self.active.swap(Some(Arc::clone(&previous)));
        let message = match replaced {
            Some(replaced) => format!("replaces {}", replaced.label()),
            None => "replaces the built-in policy".to_owned(),
        };
        self.events
            .record(self.kind, EventKind::RolledBack, previous.label(), message);
        Ok(previous)
    }

    /// Takes the earlier version whose content hash is `hash` out of the history and makes it
    /// active (the one it replaces joins the history) or, with `shadow`, the shadow.
    pub(crate) fn restore(&self, hash: &str, shadow: bool) -> Result<Arc<Plugin>, String> {
        let plugin = {
            let _swap = self.swap.lock();
            let mut history = self.history.lock();
            let position = history
                .iter()
                .position(|p| p.info().hash == hash)
                .ok_or_else(|| {
                    format!(
                        "the {} slot has no earlier version with hash {hash:?} (GET /api/v1/plugins lists them)",
                        self.kind
                    )
                })?;
            history
                .remove(position)
                .ok_or_else(|| format!("the {} slot's history changed", self.kind))?
        };
        plugin.disabled.store(false, Relaxed);
        plugin.stats.reset_breaker();
        if shadow {
            self.set_shadow(Arc::clone(&plugin));
        } else {
            self.activate(
                Arc::clone(&plugin),
                EventKind::Activated,
                "earlier version made active again".to_owned(),
            );
        }
        Ok(plugin)
    }

    /// Re-enables a plugin the breaker disabled.
    pub(crate) fn enable(&self) -> Result<Arc<Plugin>, String> {
        let active = self
            .active()
            .ok_or_else(|| format!("the {} slot has no plugin", self.kind))?;
        active.stats.reset_breaker();
        if active.disabled.swap(false, Relaxed) {
            self.events
                .record(self.kind, EventKind::Enabled, active.label(), "re-enabled");
        }
        Ok(active)
    }

    /// Removes the active plugin (and shadow): the built-in policy answers.
    pub(crate) fn clear(&self) {
        let _swap = self.swap.lock();
        self.shadow.store(None);
        if let Some(previous) = self.active.swap(None) {
            let label = Arc::clone(previous.label());
            self.keep(previous);
            self.events.record(
                self.kind,
                EventKind::Cleared,
                &label,
                "built-in policy active",
            );
        }
    }

    /// Counts a failed call of the active plugin (made at `at`) and trips the breaker: at the
    /// consecutive-failure threshold, or when more than `failure_rate` of the calls in the
    /// window failed (so that failures mixed with successes cannot keep a plugin in place).
    pub(crate) fn failed(&self, plugin: &Plugin, failure: &CallFailure, at: Instant) {
        self.failed_calls.fetch_add(1, Relaxed);
        self.fallbacks.fetch_add(1, Relaxed);
        let consecutive = plugin.stats.failed(failure);
        let window = self.settings.failure_rate_window();
        plugin.stats.window.record(at, window, true);
        tracing::debug!(slot = %self.kind, plugin = %plugin.label(), %failure, "plugin call failed; built-in policy used");
        let why = if consecutive >= self.settings.failures_to_disable() {
            format!("{consecutive} consecutive failures")
        } else {
            let counts = plugin.stats.window.counts(at, window);
            let rate = self.settings.failure_rate_to_disable();
            if !counts.exceeds(rate, self.settings.failure_rate_min_calls()) {
                return;
            }
            format!(
                "{} of the last {} calls failed (over {}% in {:?})",
                counts.failures,
                counts.calls,
                rate * 100.0,
                window
            )
        };
        if !plugin.disabled.swap(true, Relaxed) {
            self.events.record(
                self.kind,
                EventKind::Disabled,
                plugin.label(),
                format!(
                    "{why} (last: {failure}); the built-in policy answers until the plugin is \
                     re-enabled or replaced"
                ),
            );
        }
    }

    /// Counts a call answered by the built-in policy with no plugin involved.
    pub(crate) fn used_builtin(&self) {
        self.fallbacks.fetch_add(1, Relaxed);
    }

    /// One call of the active plugin: counted, timed, and its answer checked. Failures are
    /// counted against the plugin (and may trip its breaker) before they are returned.
    pub(crate) fn call<T>(
        &self,
        call: impl FnOnce(&Plugin) -> Result<T, CallFailure>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Answer<T> {
        let Some(plugin) = self.callable() else {
            self.used_builtin();
            return Answer::NoPlugin;
        };
        self.call_plugin(plugin, call, check)
    }

    /// [`Slot::call`] with a plugin the caller already loaded from [`Slot::callable`].
    pub(crate) fn call_plugin<T>(
        &self,
        plugin: Arc<Plugin>,
        call: impl FnOnce(&Plugin) -> Result<T, CallFailure>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Answer<T> {
        plugin.stats.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        let answer = call(&plugin)
            .and_then(|value| check(&value).map(|()| value).map_err(CallFailure::Invalid));
        match answer {
            Ok(value) => {
                plugin.record_success(started);
                plugin
                    .stats
                    .window
                    .record(started, self.settings.failure_rate_window(), false);
                Answer::Answered(value, plugin)
            }
            Err(failure) => {
                self.failed(&plugin, &failure, started);
                Answer::Failed(failure, plugin)
            }
        }
    }
}

/// What [`Slot::call`] got.
pub(crate) enum Answer<T> {
    /// The plugin's valid answer.
    Answered(T, Arc<Plugin>),
    /// No callable plugin: the built-in policy must answer.
    NoPlugin,
    /// The plugin failed (already counted): the built-in policy must answer.
    Failed(CallFailure, Arc<Plugin>),
}

/// A shadow's agreement as text, e.g. `97.5% of 400`.
pub fn agreement(plugin: &Plugin) -> String {
    let compared = plugin.stats.shadow_compared.load(Relaxed);
    if compared == 0 {
        return "not measured".to_owned();
    }
    let agreed = plugin.stats.shadow_agreed.load(Relaxed);
    format!(
        "{:.1}% of {compared}",
        agreed as f64 * 100.0 / compared as f64
    )
}

/// Records a shadow's answer: a failure, or whether it agreed with the active answer.
pub(crate) fn shadow_compare<T>(
    shadow: &Plugin,
    call: impl FnOnce(&Plugin) -> Result<T, CallFailure>,
    check: impl FnOnce(&T) -> Result<(), String>,
    agrees: impl FnOnce(&T) -> bool,
) {
    shadow.stats.calls.fetch_add(1, Relaxed);
    let started = Instant::now();
    let answer = call(shadow);
    let answer =
        answer.and_then(|value| check(&value).map(|()| value).map_err(CallFailure::Invalid));
    match answer {
        Ok(value) => {
            shadow.record_success(started);
            shadow.stats.shadow_compared.fetch_add(1, Relaxed);
            if agrees(&value) {
                shadow.stats.shadow_agreed.fetch_add(1, Relaxed);
            }
        }
        Err(failure) => {
            shadow.stats.failed(&failure);
        }
    }
}
