//! What a plugin instance can reach: the store data behind every call and the host imports
//! (`log`, `clock`, `config`, `scorer`, `history` - bounded by [`crate::history`] - and WASI for
//! components that import it).
//!
//! This module owns the per-instance limits (memory cap) and the import implementations. It must
//! not give a plugin anything beyond its slot's configuration values: no files, sockets,
//! environment variables or host internals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::router::sluice::policy::{clock, config, log, scorer};
use crate::bindings::scaler::sluice::policy::history;
use crate::history::SharedHistory;
use crate::scorer::Scorer;

/// Log lines longer than this are truncated.
const MAX_LOG_LINE: usize = 4096;
/// Log lines a plugin may write per second; the rest are counted and dropped.
const LOG_LINES_PER_SECOND: u32 = 100;

/// What every instance of one plugin shares: its name, configuration values, scorer and load
/// history.
pub(crate) struct PluginEnv {
    /// The plugin's name (file stem or upload name), used in its log lines.
    pub label: String,
    pub config: BTreeMap<String, String>,
    pub scorer: Arc<dyn Scorer>,
    /// The `history` import's source, shared with [`crate::Policies`] so that
    /// `set_history` reaches plugins loaded before it.
    pub history: SharedHistory,
    pub log_budget: Mutex<LogBudget>,
    pub started: Instant,
}

/// A fixed one-second window of allowed log lines.
pub(crate) struct LogBudget {
    window_start: Instant,
    used: u32,
    dropped: u64,
}

impl LogBudget {
    pub fn new() -> Self {
        Self {
            window_start: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    /// Whether one more line may be written now; when a new window opens, returns how many
    /// lines the last one dropped so that the loss is visible.
    fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped_before = 0;
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
            dropped_before = std::mem::take(&mut self.dropped);
        }
        if self.used < LOG_LINES_PER_SECOND {
            self.used += 1;
            (true, dropped_before)
        } else {
            self.dropped += 1;
            (false, dropped_before)
        }
    }
}

/// A memory cap per instance that remembers whether it refused growth, so a failure can be
/// reported as "memory limit" rather than as the trap the guest's allocator turned it into.
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
    /// Bytes of all the instance's linear memories together: the cap is per instance, not per
    /// memory.
    total: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real policy.
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// The data of one plugin instance's store.
pub(crate) struct HostState {
    pub env: Arc<PluginEnv>,
    pub memory: MemoryCap,
    /// The current call's last scored batch (router plugins only).
    pub scored: Option<sluice_contract::route::ScoredBatch>,
    /// When the current call's deadline passes (set by every call): what is left of it is the
    /// `scorer` import's budget.
    pub call_deadline: Option<Instant>,
    /// Rows a `score` batch may have during the current call: the candidates of the route
    /// request being answered. `None` outside a router's `route` call, where scoring is refused.
    pub score_rows: Option<usize>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub fn new(env: Arc<PluginEnv>, memory_limit: u64) -> Self {
        // WASI with nothing in it: no preopened folders, environment, arguments or network, and
        // stdio that discards. Only components that import WASI ever reach it.
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            env,
            memory: MemoryCap {
                max_bytes: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                hit: false,
                total: 0,
            },
            scored: None,
            call_deadline: None,
            score_rows: None,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `HasData` marker so the generated `add_to_linker` functions hand out `&mut HostState`.
pub(crate) struct HostData;

impl HasData for HostData {
    type Data<'a> = &'a mut HostState;
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let (allowed, dropped) = self.env.log_budget.lock().take(Instant::now());
        let plugin = self.env.label.as_str();
        if dropped > 0 {
            tracing::warn!(
                plugin,
                dropped,
                "plugin log lines dropped (over 100 per second)"
            );
        }
        if !allowed {
            return;
        }
        let message = crate::types::truncate_reason(message, MAX_LOG_LINE);
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl clock::Host for HostState {
    fn now_ns(&mut self) -> u64 {
        u64::try_from(self.env.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.env.config.get(&key).cloned()
    }

    fn keys(&mut self) -> Vec<String> {
        self.env.config.keys().cloned().collect()
    }
}

impl scorer::Host for HostState {
    /// Scores a batch of at most one row per candidate, within the time left in the call; a
    /// batch the host refuses never reaches the model, and the plugin gets the reason.
    fn score(&mut self, batch: scorer::FeatureBatch) -> Result<Vec<f32>, String> {
        let Some(max_rows) = self.score_rows else {
            return Err("scoring is only possible while answering a route request".to_owned());
        };
        let columns = batch.columns as usize;
        let values = batch.values.len();
        if columns == 0 || !values.is_multiple_of(columns) {
            return Err(format!(
                "malformed batch: {values} values is not a whole number of rows of {columns} columns"
            ));
        }
        let rows = values / columns;
        if rows > max_rows {
            return Err(format!(
                "batch of {rows} rows refused: at most one row per candidate ({max_rows})"
            ));
        }
        let budget = self.call_deadline.map_or(Duration::ZERO, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if budget.is_zero() {
            return Err("no time left in the call to score".to_owned());
        }
        let scores = self
            .env
            .scorer
            .score_within(batch.columns, &batch.values, budget)?;
        // Kept for the learning loop: the router takes it once the plugin has decided.
        self.scored = Some(sluice_contract::route::ScoredBatch {
            columns: batch.columns,
            values: batch.values,
            scores: scores.clone(),
        });
        Ok(scores)
    }

    fn model(&mut self) -> String {
        self.env.scorer.model()
    }
}

impl crate::bindings::router::sluice::policy::types::Host for HostState {}

impl history::Host for HostState {
    fn group_streams(
        &mut self,
        class: crate::types::TrafficClass,
        step_minutes: u32,
        points: u32,
    ) -> Vec<f64> {
        // Clone the handle so a concurrent `set_history` never waits on a plugin call.
        let current = Arc::clone(&self.env.history.read());
        crate::history::group_streams(current.as_ref(), class, step_minutes, points)
    }
}

/// The WASI version whose blocking functions are replaced (the one wasmtime-wasi 48 links;
/// components importing any 0.2.x version resolve to it).
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// The trap a plugin gets when it tries to wait.
const NO_BLOCKING: &str = concat!(
    "policies may not block: wasi:io/poll (sleep, waiting on a stream or a timer) is refused, ",
    "because an epoch deadline cannot interrupt a wait inside the host"
);

/// The linker every plugin is instantiated with: the `sluice:policy` imports for all worlds
/// (`history` too, which only the scaler world imports; components that do not import it, such
/// as scalers built before it existed, are unaffected), plus WASI (used only by components that
/// import it).
///
/// WASI's `poll` and `pollable.block` are replaced by functions that trap: they wait inside the
/// host, where no deadline reaches, so a plugin that sleeps would otherwise hold its caller for
/// as long as it likes. Everything else a policy could use from WASI (clocks, random, writing to
/// the discarded stdout) returns at once.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    crate::bindings::router::Router::add_to_linker::<HostState, HostData>(&mut linker, |s| s)?;
    // The scaler world's only import beyond the router's (it shares the rest).
    crate::bindings::scaler::sluice::policy::history::add_to_linker::<HostState, HostData>(
        &mut linker,
        |s| s,
    )?;
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL)?;
    for name in ["poll", "[method]pollable.block"] {
        poll.func_new(name, |_, _, _, _| Err(wasmtime::Error::msg(NO_BLOCKING)))?;
    }
    linker.allow_shadowing(false);
    Ok(linker)
}
