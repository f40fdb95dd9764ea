//! Watches the plugins folder and loads `.wasm` files as they are written.
//!
//! A file counts as written when it is closed after writing or renamed into the folder, so a
//! half-written file is never loaded (writers that want atomicity write a dot-file and rename
//! it; dot-files are ignored). The world a component targets picks its slot; `*.shadow.wasm`
//! becomes that slot's shadow. A refused file leaves the slot as it was.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Weak};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::{Policies, PolicyError};

/// Keeps the folder watched; dropping it stops watching.
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
}

impl Watcher {
    /// Starts watching `policies`' folder. Loads run on a thread of their own, so a slow
    /// compile never blocks anything else.
    pub fn start(policies: &Arc<Policies>) -> Result<Self, PolicyError> {
        let dir = policies
            .dir()
            .ok_or_else(|| PolicyError::Action("no plugins folder is configured".to_owned()))?
            .to_owned();
        let (sender, receiver) = channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !is_written(&event.kind) {
                    return;
                }
                for path in event.paths {
                    if is_plugin_file(&path) {
                        let _ = sender.send(path);
                    }
                }
            })
            .map_err(|e| PolicyError::Action(format!("cannot watch {}: {e}", dir.display())))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| PolicyError::Action(format!("cannot watch {}: {e}", dir.display())))?;
        let weak = Arc::downgrade(policies);
        std::thread::Builder::new()
            .name("sluice-plugin-watch".to_owned())
            .spawn(move || reload_loop(&weak, &receiver))
            .map_err(|e| PolicyError::Action(format!("cannot start the plugin watcher: {e}")))?;
        tracing::info!(dir = %dir.display(), "watching for policy plugins");
        Ok(Self { _watcher: watcher })
    }
}

fn is_written(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To))
    )
}

fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".wasm")
}

fn reload_loop(policies: &Weak<Policies>, paths: &Receiver<PathBuf>) {
    while let Ok(first) = paths.recv() {
        // Several events for one write arrive together: load each path once, in order.
        let mut batch = vec![first];
        while let Ok(more) = paths.try_recv() {
            if !batch.contains(&more) {
                batch.push(more);
            }
        }
        let Some(policies) = policies.upgrade() else {
            return;
        };
        for path in batch {
            reload(&policies, &path);
        }
    }
}

fn reload(policies: &Policies, path: &Path) {
    let shadow = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".shadow.wasm"));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // Deleted or renamed away before we got to it: nothing to load.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read plugin file");
            return;
        }
    };
    let name = crate::plugin_name(path);
    let Some(result) = policies.load_if_changed(&bytes, &name, shadow) else {
        return;
    };
    match result {
        Ok(loaded) => tracing::info!(
            file = %path.display(),
            slot = %loaded.slot,
            version = loaded.info.version,
            took_ms = loaded.took.as_secs_f64() * 1000.0,
            "plugin reloaded from the folder"
        ),
        Err(error) => tracing::warn!(file = %path.display(), %error, "plugin refused"),
    }
}
