//! The one wasmtime engine of the process, its epoch ticker, and the on-disk cache of compiled
//! components.
//!
//! Deadlines use epoch interruption: a background thread advances the engine's epoch every
//! [`EPOCH_TICK`], and each call sets how many ticks it may run. This module must not run plugin
//! code; it only compiles and caches it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;

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

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled with Cranelift now.
    Compiled,
    /// Loaded from the on-disk cache.
    Cached,
}

/// Compiled components on disk, named by content hash and engine fingerprint.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// A cache in `dir`; `None` (or an empty path) compiles every time.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir: dir.filter(|d| !d.as_os_str().is_empty()),
        }
    }

    /// The default folder: `$XDG_CACHE_HOME/sluice/wasm`, else `~/.cache/sluice/wasm`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("sluice").join("wasm"))
    }

    /// Compiles `bytes`, or loads the compiled code cached for the same bytes and engine.
    pub fn component(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        hash: &str,
    ) -> Result<(Component, CompileSource), PolicyError> {
        let Some(dir) = &self.dir else {
            return Ok((compile(engine, bytes)?, CompileSource::Compiled));
        };
        let path = dir.join(format!("{hash}-{}.cwasm", engine_fingerprint(engine)));
        if path.is_file() {
            // SAFETY: the file was written by `Component::serialize` of this same engine build
            // (the fingerprint is in its name) into Sluice's own cache folder; wasmtime checks
            // its header and refuses files from another version or configuration.
            #[allow(unsafe_code)]
            let cached = unsafe { Component::deserialize_file(engine, &path) };
            match cached {
                Ok(component) => return Ok((component, CompileSource::Cached)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring unusable compile cache entry");
                }
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(error) = store(&path, &component) {
            tracing::warn!(path = %path.display(), %error, "cannot write compile cache entry");
        }
        Ok((component, CompileSource::Compiled))
    }
}

fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, PolicyError> {
    let started = Instant::now();
    let component =
        Component::new(engine, bytes).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "component compiled"
    );
    Ok(component)
}

/// Writes atomically: a half-written entry must never be deserialized.
fn store(path: &Path, component: &Component) -> std::io::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Unique per write: two loads of the same bytes may store the same entry at once.
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let temp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&temp, serialized)?;
    std::fs::rename(&temp, path)
}

/// wasmtime's version plus its compatibility hash for this engine's settings.
fn engine_fingerprint(engine: &wasmtime::Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime{}-{:016x}", wasmtime_version(), hasher.finish())
}

/// The wasmtime version this host was built with.
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}
