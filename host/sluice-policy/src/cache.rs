//! Obtaining compiled components: compiled now (one at a time, through the [`CompileGate`]) or
//! loaded from the on-disk cache of earlier compiles.
//!
//! The cache is a folder of `<content hash>-<engine fingerprint>.cwasm` files, each with a
//! `.cwasm.blake3` digest of its bytes written beside it by Sluice. Loading compiled code runs
//! whatever the file says, so the folder is trusted only when this process's user owns it and
//! nobody else may write to it (it is created with mode `0700`; otherwise it is not used, with a
//! warning), and a file is deserialized only when its bytes match its digest (otherwise it is
//! deleted and the component recompiled). The folder is capped at `[plugins] cache_max_bytes`:
//! an index of its entries (size, recency) evicts the least recently used, deleting their files.
//!
//! This module must not run plugin code; it compiles and stores it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use wasmtime::component::Component;

use crate::PolicyError;
use crate::engine::engine_fingerprint;
use crate::gate::CompileGate;

/// The extension of compiled code, and the one added for its digest.
const ARTIFACT: &str = "cwasm";
const DIGEST: &str = "blake3";
/// Write-in-progress files older than this were left by a crash and are deleted at start (a
/// younger one may be another process's write in progress: the folder can be shared).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled with Cranelift now.
    Compiled,
    /// Loaded from the on-disk cache.
    Cached,
}

/// Compiles components, one at a time, and keeps their compiled code on disk.
pub struct CompileCache {
    disk: Option<Disk>,
    gate: CompileGate,
}

/// The cache folder in use and its index.
struct Disk {
    dir: PathBuf,
    /// Entry file names to their size on disk (artifact and digest); evicting one deletes its
    /// files.
    index: moka::sync::Cache<String, u64>,
}

impl CompileCache {
    /// A cache in `dir` holding at most `max_bytes`; `None` (or an empty path) compiles every
    /// time. A folder that cannot be created, or is not safe to load code from, is reported and
    /// the cache is off.
    pub fn new(dir: Option<PathBuf>, max_bytes: u64) -> Self {
        let disk =
            dir.filter(|d| !d.as_os_str().is_empty())
                .and_then(|dir| match trusted_dir(&dir) {
                    Ok(()) => Some(Disk::open(dir, max_bytes)),
                    Err(problem) => {
                        tracing::warn!(
                            dir = %dir.display(),
                            "not using the plugin compile cache: {problem}; plugins are compiled \
                             on every load"
                        );
                        None
                    }
                });
        Self {
            disk,
            gate: CompileGate::default(),
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

    /// The folder in use, `None` when the cache is off.
    pub fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|disk| disk.dir.as_path())
    }

    /// Bytes of the entries this process knows of (after pending evictions).
    pub fn size(&self) -> u64 {
        self.disk.as_ref().map_or(0, |disk| {
            disk.index.run_pending_tasks();
            disk.index.weighted_size()
        })
    }

    #[cfg(test)]
    pub(crate) fn gate(&self) -> &CompileGate {
        &self.gate
    }

    /// Loads the compiled code cached for the same bytes and engine, or compiles `bytes` (taking
    /// the compile permit, which may refuse: see [`CompileGate`]) and caches the result.
    pub fn component(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        hash: &str,
    ) -> Result<(Component, CompileSource), PolicyError> {
        let Some(disk) = &self.disk else {
            let _permit = self.gate.enter()?;
            return Ok((compile(engine, bytes)?, CompileSource::Compiled));
        };
        let name = format!("{hash}-{}.{ARTIFACT}", engine_fingerprint(engine));
        if let Some(component) = disk.load(engine, &name) {
            return Ok((component, CompileSource::Cached));
        }
        let _permit = self.gate.enter()?;
        // Another load of the same bytes may have compiled them while this one waited.
        if let Some(component) = disk.load(engine, &name) {
            return Ok((component, CompileSource::Cached));
        }
        let component = compile(engine, bytes)?;
        if let Err(error) = disk.store(&name, &component) {
            tracing::warn!(dir = %disk.dir.display(), %error, "cannot write compile cache entry");
        }
        Ok((component, CompileSource::Compiled))
    }
}

impl Disk {
    /// The index over the entries already in `dir`, least recently used first (by modification
    /// time, which a cache hit refreshes), evicting beyond `max_bytes` at once.
    fn open(dir: PathBuf, max_bytes: u64) -> Self {
        let evicted_from = dir.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_name: &String, size: &u64| u32::try_from(*size).unwrap_or(u32::MAX))
            .eviction_listener(move |name: std::sync::Arc<String>, _size, cause| {
                // `Replaced` is the same file written again; `Explicit` is a removal that
                // already deleted it.
                if cause == RemovalCause::Size {
                    tracing::debug!(entry = %name, "compile cache entry evicted (cache_max_bytes)");
                    remove_entry(&evicted_from, &name);
                }
            })
            .build();
        let disk = Self { dir, index };
        let mut entries = disk.existing_entries();
        entries.sort_by_key(|(_, _, used)| *used);
        for (name, size, _) in entries {
            disk.index.insert(name, size);
        }
        disk.index.run_pending_tasks();
        disk
    }

    /// `(file name, size of artifact and digest, last use)` of each artifact in the folder.
    /// Deletes digests without an artifact and write-in-progress files a crash left behind.
    fn existing_entries(&self) -> Vec<(String, u64, SystemTime)> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot list the compile cache");
                return Vec::new();
            }
        };
        let mut entries = Vec::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let orphan = name
                .strip_suffix(&format!(".{DIGEST}"))
                .is_some_and(|artifact| !self.dir.join(artifact).is_file());
            let stale_temp =
                name.contains(".tmp") && modified.elapsed().is_ok_and(|age| age > STALE_TEMP);
            if orphan || stale_temp {
                let _ = std::fs::remove_file(entry.path());
            } else if name.ends_with(&format!(".{ARTIFACT}")) {
                let digest = std::fs::metadata(digest_path(&entry.path())).map_or(0, |m| m.len());
                entries.push((name, metadata.len() + digest, modified));
            }
        }
        entries
    }

    /// The cached component `name`, if its file is there and matches its digest. A file that
    /// does not is deleted (with a warning) so that it is compiled and written afresh.
    fn load(&self, engine: &wasmtime::Engine, name: &str) -> Option<Component> {
        let path = self.dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot read compile cache entry");
                }
                self.index.invalidate(name);
                return None;
            }
        };
        let expected = std::fs::read_to_string(digest_path(&path)).unwrap_or_default();
        if expected.trim() != blake3::hash(&bytes).to_hex().as_str() {
            tracing::warn!(
                path = %path.display(),
                "compile cache entry does not match the digest written with it (changed, \
                 truncated or not written by Sluice); deleted, compiling again"
            );
            self.forget(name);
            return None;
        }
        // SAFETY: `bytes` are, byte for byte, what Sluice wrote from `Component::serialize`
        // (their BLAKE3 digest matches the one written with them) into its own cache folder,
        // which only this user may write to (checked when the cache was opened). The name
        // carries the engine fingerprint (wasmtime version and settings), and wasmtime checks
        // the header too and refuses code from another version or configuration.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(component) => {
                self.used(name, bytes.len() as u64 + expected.len() as u64, &path);
                Some(component)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unusable compile cache entry deleted");
                self.forget(name);
                None
            }
        }
    }

    /// Marks entry `name` used now: most recent in the index, and on disk (its modification time,
    /// which orders entries the next time the cache is opened).
    fn used(&self, name: &str, size: u64, path: &Path) {
        if self.index.get(name).is_none() {
            // Written by another process sharing the folder.
            self.index.insert(name.to_owned(), size);
            self.index.run_pending_tasks();
        }
        if let Ok(file) = OpenOptions::new().write(true).open(path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Deletes entry `name` from the index and the folder.
    fn forget(&self, name: &str) {
        self.index.invalidate(name);
        remove_entry(&self.dir, name);
    }

    /// Writes the compiled code and its digest, each atomically (a half-written file must never
    /// be read), then indexes it, evicting the least recently used entries beyond the cap.
    fn store(&self, name: &str, component: &Component) -> std::io::Result<()> {
        let serialized = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let digest = blake3::hash(&serialized).to_hex();
        let path = self.dir.join(name);
        // The artifact first: a reader that finds it before its digest deletes it and compiles,
        // which is wasted work but never loads unverified code.
        write_private(&path, &serialized)?;
        write_private(&digest_path(&path), digest.as_bytes())?;
        self.index.insert(
            name.to_owned(),
            serialized.len() as u64 + digest.len() as u64,
        );
        self.index.run_pending_tasks();
        Ok(())
    }
}

/// The digest file of an artifact: `<name>.cwasm.blake3`.
fn digest_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(format!(".{DIGEST}"));
    PathBuf::from(name)
}

/// Deletes an entry's artifact and digest (either may already be gone).
fn remove_entry(dir: &Path, name: &str) {
    let path = dir.join(name);
    for file in [digest_path(&path), path] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %file.display(), %error, "cannot delete compile cache entry")
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file (mode `0600`) renamed into place.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per write: two loads (or processes) may store the same entry at once.
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let temp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = create_private(&temp).and_then(|mut file| file.write_all(bytes));
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

/// Creates `path`, which must not exist yet, readable and writable by its owner only.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Makes `dir` (mode `0700`) unless it exists, then checks that only this process's user can
/// change what is in it: owned by that user, not writable by group or others.
fn trusted_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let metadata = std::fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_dir() {
        return Err("it is not a folder".to_owned());
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {mode:o}); `chmod 700` it, or set \
             [plugins] cache_dir elsewhere"
        ));
    }
    let user = current_user(dir)?;
    if metadata.uid() != user {
        return Err(format!(
            "it is owned by uid {}, not by this process's user (uid {user})",
            metadata.uid()
        ));
    }
    Ok(())
}

/// This process's user id, as the owner of a file it creates in `dir` (which also shows that
/// the folder is writable). The standard library has no safe `geteuid`.
fn current_user(dir: &Path) -> Result<u32, String> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let probe = dir.join(format!(
        ".owner-probe{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    let created = create_private(&probe).and_then(|file| file.metadata());
    let _ = std::fs::remove_file(&probe);
    created
        .map(|metadata| metadata.uid())
        .map_err(|e| format!("cannot write in it: {e}"))
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

#[cfg(test)]
mod tests;
