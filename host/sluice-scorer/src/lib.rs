//! The `scorer` import that router plugins call, backed by ONNX Runtime through `ort`.
//!
//! It owns: loading the runtime library (`[scorer] library`, once per process), a small pool of
//! sessions per model with one intra-op thread each, checking a model's input and output
//! before it is used, swapping in a changed model file, and the status the admin API shows.
//!
//! It must not crash or stall the data path: a missing library, a missing or broken model and
//! a model of the wrong shape are errors kept in [`ScorerStatus`] (the previous model, if any,
//! keeps answering); a call that cannot get a session or finish within its deadline is an
//! error the router decides without. That deadline is `[scorer] deadline` or the time left in
//! the plugin call that asks, whichever ends first: a run still going then is stopped (see
//! [`watchdog`]). While no model can answer, [`OnnxScorer::unavailable`] says why, and the
//! router uses its built-in policy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{TensorElementType, TensorRef, ValueType};
use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::ScorerConfig;
use sluice_contract::route::ScoredBatch;
use sluice_policy::{Scorer, ShadowJudgement};

mod watchdog;

/// Why a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScorerError {
    /// No ONNX Runtime library to load the model with.
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
    /// The model file could not be read or parsed.
    #[error("model {path}: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model's inputs or outputs are not what a scorer needs.
    #[error("model {path} has the wrong shape: {message}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What the admin API shows of the scorer.
#[derive(Debug, Clone, Serialize)]
pub struct ScorerStatus {
    /// The configured model file.
    pub model_path: Option<PathBuf>,
    /// The model answering now, if any.
    pub model: Option<ModelInfo>,
    /// Why the last load or reload failed (cleared by a successful one).
    pub last_error: Option<String>,
    /// Scoring calls.
    pub calls: u64,
    /// Calls that failed (no model, wrong column count, runtime error).
    pub failures: u64,
    /// Calls that found no free session or ran past the deadline.
    pub timeouts: u64,
    /// Models loaded, the first one included.
    pub loads: u64,
    /// The shadow model, when `[scorer] shadow_model` is set.
    pub shadow: Option<ShadowStatus>,
}

/// A model in shadow: scored beside the active one on recorded decisions, deciding nothing.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ShadowStatus {
    /// The configured file.
    pub model_path: PathBuf,
    /// The shadow model loaded now, if any.
    pub model: Option<ModelInfo>,
    /// Why its last load failed.
    pub last_error: Option<String>,
    /// Recorded decisions both models scored.
    pub compared: u64,
    /// Of those, how many had the same best row in both.
    pub agreed: u64,
    /// `agreed / compared` (none before the first comparison).
    pub agreement: Option<f64>,
    /// Mean absolute error of the active model's prediction for the chosen row against the
    /// observed outcome quality.
    pub active_error: Option<f64>,
    /// The same for the shadow model; lower than `active_error` means it predicts better.
    pub shadow_error: Option<f64>,
}

/// Running sums behind [`ShadowStatus`].
#[derive(Debug, Default)]
struct ShadowTally {
    compared: u64,
    agreed: u64,
    active_error: f64,
    shadow_error: f64,
}

/// What [`OnnxScorer::promote`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    /// The model now active.
    pub model: ModelInfo,
    /// Where the replaced model file was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// One loaded model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    /// The file's name without its extension.
    pub name: String,
    /// The first 12 hex digits of the file's BLAKE3 hash.
    pub version: String,
    /// Features per row (the input's second dimension).
    pub features: usize,
    /// The input's name.
    pub input: String,
    /// The output's name.
    pub output: String,
    /// When it was loaded, Unix ms.
    pub loaded_at_ms: u64,
    /// How long loading and checking took, ms.
    pub load_ms: f64,
}

/// A model and its sessions.
struct Model {
    info: ModelInfo,
    label: String,
    sessions: Vec<Mutex<Runner>>,
    next: AtomicUsize,
}

/// One session and the run options that let the [`watchdog`] stop its run.
struct Runner {
    session: Session,
    options: Arc<RunOptions>,
}

/// The runtime library, loaded once per process (ONNX Runtime allows one environment).
static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn runtime(library: Option<&Path>) -> Result<&'static ort::environment::Environment, ScorerError> {
    let loaded = RUNTIME.get_or_init(|| {
        let path = library
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
        let Some(path) = path else {
            return Err(
                "no library configured: set [scorer] library or ORT_DYLIB_PATH to libonnxruntime.so"
                    .to_owned(),
            );
        };
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        builder
            .with_name("sluice")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    });
    loaded.as_ref().map_err(|e| ScorerError::Runtime(e.clone()))
}

/// The ONNX Runtime scorer.
pub struct OnnxScorer {
    config: ScorerConfig,
    current: ArcSwapOption<Model>,
    last_error: Mutex<Option<String>>,
    /// The model file's modification time at the last load attempt (`None` inside: missing).
    attempted: Mutex<Option<Option<SystemTime>>>,
    shadow: ArcSwapOption<Model>,
    shadow_error: Mutex<Option<String>>,
    shadow_attempted: Mutex<Option<Option<SystemTime>>>,
    shadow_tally: Mutex<ShadowTally>,
    calls: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    loads: AtomicU64,
}

impl OnnxScorer {
    /// Loads the configured model. Never fails: a load error is logged and kept in the status,
    /// and the scorer stays unavailable until a reload succeeds.
    pub fn open(config: &ScorerConfig) -> Arc<Self> {
        let scorer = Arc::new(Self {
            config: config.clone(),
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            attempted: Mutex::new(None),
            shadow: ArcSwapOption::empty(),
            shadow_error: Mutex::new(None),
            shadow_attempted: Mutex::new(None),
            shadow_tally: Mutex::new(ShadowTally::default()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        });
        if let Err(error) = scorer.reload() {
            tracing::error!(%error, "scorer model not loaded; the router uses its built-in policy");
        }
        if scorer.config.shadow_model.is_some()
            && let Err(error) = scorer.reload_shadow()
        {
            tracing::error!(%error, "shadow scorer model not loaded");
        }
        scorer
    }

    /// Loads the shadow model file again (see [`OnnxScorer::reload`]); its comparison counts
    /// start over.
    pub fn reload_shadow(&self) -> Result<ModelInfo, ScorerError> {
        let Some(path) = self.config.shadow_model.clone() else {
            return Err(ScorerError::Model {
                path: PathBuf::new(),
                message: "no shadow model configured ([scorer] shadow_model)".to_owned(),
            });
        };
        *self.shadow_attempted.lock() = Some(modified_time(&path));
        match self.load_from(&path, 1) {
            Ok(model) => {
                let info = model.info.clone();
                tracing::info!(model = %model.label, "shadow scorer model loaded");
                self.shadow.store(Some(model));
                *self.shadow_error.lock() = None;
                *self.shadow_tally.lock() = ShadowTally::default();
                Ok(info)
            }
            Err(error) => {
                *self.shadow_error.lock() = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Makes the shadow model the active one: its file replaces the model file (the replaced
    /// one is kept beside it as `<model>.previous`), and it answers from now on. The shadow
    /// slot is empty until the shadow file changes again.
    pub fn promote(&self) -> Result<Promotion, ScorerError> {
        let (Some(shadow), Some(model_path), Some(shadow_path)) = (
            self.shadow.load_full(),
            self.config.model.clone(),
            self.config.shadow_model.clone(),
        ) else {
            return Err(ScorerError::Model {
                path: self.config.shadow_model.clone().unwrap_or_default(),
                message: "no shadow model loaded to promote".to_owned(),
            });
        };
        let io = |message: String| ScorerError::Model {
            path: model_path.clone(),
            message,
        };
        let bytes =
            std::fs::read(&shadow_path).map_err(|e| io(format!("cannot read the shadow: {e}")))?;
        let previous = model_path.with_extension("onnx.previous");
        let kept = match std::fs::copy(&model_path, &previous) {
            Ok(_) => Some(previous),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io(format!("cannot keep the replaced model: {error}"))),
        };
        // Written beside the target and renamed over it, so a reader never sees half a file.
        let staging = model_path.with_extension("onnx.promoting");
        std::fs::write(&staging, &bytes).map_err(|e| io(format!("cannot write: {e}")))?;
        std::fs::rename(&staging, &model_path).map_err(|e| io(format!("cannot replace: {e}")))?;
        *self.attempted.lock() = Some(modified_time(&model_path));
        let info = shadow.info.clone();
        self.current.store(Some(shadow));
        self.shadow.store(None);
        *self.shadow_tally.lock() = ShadowTally::default();
        *self.last_error.lock() = None;
        self.loads.fetch_add(1, Relaxed);
        tracing::info!(model = %info.name, version = %info.version, "shadow scorer model promoted");
        Ok(Promotion {
            model: info,
            previous: kept,
        })
    }

    fn shadow_status(&self) -> Option<ShadowStatus> {
        let path = self.config.shadow_model.clone()?;
        let tally = self.shadow_tally.lock();
        let mean = |sum: f64| (tally.compared > 0).then(|| sum / tally.compared as f64);
        Some(ShadowStatus {
            model_path: path,
            model: self.shadow.load().as_ref().map(|m| m.info.clone()),
            last_error: self.shadow_error.lock().clone(),
            compared: tally.compared,
            agreed: tally.agreed,
            agreement: mean(tally.agreed as f64),
            active_error: mean(tally.active_error),
            shadow_error: mean(tally.shadow_error),
        })
    }

    /// Loads the model file again and swaps it in once its shape checks out. On error the
    /// previous model (if any) keeps answering and the error is kept in the status.
    pub fn reload(&self) -> Result<ModelInfo, ScorerError> {
        let result = self.load();
        match &result {
            Ok(model) => {
                let info = model.info.clone();
                self.current.store(Some(Arc::clone(model)));
                *self.last_error.lock() = None;
                self.loads.fetch_add(1, Relaxed);
                tracing::info!(model = %model.label, features = info.features, "scorer model loaded");
                Ok(info)
            }
            Err(error) => {
                *self.last_error.lock() = Some(error.to_string());
                Err(error.clone())
            }
        }
    }

    fn load(&self) -> Result<Arc<Model>, ScorerError> {
        let path = self
            .config
            .model
            .clone()
            .ok_or_else(|| ScorerError::Model {
                path: PathBuf::new(),
                message: "no model configured ([scorer] model)".to_owned(),
            })?;
        *self.attempted.lock() = Some(modified_time(&path));
        self.load_from(&path, self.config.sessions)
    }

    /// Loads and checks the model at `path` with `count` sessions.
    fn load_from(&self, path: &Path, count: usize) -> Result<Arc<Model>, ScorerError> {
        let path = path.to_path_buf();
        let started = Instant::now();
        let model_error = |message: String| ScorerError::Model {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| model_error(format!("cannot read: {e}")))?;
        let environment = runtime(self.config.library.as_deref())?;
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let session = new_session(environment, &bytes)
                .map_err(|e| model_error(format!("not a usable ONNX model: {e}")))?;
            let options = RunOptions::new()
                .map_err(|e| model_error(format!("cannot create run options: {e}")))?;
            sessions.push(Runner {
                session,
                options: Arc::new(options),
            });
        }
        let first = &sessions
            .first()
            .ok_or_else(|| model_error("no session".to_owned()))?
            .session;
        let (input, output, features) =
            check_shape(first).map_err(|message| ScorerError::Shape {
                path: path.clone(),
                message,
            })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned());
        let hash = blake3::hash(&bytes).to_hex();
        let version = hash.as_str().get(..12).unwrap_or_default().to_owned();
        let info = ModelInfo {
            name: name.clone(),
            version: version.clone(),
            features,
            input,
            output,
            loaded_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            load_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(Arc::new(Model {
            label: format!("{name}@{version}"),
            info,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        }))
    }

    /// Reloads when the model file's modification time changed since the last attempt.
    pub fn reload_if_changed(&self) -> Option<Result<ModelInfo, ScorerError>> {
        let path = self.config.model.as_ref()?;
        if *self.attempted.lock() == Some(modified_time(path)) {
            return None;
        }
        Some(self.reload())
    }

    /// Reloads the shadow when its file's modification time changed since the last attempt.
    pub fn reload_shadow_if_changed(&self) -> Option<Result<ModelInfo, ScorerError>> {
        let path = self.config.shadow_model.as_ref()?;
        if *self.shadow_attempted.lock() == Some(modified_time(path)) {
            return None;
        }
        Some(self.reload_shadow())
    }

    /// Checks the model file every `reload_interval` until the returned handle is dropped or
    /// aborted, swapping in a changed model once it loads and checks out.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let scorer = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(scorer.config.reload_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let this = Arc::clone(&scorer);
                let reloaded = tokio::task::spawn_blocking(move || {
                    (this.reload_if_changed(), this.reload_shadow_if_changed())
                })
                .await;
                match reloaded {
                    Ok((active, shadow)) => {
                        if let Some(Err(error)) = active {
                            tracing::error!(%error, "scorer model not reloaded; the previous one (if any) still answers");
                        }
                        if let Some(Err(error)) = shadow {
                            tracing::error!(%error, "shadow scorer model not reloaded");
                        }
                    }
                    Err(error) => tracing::error!(%error, "scorer reload task failed"),
                }
            }
        })
    }

    /// What the admin API shows.
    pub fn status(&self) -> ScorerStatus {
        ScorerStatus {
            model_path: self.config.model.clone(),
            model: self.current.load().as_ref().map(|m| m.info.clone()),
            last_error: self.last_error.lock().clone(),
            calls: self.calls.load(Relaxed),
            failures: self.failures.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            loads: self.loads.load(Relaxed),
            shadow: self.shadow_status(),
        }
    }

    fn fail(&self, message: String) -> Result<Vec<f32>, String> {
        self.failures.fetch_add(1, Relaxed);
        Err(message)
    }
}

/// The index of the highest score (the first of equals).
fn best_row(scores: &[f32]) -> Option<usize> {
    scores
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &s)| match best {
            Some((_, b)) if b >= s || s.is_nan() => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i)
}

/// Why a model run gave no scores.
enum RunError {
    /// No session freed up within the deadline.
    Busy,
    /// The run was stopped at the deadline.
    Stopped,
    /// Anything else, in words.
    Failed(String),
}

impl Model {
    /// Scores `values` (rows of `info.features`, already checked) on a free session, trying
    /// each once from a rotating start, then waiting for one within `deadline`; a run still
    /// going at the deadline is stopped.
    fn run(&self, values: &[f32], deadline: Duration) -> Result<Vec<f32>, RunError> {
        let started = Instant::now();
        let until = started.checked_add(deadline);
        let features = self.info.features;
        let rows = values.len() / features;
        let count = self.sessions.len();
        let start = self.next.fetch_add(1, Relaxed);
        let mut runner = loop {
            if let Some(runner) =
                (0..count).find_map(|i| self.sessions[(start + i) % count].try_lock())
            {
                break runner;
            }
            if started.elapsed() >= deadline {
                return Err(RunError::Busy);
            }
            std::thread::yield_now();
        };
        let Runner { session, options } = &mut *runner;
        // A stop that came after the previous run had ended is still set.
        options
            .unterminate()
            .map_err(|e| RunError::Failed(format!("cannot reset the run options: {e}")))?;
        let input = TensorRef::from_array_view(([rows, features], values))
            .map_err(|e| RunError::Failed(format!("cannot build the input tensor: {e}")))?;
        let armed = until.map(|until| {
            let stop: Arc<dyn watchdog::Stop> = Arc::clone(options) as Arc<dyn watchdog::Stop>;
            watchdog::watchdog().arm(until, stop)
        });
        let outputs = session.run_with_options(ort::inputs![input], &**options);
        drop(armed);
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(_) if until.is_some_and(|until| Instant::now() >= until) => {
                return Err(RunError::Stopped);
            }
            Err(error) => return Err(RunError::Failed(format!("inference failed: {error}"))),
        };
        match outputs[0].try_extract_tensor::<f32>() {
            Ok((_, scores)) if scores.len() == rows => Ok(scores.to_vec()),
            Ok((shape, _)) => Err(RunError::Failed(format!(
                "the model answered shape {shape:?} for {rows} rows"
            ))),
            Err(error) => Err(RunError::Failed(format!("unreadable output: {error}"))),
        }
    }
}

/// One session over the model bytes, with one intra-op and one inter-op thread: the pool gives
/// parallelism, and a session must not start threads of its own on the data path.
fn new_session(
    environment: &ort::environment::Environment,
    bytes: &[u8],
) -> Result<Session, String> {
    let text = |e: ort::Error<_>| e.to_string();
    let builder = Session::builder(environment).map_err(|e| e.to_string())?;
    let builder = builder.with_intra_threads(1).map_err(text)?;
    let builder = builder.with_inter_threads(1).map_err(text)?;
    let mut builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(text)?;
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

fn modified_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The model's input name, output name and feature count, or what is wrong with them.
fn check_shape(session: &Session) -> Result<(String, String, usize), String> {
    let [input] = session.inputs() else {
        return Err(format!(
            "{} inputs; a scorer takes exactly one, float32 [rows, features]",
            session.inputs().len()
        ));
    };
    let features = match input.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 2 && shape[1] > 0 => shape[1] as usize,
        other => {
            return Err(format!(
                "input {:?} is {other}; a scorer takes float32 [rows, features]",
                input.name()
            ));
        }
    };
    let Some(output) = session.outputs().first() else {
        return Err("no output".to_owned());
    };
    match output.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 1 || (shape.len() == 2 && shape[1] == 1) => {}
        other => {
            return Err(format!(
                "output {:?} is {other}; a scorer gives float32 [rows, 1] or [rows]",
                output.name()
            ));
        }
    }
    Ok((input.name().to_owned(), output.name().to_owned(), features))
}

impl Scorer for OnnxScorer {
    fn score_within(
        &self,
        columns: u32,
        values: &[f32],
        budget: Duration,
    ) -> Result<Vec<f32>, String> {
        self.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        // The plugin call's time left, when it ends before the scorer's own deadline.
        let deadline = self.config.deadline.min(budget);
        if deadline.is_zero() {
            self.timeouts.fetch_add(1, Relaxed);
            return Err("no time left in the call to score".to_owned());
        }
        let Some(model) = self.current.load_full() else {
            let why = self.last_error.lock().clone();
            return self.fail(format!(
                "no model loaded ({})",
                why.as_deref().unwrap_or("none configured")
            ));
        };
        let features = model.info.features;
        if columns as usize != features
            || values.is_empty()
            || !values.len().is_multiple_of(features)
        {
            return self.fail(format!(
                "the model takes rows of {features} features; got {} values in rows of {columns}",
                values.len()
            ));
        }
        let scores = match model.run(values, deadline) {
            Ok(scores) => scores,
            Err(RunError::Busy) => {
                self.timeouts.fetch_add(1, Relaxed);
                return Err(format!("every scorer session busy for {deadline:?}"));
            }
            Err(RunError::Stopped) => {
                self.timeouts.fetch_add(1, Relaxed);
                return Err(format!("scoring stopped at its {deadline:?} deadline"));
            }
            Err(RunError::Failed(message)) => return self.fail(message),
        };
        let took = started.elapsed();
        if took > deadline {
            self.timeouts.fetch_add(1, Relaxed);
            return Err(format!(
                "scoring took {took:?}, over the {deadline:?} deadline"
            ));
        }
        Ok(scores)
    }

    fn model(&self) -> String {
        match self.current.load().as_ref() {
            Some(model) => model.label.clone(),
            None => "unavailable".to_owned(),
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(OnnxScorer::status(self)).unwrap_or_default()
    }

    fn promote_shadow(&self) -> Result<serde_json::Value, String> {
        let promotion = self.promote().map_err(|e| e.to_string())?;
        serde_json::to_value(promotion).map_err(|e| e.to_string())
    }

    fn compare_shadow(
        &self,
        batch: &ScoredBatch,
        chosen: usize,
        observed: f64,
    ) -> Option<ShadowJudgement> {
        let shadow = self.shadow.load_full()?;
        let features = shadow.info.features;
        if batch.columns as usize != features {
            // Visible in the status: a shadow that can never be compared is a wrong model.
            *self.shadow_error.lock() = Some(format!(
                "the shadow model takes rows of {features} features; the router sends {}",
                batch.columns
            ));
            return None;
        }
        if batch.scores.is_empty() || batch.values.len() != batch.scores.len() * features {
            return None;
        }
        // Off the data path (the learning loop), so a generous deadline.
        let predicted = shadow.run(&batch.values, Duration::from_secs(1)).ok()?;
        let (&active, &shadowed) = (batch.scores.get(chosen)?, predicted.get(chosen)?);
        let agreed = best_row(&batch.scores) == best_row(&predicted);
        let mut tally = self.shadow_tally.lock();
        tally.compared += 1;
        tally.agreed += u64::from(agreed);
        tally.active_error += (f64::from(active) - observed).abs();
        tally.shadow_error += (f64::from(shadowed) - observed).abs();
        Some(ShadowJudgement {
            predicted: shadowed,
            agreed,
        })
    }

    fn unavailable(&self) -> Option<String> {
        if self.current.load().is_some() {
            return None;
        }
        Some(
            self.last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "no model loaded".to_owned()),
        )
    }
}
