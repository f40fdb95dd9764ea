//! Helpers for tests that run policy plugins: where the built components are, a shared compile
//! cache, and a Sluice whose router is the policy engine.
//!
//! The components come from `cargo xtask plugins` (found through `SLUICE_PLUGINS`, else
//! `target/plugins`). Without them a test is skipped, unless `SLUICE_REQUIRE_ALL=1` (set by
//! `cargo xtask test`) turns that into a failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{Config, PluginsConfig};
use sluice_policy::Policies;
use sluice_proxy::{Proxy, ProxyHandle};

/// The folder with the built plugins, or `None` (after saying why) when the test must skip.
pub fn built_plugins() -> Option<PathBuf> {
    let dir = std::env::var_os("SLUICE_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins"))
        });
    if dir.join("router.wasm").is_file() {
        return Some(dir);
    }
    if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!(
            "no built plugins in {} (run `cargo xtask plugins`)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: no built plugins in {}; run `cargo xtask plugins`",
        dir.display()
    );
    None
}

/// A compile cache shared by every test process, so each component is compiled once per run.
pub fn shared_cache() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/plugin-cache"
    ))
}

/// A `[plugins]` table with the shared cache and nothing loaded.
pub fn plugins_config() -> PluginsConfig {
    PluginsConfig {
        cache_dir: Some(shared_cache()),
        ..PluginsConfig::default()
    }
}

/// Starts the policy engine from `config.plugins` and a Sluice routing and resuming with it.
pub async fn sluice_with_policies(config: Config) -> (ProxyHandle, Arc<Policies>) {
    config.validate().expect("test config is valid");
    let plugins = config.plugins.clone();
    let policies = tokio::task::spawn_blocking(move || Policies::new(&plugins))
        .await
        .expect("load task")
        .expect("policies load");
    let proxy = Proxy::bind_with_policies(Arc::new(config), policies.router(), policies.resumer())
        .await
        .expect("sluice binds")
        .spawn();
    (proxy, policies)
}

/// Loads a plugin file off the async runtime (compiling can take seconds).
pub async fn load_plugin(
    policies: &Arc<Policies>,
    file: PathBuf,
    slot: Option<sluice_config::SlotKind>,
    shadow: bool,
) -> Result<sluice_policy::Loaded, sluice_policy::PolicyError> {
    let policies = Arc::clone(policies);
    crate::bounded(
        Duration::from_secs(300),
        "plugin load",
        tokio::task::spawn_blocking(move || policies.load_file(&file, slot, shadow)),
    )
    .await
    .expect("load task")
}
