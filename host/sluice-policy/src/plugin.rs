//! One loaded plugin: a compiled component bound to its world, a pool of ready instances, and
//! the bounded call that runs it (deadline, memory cap, trap and panic containment).
//!
//! This module knows how to run a plugin safely; it does not decide what to do with a failure
//! (falling back, counting, disabling) - that is the slot's job.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sluice_config::SlotKind;
use wasmtime::Store;

use crate::PolicyError;
use crate::engine::{Ticking, deadline_ticks};
use crate::host::{HostState, PluginEnv};
use crate::types::truncate_reason;
use crate::window::FailureWindow;

/// Idle instances kept per plugin; more concurrent callers instantiate extra ones and drop them.
const MAX_IDLE_INSTANCES: usize = 16;
/// Longest failure message kept (they go into events and logs).
const MAX_FAILURE_BYTES: usize = 1024;
/// Instantiation runs guest start-up code; when a plugin is loaded it gets this generous bound.
const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(2);
/// A new instance made during a call (no idle one left) is bounded by this many call deadlines
/// (at least 100 ms, at most [`INSTANTIATE_DEADLINE`]), so a slow start-up costs the data path
/// little more than a slow call.
const INSTANTIATE_DEADLINES_PER_CALL: u32 = 50;

/// Why one plugin call produced no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its deadline and was interrupted.
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    /// The instance tried to grow its memory past the cap.
    #[error("memory limit of {0} bytes reached")]
    MemoryLimit(u64),
    /// The guest trapped (including a guest panic, which aborts into `unreachable`).
    #[error("trap: {0}")]
    Trap(String),
    /// A host function panicked during the call; the host kept running.
    #[error("host panic during the call: {0}")]
    Panic(String),
    /// The plugin returned its `error` variant.
    #[error("plugin error: {0}")]
    Error(String),
    /// The answer broke the contract (index out of range, NaN confidence, ...).
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// A new instance could not be created.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

impl CallFailure {
    /// The plugin's own `error` answer, cut to a length fit for events and logs.
    pub(crate) fn from_plugin_error(message: String) -> Self {
        CallFailure::Error(truncate_reason(message, MAX_FAILURE_BYTES))
    }

    /// A short label for counters: `timeout`, `memory`, `trap`, `panic`, `error`, `invalid`,
    /// `instantiate`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Timeout(_) => "timeout",
            CallFailure::MemoryLimit(_) => "memory",
            CallFailure::Trap(_) => "trap",
            CallFailure::Panic(_) => "panic",
            CallFailure::Error(_) => "error",
            CallFailure::Invalid(_) => "invalid",
            CallFailure::Instantiate(_) => "instantiate",
        }
    }
}

/// Limits applied to every call of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: u64,
}

/// Facts about a loaded plugin, for the admin API and `sluice plugin check`.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// File stem or upload name.
    pub name: String,
    /// Version within its slot (1, 2, ...), assigned when loaded into a slot; 0 when only checked.
    pub version: u32,
    /// The world (and so the slot kind) it targets.
    pub world: SlotKind,
    /// Hex BLAKE3 hash of the component bytes.
    pub hash: String,
    /// Component size in bytes.
    pub size: usize,
    /// Names of the component's imports (interfaces).
    pub imports: Vec<String>,
    /// Names of the component's exports.
    pub exports: Vec<String>,
    /// Whether it imports WASI (given an empty WASI context).
    pub uses_wasi: bool,
    /// Whether the compiled code came from the cache.
    pub cached: bool,
    /// Time to compile or load the compiled code.
    pub compile_time: Duration,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// Calls and failures of one plugin version.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls attempted.
    pub calls: AtomicU64,
    /// Calls that failed, any reason.
    pub failures: AtomicU64,
    /// Of which: deadline exceeded.
    pub timeouts: AtomicU64,
    /// Of which: memory cap reached.
    pub memory: AtomicU64,
    /// Of which: traps and host panics.
    pub traps: AtomicU64,
    /// Of which: invalid answers and plugin errors.
    pub invalid: AtomicU64,
    /// Failures since the last success.
    pub consecutive_failures: AtomicU32,
    /// Calls and failures of the slot's `failure_window`, for the breaker's failure rate
    /// (active calls only: a shadow cannot be disabled).
    pub(crate) window: FailureWindow,
    /// Nanoseconds spent in successful calls (for the mean).
    pub busy_ns: AtomicU64,
    /// Calls compared with the active plugin while this plugin was a shadow.
    pub shadow_compared: AtomicU64,
    /// Of which the answers agreed.
    pub shadow_agreed: AtomicU64,
    /// Shadow inputs dropped because the shadow could not keep up.
    pub shadow_dropped: AtomicU64,
}

impl PluginStats {
    /// Counts a failure by kind and returns the consecutive-failure count.
    pub(crate) fn failed(&self, failure: &CallFailure) -> u32 {
        self.failures.fetch_add(1, Relaxed);
        let counter = match failure {
            CallFailure::Timeout(_) => &self.timeouts,
            CallFailure::MemoryLimit(_) => &self.memory,
            CallFailure::Trap(_) | CallFailure::Panic(_) | CallFailure::Instantiate(_) => {
                &self.traps
            }
            CallFailure::Error(_) | CallFailure::Invalid(_) => &self.invalid,
        };
        counter.fetch_add(1, Relaxed);
        self.consecutive_failures.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn succeeded(&self, took: Duration) {
        self.consecutive_failures.store(0, Relaxed);
        self.busy_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Forgets the failures the breaker counts (consecutive and in the window): the plugin is
    /// given a fresh start after it was re-enabled or made active again.
    pub(crate) fn reset_breaker(&self) {
        self.consecutive_failures.store(0, Relaxed);
        self.window.clear();
    }
}

/// A component bound to its world, as the world-independent machinery here sees it: something
/// that instantiates into that world's exports. Each world's typed calls (see [`crate::world`])
/// find their exports again by downcasting.
pub(crate) trait BoundComponent: Send + Sync {
    /// A new instance's exports, in `store`.
    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Box<Exports>>;
}

/// The exports of one instance, of whichever world it is.
pub(crate) type Exports = dyn Any + Send + Sync;

struct Instance {
    store: Store<HostState>,
    exports: Box<Exports>,
}

/// A plugin ready to be called.
pub struct Plugin {
    info: PluginInfo,
    label: Arc<str>,
    bound: Box<dyn BoundComponent>,
    engine: wasmtime::Engine,
    env: Arc<PluginEnv>,
    limits: Limits,
    idle: Mutex<Vec<Instance>>,
    /// Calls and failures of this version.
    pub stats: PluginStats,
    /// Set by the slot's breaker after too many failures (consecutive, or as a share of the
    /// recent calls).
    pub(crate) disabled: AtomicBool,
}

impl Plugin {
    /// A plugin of `bound`, instantiated once to prove it starts. `info` already names the
    /// world `bound` was bound to (see [`crate::world`]).
    pub(crate) fn start(
        info: PluginInfo,
        bound: Box<dyn BoundComponent>,
        engine: &wasmtime::Engine,
        env: Arc<PluginEnv>,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let plugin = Self {
            label: Arc::from(format!("{}@v{}", info.name, info.version)),
            info,
            bound,
            engine: engine.clone(),
            env,
            limits,
            idle: Mutex::new(Vec::new()),
            stats: PluginStats::default(),
            disabled: AtomicBool::new(false),
        };
        let first = plugin
            .instantiate(INSTANTIATE_DEADLINE)
            .map_err(|failure| PolicyError::Start(failure.to_string()))?;
        plugin.idle.lock().push(first);
        Ok(plugin)
    }

    /// Drops the idle instances (and their memories); the next call instantiates afresh.
    pub(crate) fn release_instances(&self) {
        self.idle.lock().clear();
    }

    /// What was loaded.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The per-call limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the slot's breaker disabled this plugin.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Relaxed)
    }

    pub(crate) fn set_version(&mut self, version: u32) {
        self.info.version = version;
        self.label = Arc::from(format!("{}@v{}", self.info.name, version));
    }

    /// `name@vN`, for logs, reasons and the decision history.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    fn instantiate(&self, deadline: Duration) -> Result<Instance, CallFailure> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(Arc::clone(&self.env), self.limits.memory_bytes),
        );
        store.limiter(|state| &mut state.memory);
        let _ticking = Ticking::start();
        store.set_epoch_deadline(deadline_ticks(deadline));
        let started = catch_unwind(AssertUnwindSafe(|| self.bound.instantiate(&mut store)));
        match started {
            Ok(Ok(exports)) => Ok(Instance { store, exports }),
            Ok(Err(error)) => Err(CallFailure::Instantiate(format!("{error:#}"))),
            Err(panic) => Err(CallFailure::Instantiate(panic_message(&panic))),
        }
    }

    /// Runs `call` on an idle (or new) instance under the deadline; a failed instance is
    /// dropped, since a trap can leave it in any state.
    pub(crate) fn run<R>(
        &self,
        deadline: Duration,
        call: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let idle = self.idle.lock().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate(
                (deadline * INSTANTIATE_DEADLINES_PER_CALL)
                    .clamp(Duration::from_millis(100), INSTANTIATE_DEADLINE),
            )?,
        };
        instance.store.data_mut().memory.hit = false;
        let ticking = Ticking::start();
        instance.store.set_epoch_deadline(deadline_ticks(deadline));
        // The same end as the epoch deadline's, for host imports that wait (the scorer).
        instance.store.data_mut().call_deadline = Instant::now().checked_add(deadline);
        let Instance { store, exports } = &mut instance;
        // `&**`: the instance's exports themselves, not the box (which is `Any` too).
        let guarded = || catch_unwind(AssertUnwindSafe(|| call(store, &**exports)));
        // WASI's blocking calls (a guest writing to stdout, say) run a future to completion on
        // the current tokio runtime, which a runtime worker thread may not do. Handing the
        // worker's other tasks off for the duration of the call makes that legal; it costs a
        // few microseconds, so only components that import WASI pay it.
        let outcome = if self.info.uses_wasi && on_runtime_worker() {
            tokio::task::block_in_place(guarded)
        } else {
            guarded()
        };
        drop(ticking);
        match outcome {
            Ok(Ok(value)) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE_INSTANCES {
                    idle.push(instance);
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                if instance.store.data().memory.hit {
                    Err(CallFailure::MemoryLimit(self.limits.memory_bytes))
                } else if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
                {
                    Err(CallFailure::Timeout(deadline))
                } else {
                    Err(CallFailure::Trap(truncate_reason(
                        format!("{error:#}"),
                        MAX_FAILURE_BYTES,
                    )))
                }
            }
            Err(panic) => Err(CallFailure::Panic(truncate_reason(
                panic_message(&panic),
                MAX_FAILURE_BYTES,
            ))),
        }
    }

    /// Times a successful call for the stats; `Instant` is taken by the caller so that
    /// validation is not counted as plugin time.
    pub(crate) fn record_success(&self, started: Instant) {
        self.stats.succeeded(started.elapsed());
    }
}

/// Whether this thread belongs to a multi-threaded tokio runtime (where `block_in_place` works).
fn on_runtime_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
