//! The compile cache and gate with real (empty) components compiled by the process's engine:
//! files and digests on disk, tampering, eviction by size and recency, folder permissions, and
//! the compile queue seen through [`crate::Policies::load`].

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use sluice_config::{PluginsConfig, SlotKind};

use super::*;
use crate::gate::MAX_QUEUED;
use crate::gate::tests::refused_at_once;
use crate::{Policies, engine};

/// A valid, empty component made distinct by a custom section named `name` (so each `name`
/// is its own cache entry).
fn component(name: &str) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    let section_len = u8::try_from(1 + name.len()).unwrap();
    assert!(section_len < 0x80, "one LEB128 byte");
    bytes.extend_from_slice(&[0, section_len, u8::try_from(name.len()).unwrap()]);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// Compiles (or loads) `name`'s component through `cache`.
fn get(cache: &CompileCache, name: &str) -> CompileSource {
    let bytes = component(name);
    let hash = engine::content_hash(&bytes);
    let (_component, source) = cache
        .component(engine::engine().unwrap(), &bytes, &hash)
        .unwrap();
    source
}

/// The artifact of `name`'s component in `dir`.
fn artifact(dir: &Path, name: &str) -> PathBuf {
    let engine = engine::engine().unwrap();
    let hash = engine::content_hash(&component(name));
    dir.join(format!("{hash}-{}.{ARTIFACT}", engine_fingerprint(engine)))
}

/// The file names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn compiled_code_is_stored_with_its_digest_in_a_private_folder_and_loaded_again() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cache").join("wasm");
    let cache = CompileCache::new(Some(dir.clone()), 512 * 1024 * 1024);
    assert_eq!(cache.dir(), Some(dir.as_path()));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "created private: {mode:o}");

    assert_eq!(get(&cache, "a"), CompileSource::Compiled);
    let path = artifact(&dir, "a");
    let digest = std::fs::read_to_string(digest_path(&path)).unwrap();
    assert_eq!(
        digest,
        blake3::hash(&std::fs::read(&path).unwrap())
            .to_hex()
            .as_str()
    );
    assert_eq!(files(&dir).len(), 2, "{:?}", files(&dir));
    assert_eq!(get(&cache, "a"), CompileSource::Cached);
    // Another process (or a restart) finds the entry too.
    let reopened = CompileCache::new(Some(dir.clone()), 512 * 1024 * 1024);
    assert_eq!(get(&reopened, "a"), CompileSource::Cached);
    assert!(reopened.size() > 0);
}

#[test]
fn a_tampered_or_unverified_artifact_is_deleted_and_recompiled() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_owned();
    let cache = CompileCache::new(Some(dir.clone()), 512 * 1024 * 1024);
    assert_eq!(get(&cache, "t"), CompileSource::Compiled);
    let path = artifact(&dir, "t");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        get(&cache, "t"),
        CompileSource::Compiled,
        "a changed artifact is never deserialized"
    );
    assert_ne!(std::fs::read(&path).unwrap(), bytes, "written afresh");
    assert_eq!(get(&cache, "t"), CompileSource::Cached);

    // A file of the right name without a digest (not written by this Sluice): not trusted.
    std::fs::remove_file(digest_path(&path)).unwrap();
    assert_eq!(get(&cache, "t"), CompileSource::Compiled);
    assert!(digest_path(&path).is_file());
    assert_eq!(get(&cache, "t"), CompileSource::Cached);
}

#[test]
fn entries_beyond_the_cap_are_evicted_least_recently_used_first_and_their_files_deleted() {
    let temp = tempfile::tempdir().unwrap();
    let sizing = temp.path().join("sizing");
    let unbounded = CompileCache::new(Some(sizing.clone()), u64::MAX);
    get(&unbounded, "a");
    let entry = unbounded.size();
    assert!(entry > 1000, "an entry is {entry} bytes");

    // Room for two entries, not three.
    let dir = temp.path().join("capped");
    let cap = entry * 5 / 2;
    let cache = CompileCache::new(Some(dir.clone()), cap);
    assert_eq!(get(&cache, "a"), CompileSource::Compiled);
    assert_eq!(get(&cache, "b"), CompileSource::Compiled);
    // `a` used again: `b` is now the least recently used.
    assert_eq!(get(&cache, "a"), CompileSource::Cached);
    assert_eq!(get(&cache, "c"), CompileSource::Compiled);
    assert!(cache.size() <= cap, "{} > {cap}", cache.size());
    assert!(!artifact(&dir, "b").exists(), "evicted: {:?}", files(&dir));
    assert!(!digest_path(&artifact(&dir, "b")).exists());
    assert!(artifact(&dir, "a").is_file() && artifact(&dir, "c").is_file());
    assert_eq!(files(&dir).len(), 4, "{:?}", files(&dir));
    assert_eq!(get(&cache, "b"), CompileSource::Compiled, "compiled again");

    // Opening the folder with a smaller cap trims it at once.
    let smaller = CompileCache::new(Some(dir.clone()), entry * 3 / 2);
    assert!(smaller.size() <= entry * 3 / 2);
    assert_eq!(files(&dir).len(), 2, "{:?}", files(&dir));
}

#[test]
fn a_folder_others_may_write_to_is_not_used() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cache = CompileCache::new(Some(dir.clone()), 512 * 1024 * 1024);
    assert_eq!(cache.dir(), None, "refused");
    assert_eq!(get(&cache, "w"), CompileSource::Compiled);
    assert_eq!(get(&cache, "w"), CompileSource::Compiled, "nothing cached");
    assert!(files(&dir).is_empty(), "nothing written: {:?}", files(&dir));

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(
        CompileCache::new(Some(dir.clone()), 1 << 20).dir(),
        None,
        "group-writable is refused too"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        CompileCache::new(Some(dir.clone()), 1 << 20).dir(),
        Some(dir.as_path()),
        "readable by others but writable only by its owner: used"
    );
}

#[test]
fn loads_beyond_the_compile_queue_are_refused_at_once() {
    let config = PluginsConfig {
        cache_dir: Some(PathBuf::new()),
        ..PluginsConfig::default()
    };
    let policies = Policies::new(&config).unwrap();
    let held = policies.cache.gate().enter().unwrap();
    let queued: Vec<_> = (0..MAX_QUEUED)
        .map(|i| {
            let policies = Arc::clone(&policies);
            std::thread::spawn(move || {
                policies.load(
                    &component(&format!("q{i}")),
                    "queued",
                    Some(SlotKind::Router),
                    false,
                )
            })
        })
        .collect();
    policies.cache.gate().until_waiting(MAX_QUEUED);
    refused_at_once(|| policies.load(&component("extra"), "extra", Some(SlotKind::Router), false));
    drop(held);
    for load in queued {
        // Compiled in turn: an empty component then fails for what it is, not for the queue.
        let error = load.join().unwrap().unwrap_err();
        assert!(matches!(error, PolicyError::WrongWorld(_)), "{error:?}");
    }
    let refusals = policies.events().since(0);
    assert!(
        refusals
            .iter()
            .any(|e| e.plugin == "extra" && e.message.contains("too many plugin compiles")),
        "the refusal is a visible event: {refusals:?}"
    );
}
