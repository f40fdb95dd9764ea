//! Sluice's policy engine: routing, scaling, anomaly and resume decisions made by WebAssembly
//! components (the `sluice:policy` WIT worlds in `wit/`), hot-loaded while streams flow.
//!
//! [`Policies`] owns four [`Slot`]s (`router`, `scaler`, `anomaly`, `resumer`). Each has an
//! active plugin, an optional shadow, and a built-in native policy ([`builtin`]) that answers
//! whenever the plugin cannot: none loaded, disabled by its breaker, or failing this call (trap,
//! deadline, memory cap, invalid answer). Plugins run on one shared wasmtime engine
//! ([`engine`]) with a per-call epoch deadline and a per-instance memory cap; components are
//! compiled one at a time and their compiled code is cached on disk ([`cache`]).
//!
//! This crate must not reach into the data plane: it sees plain records and answers through
//! the [`sluice_contract::route::Router`] and [`sluice_contract::resume::Resumer`] traits and the
//! `plan`/`detect` calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sluice_config::{PluginsConfig, SlotKind};
use wasmtime::component::Linker;

pub mod bindings;
pub mod builtin;
pub mod cache;
pub mod decisions;
pub mod engine;
pub mod events;
mod gate;
pub mod history;
mod host;
pub mod plugin;
mod resumer;
mod router;
pub mod scorer;
pub mod selftest;
pub mod slot;
pub mod types;
mod watch;
mod window;
pub mod world;

pub use decisions::RecordedDecision;
pub use events::{EventKind, EventLog, PolicyEvent};
pub use history::{LoadHistory, NoHistory};
pub use plugin::{CallFailure, Plugin, PluginInfo};
pub use resumer::PolicyResumer;
pub use router::PolicyRouter;
pub use scorer::{NeutralScorer, Scorer, ShadowJudgement};
pub use slot::Slot;
pub use watch::Watcher;

use crate::cache::{CompileCache, CompileSource};
use crate::history::SharedHistory;
use crate::host::{HostState, LogBudget, PluginEnv};
use crate::plugin::Limits;
use crate::slot::{Answer, shadow_compare};

/// Why a plugin could not be loaded or an action could not be done.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The plugin file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component does not fit the world (missing or mistyped export, unknown import).
    #[error("does not fit the policy contract: {0}")]
    WrongWorld(String),
    /// It could not be instantiated.
    #[error("cannot start: {0}")]
    Start(String),
    /// It gave a wrong answer, trapped or timed out on the sample inputs.
    #[error("failed its self-test: {0}")]
    SelfTest(String),
    /// Not compiled now: too many compiles are queued, or the wait for the one running ran out
    /// (see [`cache::CompileCache`]). Nothing is wrong with the component; retry later.
    #[error("{0}")]
    Busy(String),
    /// An action that does not apply now (e.g. promote without a shadow).
    #[error("{0}")]
    Action(String),
}

/// A plugin that was loaded into a slot: the report the CLI and admin API give back.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The slot it went into.
    pub slot: SlotKind,
    /// Whether it is the slot's shadow (otherwise it is active).
    pub shadow: bool,
    /// What was loaded.
    pub info: PluginInfo,
    /// Self-test samples passed (0 when the self-test is off).
    pub self_tested: usize,
    /// Time from the bytes to the swap.
    pub took: std::time::Duration,
}

/// The four policy slots and everything needed to load plugins into them.
pub struct Policies {
    engine: &'static wasmtime::Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    scorer: Arc<dyn Scorer>,
    history: SharedHistory,
    dir: Option<PathBuf>,
    slots: [Arc<Slot>; SlotKind::ALL.len()],
    events: Arc<EventLog>,
    started: Instant,
    router: Arc<PolicyRouter>,
    resumer: Arc<PolicyResumer>,
}

impl Policies {
    /// Creates the slots and loads the configured plugins (`[plugins.<slot>] file/shadow`, else
    /// `<dir>/<slot>.wasm` and `<dir>/<slot>.shadow.wasm`). A configured file that cannot be
    /// loaded is an error; a default file that cannot be loaded is reported and the built-in
    /// policy stays.
    pub fn new(config: &PluginsConfig) -> Result<Arc<Self>, PolicyError> {
        Self::with_scorer(config, Arc::new(NeutralScorer))
    }

    /// Like [`Policies::new`], with the scorer router plugins reach through the `scorer` import.
    pub fn with_scorer(
        config: &PluginsConfig,
        scorer: Arc<dyn Scorer>,
    ) -> Result<Arc<Self>, PolicyError> {
        let engine = engine::engine()?;
        let linker = host::linker(engine).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        let cache_dir = match &config.cache_dir {
            Some(dir) => Some(dir.clone()),
            None => CompileCache::default_dir(),
        };
        let events = Arc::new(EventLog::default());
        let slots = SlotKind::ALL.map(|kind| {
            Arc::new(Slot::new(
                kind,
                config.slot(kind).clone(),
                Arc::clone(&events),
            ))
        });
        let slot_of = |kind: SlotKind| {
            slots
                .iter()
                .find(|slot| slot.kind() == kind)
                .map(Arc::clone)
                .ok_or_else(|| PolicyError::Engine(format!("no {kind} slot")))
        };
        let router = Arc::new(PolicyRouter::new(
            slot_of(SlotKind::Router)?,
            Arc::clone(&scorer),
        ));
        let resumer = Arc::new(PolicyResumer::new(slot_of(SlotKind::Resumer)?));
        let policies = Arc::new(Self {
            engine,
            linker,
            cache: CompileCache::new(cache_dir, config.cache_max_bytes),
            scorer,
            history: history::no_history(),
            dir: config.dir.clone(),
            slots,
            events,
            started: Instant::now(),
            router,
            resumer,
        });
        for kind in SlotKind::ALL {
            let table = config.slot(kind);
            for (shadow, configured, default_name) in [
                (false, &table.file, format!("{kind}.wasm")),
                (true, &table.shadow, format!("{kind}.shadow.wasm")),
            ] {
                match configured {
                    Some(file) => {
                        let path = policies.resolve(file);
                        policies.load_file(&path, Some(kind), shadow)?;
                    }
                    None => {
                        let Some(dir) = &policies.dir else { continue };
                        let path = dir.join(default_name);
                        if path.is_file() {
                            // Refusals are already recorded as events with their reason.
                            let _ = policies.load_file(&path, Some(kind), shadow);
                        }
                    }
                }
            }
        }
        Ok(policies)
    }

    fn resolve(&self, file: &Path) -> PathBuf {
        match &self.dir {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_owned(),
        }
    }

    /// The slot of `kind`.
    pub fn slot(&self, kind: SlotKind) -> &Arc<Slot> {
        &self.slots[SlotKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }

    /// The model router plugins score with (the `scorer` import).
    pub fn scorer(&self) -> &Arc<dyn Scorer> {
        &self.scorer
    }

    /// The data plane's router (router slot with its built-in fallback and shadow).
    pub fn router(&self) -> Arc<PolicyRouter> {
        Arc::clone(&self.router)
    }

    /// The data plane's resumer (resumer slot; without a usable plugin the requests of a broken
    /// stream are replayed unchanged), as `sluice_proxy::Proxy::bind_with_policies` takes it.
    pub fn resumer(&self) -> Arc<dyn sluice_contract::resume::Resumer> {
        Arc::clone(&self.resumer) as Arc<dyn sluice_contract::resume::Resumer>
    }

    /// Sets where scaler plugins' `history::group-streams` import gets the groups' recent
    /// load (until then: [`NoHistory`], empty answers). Takes effect at once for every plugin,
    /// loaded before or after: their next `group-streams` call asks `history`.
    pub fn set_history(&self, history: Arc<dyn LoadHistory>) {
        *self.history.write() = history;
    }

    /// The watched plugins folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Reads and loads a file; the name is its file stem.
    pub fn load_file(
        &self,
        path: &Path,
        slot: Option<SlotKind>,
        shadow: bool,
    ) -> Result<Loaded, PolicyError> {
        let name = plugin_name(path);
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        });
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                self.refused(slot, &name, &error);
                return Err(error);
            }
        };
        self.load(&bytes, &name, slot, shadow)
    }

    /// Loads a component: compile (or cache hit), type-check against its world (or `slot`'s),
    /// instantiate, self-test, then swap it in as the active plugin or the shadow. On any
    /// failure the slot keeps what it had and the reason is returned and recorded.
    pub fn load(
        &self,
        bytes: &[u8],
        name: &str,
        slot: Option<SlotKind>,
        shadow: bool,
    ) -> Result<Loaded, PolicyError> {
        self.load_hashed(bytes, engine::content_hash(bytes), name, slot, shadow)
    }

    /// [`Policies::load`] with the bytes' [`engine::content_hash`] already computed (hashing an
    /// 18 MB interpreter-based component takes milliseconds: do it once per load).
    fn load_hashed(
        &self,
        bytes: &[u8],
        hash: String,
        name: &str,
        slot: Option<SlotKind>,
        shadow: bool,
    ) -> Result<Loaded, PolicyError> {
        let started = Instant::now();
        let mut world = None;
        let result = self.prepare(bytes, hash, name, slot, false, &mut world);
        let (plugin, self_tested) = match result {
            Ok(prepared) => prepared,
            Err(error) => {
                self.refused(slot.or(world), name, &error);
                return Err(error);
            }
        };
        let kind = plugin.info().world;
        let target = self.slot(kind);
        let mut plugin = plugin;
        plugin.set_version(target.next_version());
        let plugin = Arc::new(plugin);
        let info = plugin.info().clone();
        if shadow {
            target.set_shadow(plugin);
        } else {
            let message = format!(
                "{} ({} bytes, {}, self-test {} samples)",
                &info.hash[..12],
                info.size,
                if info.cached {
                    "cached compile"
                } else {
                    "compiled"
                },
                self_tested
            );
            target.activate(plugin, EventKind::Activated, message);
        }
        Ok(Loaded {
            slot: kind,
            shadow,
            info,
            self_tested,
            took: started.elapsed(),
        })
    }

    /// Compiles, binds and self-tests (always, whatever the slot's `self_test` says) without
    /// touching any slot (`sluice plugin check`).
    pub fn check(&self, bytes: &[u8], name: &str) -> Result<(PluginInfo, usize), PolicyError> {
        let hash = engine::content_hash(bytes);
        let (plugin, samples) = self.prepare(bytes, hash, name, None, true, &mut None)?;
        Ok((plugin.info().clone(), samples))
    }

    /// Compiles, binds and (unless the slot turns it off and `self_test` is false) self-tests.
    fn prepare(
        &self,
        bytes: &[u8],
        hash: String,
        name: &str,
        slot: Option<SlotKind>,
        self_test: bool,
        world: &mut Option<SlotKind>,
    ) -> Result<(Plugin, usize), PolicyError> {
        let compile_started = Instant::now();
        let (component, source) = self.cache.component(self.engine, bytes, &hash)?;
        let compile_time = compile_started.elapsed();
        let shape = world::binding::shape(self.engine, &component);
        *world = shape.world;
        // Settings come from the slot the plugin is meant for (or the world it targets).
        let kind = slot.or(shape.world).unwrap_or(SlotKind::Router);
        let settings = self.slot(kind).settings().clone();
        let env = Arc::new(PluginEnv {
            label: name.to_owned(),
            config: settings.config.clone(),
            scorer: Arc::clone(&self.scorer),
            history: Arc::clone(&self.history),
            log_budget: parking_lot::Mutex::new(LogBudget::new()),
            started: self.started,
        });
        let info = PluginInfo {
            name: name.to_owned(),
            version: 0,
            world: kind,
            hash,
            size: bytes.len(),
            imports: Vec::new(),
            exports: Vec::new(),
            uses_wasi: false,
            cached: source == CompileSource::Cached,
            compile_time,
            loaded_at: SystemTime::now(),
        };
        let limits = Limits {
            deadline: settings.deadline_for(kind),
            memory_bytes: settings.memory_limit(),
        };
        let plugin = world::binding::bind_plugin(
            self.engine,
            &self.linker,
            &component,
            slot,
            info,
            env,
            limits,
        )?;
        let samples = if self_test || settings.runs_self_test() {
            selftest::run(&plugin).map_err(PolicyError::SelfTest)?
        } else {
            0
        };
        Ok((plugin, samples))
    }

    /// Records a refusal under the slot it was meant for: the requested one, else the world the
    /// component targets, else (garbage, no known export) the router slot.
    fn refused(&self, slot: Option<SlotKind>, name: &str, error: &PolicyError) {
        self.events.record(
            slot.unwrap_or(SlotKind::Router),
            EventKind::LoadFailed,
            name,
            format!("refused, the previous plugin stays: {error}"),
        );
    }

    /// Promotes `slot`'s shadow to active.
    pub fn promote(&self, slot: SlotKind) -> Result<PluginInfo, PolicyError> {
        self.slot(slot)
            .promote()
            .map(|p| p.info().clone())
            .map_err(PolicyError::Action)
    }

    /// Makes `slot`'s previous version active again.
    pub fn rollback(&self, slot: SlotKind) -> Result<PluginInfo, PolicyError> {
        self.slot(slot)
            .rollback()
            .map(|p| p.info().clone())
            .map_err(PolicyError::Action)
    }

    /// Makes the earlier version of `slot` with content hash `hash` active again, or its shadow.
    pub fn restore(
        &self,
        slot: SlotKind,
        hash: &str,
        shadow: bool,
    ) -> Result<PluginInfo, PolicyError> {
        self.slot(slot)
            .restore(hash, shadow)
            .map(|p| p.info().clone())
            .map_err(PolicyError::Action)
    }

    /// Re-enables `slot`'s plugin after its breaker disabled it.
    pub fn enable(&self, slot: SlotKind) -> Result<PluginInfo, PolicyError> {
        self.slot(slot)
            .enable()
            .map(|p| p.info().clone())
            .map_err(PolicyError::Action)
    }

    /// Returns `slot` to its built-in policy.
    pub fn clear(&self, slot: SlotKind) {
        self.slot(slot).clear();
    }

    /// Plans group sizes with the scaler slot (built-in thresholds on any failure). A shadow
    /// scaler gets the same groups and is compared on its actions (class and delta).
    pub fn plan(&self, groups: &[types::GroupMetrics]) -> types::ScalePlan {
        let slot = self.slot(SlotKind::Scaler);
        let plan = match slot.call(|p| p.plan(groups), types::check_plan) {
            Answer::Answered(plan, _) => plan,
            Answer::NoPlugin => builtin::Thresholds::default().plan(groups),
            Answer::Failed(failure, plugin) => {
                let mut plan = builtin::Thresholds::default().plan(groups);
                plan.reasoning = format!(
                    "{} [fallback: {} {}]",
                    plan.reasoning,
                    plugin.label(),
                    failure.kind()
                );
                plan
            }
        };
        if let Some(shadow) = slot.shadow() {
            let actions = |p: &types::ScalePlan| {
                let mut actions: Vec<_> =
                    p.actions.iter().map(|a| (a.class as u8, a.delta)).collect();
                actions.sort_unstable();
                actions
            };
            shadow_compare(
                &shadow,
                |s| s.plan(groups),
                types::check_plan,
                |other| actions(other) == actions(&plan),
            );
        }
        plan
    }

    /// Finds anomalies with the anomaly slot (built-in z-score on any failure). A shadow
    /// detector is compared on which metrics it flags, at which severity.
    pub fn detect(&self, windows: &[types::MetricWindow]) -> Vec<types::Insight> {
        let slot = self.slot(SlotKind::Anomaly);
        let insights = match slot.call(|p| p.detect(windows), |i| types::check_insights(i)) {
            Answer::Answered(insights, _) => insights,
            Answer::NoPlugin | Answer::Failed(..) => builtin::ZScore::default().detect(windows),
        };
        if let Some(shadow) = slot.shadow() {
            let flagged = |found: &[types::Insight]| {
                let mut flagged: Vec<_> = found
                    .iter()
                    .map(|i| (i.metric.clone(), i.severity as u8))
                    .collect();
                flagged.sort_unstable();
                flagged
            };
            shadow_compare(
                &shadow,
                |s| s.detect(windows),
                |i| types::check_insights(i),
                |other| flagged(other) == flagged(&insights),
            );
        }
        insights
    }
}

/// A plugin's name from its path: the file name without `.wasm` (and `.shadow`).
pub fn plugin_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let stem = file.strip_suffix(".wasm").unwrap_or(&file);
    stem.strip_suffix(".shadow").unwrap_or(stem).to_owned()
}

impl Policies {
    /// Loads a file the watcher saw written, unless the same bytes (by hash) are already some
    /// slot's active plugin (or shadow): editors and copies often write a file twice.
    fn load_if_changed(
        &self,
        bytes: &[u8],
        name: &str,
        shadow: bool,
    ) -> Option<Result<Loaded, PolicyError>> {
        let hash = engine::content_hash(bytes);
        let loaded = self.slots.iter().any(|slot| {
            let current = if shadow { slot.shadow() } else { slot.active() };
            current.is_some_and(|p| p.info().hash == hash)
        });
        (!loaded).then(|| self.load_hashed(bytes, hash, name, None, shadow))
    }
}
