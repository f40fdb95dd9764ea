//! The `scorer` import that router plugins call, backed by ONNX Runtime through `ort`.
//!
//! It owns: loading the runtime library (`[scorer] library`, once per process), a small pool of
//! sessions per model with one intra-op thread each, checking a model's input and output
//! before it is used, swapping in a changed model file, and the status the admin API shows.
//!
//! It must not crash or stall the data path: a missing library, a missing or broken model and
//! a model of the wrong shape are errors kept in [`ScorerStatus`] (the previous model, if any,
//! keeps answering); a call that cannot get a session or finish within the deadline is an
//! error the router decides without. While no model can answer, [`OnnxScorer::unavailable`]
//! says why, and the router uses its built-in policy.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};
use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::ScorerConfig;
use sluice_policy::Scorer;

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
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
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
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        });
        if let Err(error) = scorer.reload() {
            tracing::error!(%error, "scorer model not loaded; the router uses its built-in policy");
        }
        scorer
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
        let started = Instant::now();
        let model_error = |message: String| ScorerError::Model {
            path: path.clone(),
            message,
        };
        *self.attempted.lock() = Some(modified_time(&path));
        let bytes = std::fs::read(&path).map_err(|e| model_error(format!("cannot read: {e}")))?;
        let environment = runtime(self.config.library.as_deref())?;
        let mut sessions = Vec::with_capacity(self.config.sessions);
        for _ in 0..self.config.sessions.max(1) {
            let session = new_session(environment, &bytes)
                .map_err(|e| model_error(format!("not a usable ONNX model: {e}")))?;
            sessions.push(session);
        }
        let first = sessions
            .first()
            .ok_or_else(|| model_error("no session".to_owned()))?;
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
                let reloaded = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                match reloaded {
                    Ok(Some(Err(error))) => {
                        tracing::error!(%error, "scorer model not reloaded; the previous one (if any) still answers");
                    }
                    Ok(_) => {}
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
        }
    }

    fn fail(&self, message: String) -> Result<Vec<f32>, String> {
        self.failures.fetch_add(1, Relaxed);
        Err(message)
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
    fn score(&self, columns: u32, values: &[f32]) -> Result<Vec<f32>, String> {
        self.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
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
        let rows = values.len() / features;
        // A free session, trying each once from a rotating start, then waiting within the deadline.
        let count = model.sessions.len();
        let start = model.next.fetch_add(1, Relaxed);
        let mut session = None;
        while session.is_none() {
            session = (0..count).find_map(|i| model.sessions[(start + i) % count].try_lock());
            if session.is_none() {
                if started.elapsed() >= self.config.deadline {
                    self.timeouts.fetch_add(1, Relaxed);
                    return Err(format!(
                        "every scorer session busy for {:?}",
                        self.config.deadline
                    ));
                }
                std::thread::yield_now();
            }
        }
        let Some(mut session) = session else {
            return self.fail("no session".to_owned());
        };
        let input = match TensorRef::from_array_view(([rows, features], values)) {
            Ok(input) => input,
            Err(error) => return self.fail(format!("cannot build the input tensor: {error}")),
        };
        let scores = match session.run(ort::inputs![input]) {
            Ok(outputs) => match outputs[0].try_extract_tensor::<f32>() {
                Ok((_, scores)) if scores.len() == rows => scores.to_vec(),
                Ok((shape, _)) => {
                    return self.fail(format!(
                        "the model answered shape {shape:?} for {rows} rows"
                    ));
                }
                Err(error) => return self.fail(format!("unreadable output: {error}")),
            },
            Err(error) => return self.fail(format!("inference failed: {error}")),
        };
        drop(session);
        let took = started.elapsed();
        if took > self.config.deadline {
            self.timeouts.fetch_add(1, Relaxed);
            return Err(format!(
                "scoring took {took:?}, over the {:?} deadline",
                self.config.deadline
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
