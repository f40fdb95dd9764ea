//! The one wasmtime engine of the process, its epoch ticker, and the identities of components
//! (content hash) and of compiled code (engine fingerprint). Compiling and the on-disk cache are
//! [`crate::cache`].
//!
//! Deadlines use epoch interruption: a background thread advances the engine's epoch every
//! [`EPOCH_TICK`], and each call sets how many ticks it may run. This module must not run plugin
//! code.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::PolicyError;

/// How often the epoch advances: the granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_micros(500);

/// The shared engine (compiling and running every plugin).
pub fn engine() -> Result<&'static wasmtime::Engine, PolicyError> {
    static ENGINE: OnceLock<Result<wasmtime::Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config
                .wasm_component_model(true)
                .epoch_interruption(true)
                .cranelift_opt_level(wasmtime::OptLevel::Speed)
                .parallel_compilation(true);
            let engine = wasmtime::Engine::new(&config).map_err(|e| e.to_string())?;
            start_ticker(engine.weak());
            Ok(engine)
        })
        .as_ref()
        .map_err(|message| PolicyError::Engine(message.clone()))
}

/// Plugin calls (and instantiations) running now; the ticker sleeps while there are none, so an
/// idle host does not wake up 2,000 times a second.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

fn start_ticker(engine: wasmtime::EngineWeak) {
    let spawned = std::thread::Builder::new()
        .name("sluice-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                if IN_FLIGHT.load(Ordering::Acquire) == 0 {
                    // Woken by the next call; the timeout only bounds a missed wake-up.
                    std::thread::park_timeout(Duration::from_millis(100));
                } else {
                    std::thread::sleep(EPOCH_TICK);
                }
            }
        });
    match spawned {
        Ok(handle) => {
            let _ = TICKER.set(handle.thread().clone());
        }
        // Without the ticker no deadline fires; every call would then be unbounded.
        Err(error) => {
            tracing::error!(%error, "cannot start the plugin epoch thread; plugin deadlines will not fire")
        }
    }
}

/// Keeps the epoch ticking while it lives: taken around every plugin call. A call's deadline
/// counts ticks from when it starts, so a ticker that was asleep loses nothing.
pub(crate) struct Ticking;

impl Ticking {
    pub(crate) fn start() -> Self {
        if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(ticker) = TICKER.get()
        {
            ticker.unpark();
        }
        Ticking
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Epoch ticks for a deadline: rounded up, plus one because the current tick may be about to end.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = deadline.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

/// The content hash of a component (hex BLAKE3): its identity in the cache and the admin API.
/// BLAKE3 rather than SHA-256 because reloads hash whole components, and an interpreter-based
/// one is 18 MB: SHA-256 took 10 ms of a 28 ms reload, BLAKE3 takes a fraction of that.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// wasmtime's version plus its compatibility hash for this engine's settings.
pub(crate) fn engine_fingerprint(engine: &wasmtime::Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime{}-{:016x}", wasmtime_version(), hasher.finish())
}

/// The wasmtime version this host was built with.
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}
