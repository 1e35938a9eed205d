//! Engines: what generation, benchmarks, evaluation and the server run on. An engine owns a
//! loaded model and turns tokens into logits, filling a KV cache:
//!
//! - `float::F32Engine`: the float32 reference on the CPU;
//! - `npu::NpuEngine`: llm.npu's design: W8A8 linears as fixed-shape graphs on an accelerator
//!   (`crate::accel`), chunked prefill, shadow outlier execution on the CPU (`crate::shadow`),
//!   optionally out-of-order subgraph execution (`crate::prefill`); int8 decode on the CPU.
//!
//! `load_model` and `build` (or both at once, `open`) are the one way to make an engine from
//! options: the CLI, the tests, `demo` and the server all use them.

pub mod float;
pub mod npu;

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{self, KvCache, LoadOptions, LoadedModel, Logits, Transformer};
use crate::quant::calibration::Calibration;
use crate::util::Progress;
pub use float::F32Engine;
pub use npu::{NpuEngine, NpuOptions};

pub trait Engine: Send + Sync {
    /// The backend's name: "f32" or "npu".
    fn name(&self) -> &'static str;
    /// The loaded model (weights, tokenizer, where it came from).
    fn loaded(&self) -> &Arc<LoadedModel>;
    /// Runs `tokens` after what `cache` holds, like `Transformer::forward`.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>>;
    /// The npu engine behind this one, for what only it has (graphs, shadow work, schedules).
    fn as_npu(&self) -> Option<&NpuEngine> {
        None
    }
    /// The BitStack the engine's linears run on, if any (to grow or shrink it while running).
    fn bitstack(&self) -> Option<&Arc<crate::bitstack::BitStack>> {
        None
    }
    /// Nothing for this engine to do for a while (a server between requests, a chat waiting for
    /// its user): time for work it put off (the npu backend starts keeping its int8 weights,
    /// at the lowest priority, instead of when it is dropped).
    fn idle(&self) {}
    fn model(&self) -> &Transformer {
        &self.loaded().model
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// float32 reference path on the CPU
    #[default]
    F32,
    /// W8A8 linear layers on the integer accelerator, chunked prefill
    Npu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::F32 => "f32",
            BackendKind::Npu => "npu",
        }
    }
}

/// Which model to load, and with how many threads to run it.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// A Hugging Face folder, a .gguf file or a llama2.c .bin.
    pub path: PathBuf,
    /// A tokenizer file to use instead of the model's own (required for llama2.c).
    pub tokenizer: Option<PathBuf>,
    /// Worker threads for the whole process [default: all cores].
    pub threads: Option<usize>,
}

/// Where the npu backend's static activation scales come from.
#[derive(Debug, Clone, Default)]
pub enum CalibrationSource {
    /// The calibration file beside the model, else a quick calibration on 512 random tokens
    /// (with a note that real text calibrates better).
    #[default]
    Auto,
    File(PathBuf),
    Given(Arc<Calibration>),
}

/// How to build an engine over a loaded model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub backend: BackendKind,
    /// Prefill chunk size: npu graphs are compiled for it (and its halvings); the f32 engine
    /// chunks the prompt the same way [default: the accelerator's `default_chunk` for npu, the
    /// whole prompt for f32].
    pub chunk_size: Option<usize>,
    /// The npu backend's options (the f32 engine ignores them).
    pub npu: NpuOptions,
    pub calibration: CalibrationSource,
    /// The f32 backend's linears on a BitStack file's blocks, as many as the budget allows.
    pub bitstack: Option<crate::bitstack::BitStackOptions>,
}

/// Runs `f` on a worker of the global thread pool, so the parallel loops inside it split their
/// work from there (a cheap push onto a local queue) instead of each injecting it from outside
/// the pool and sleeping until it is done: decode runs ~150 such loops per token.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Starts the process-wide worker threads (once; later calls with the same count do nothing).
/// Returns the number of threads.
pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        return Err(Error::Input("the thread count must be at least 1".into()));
    }
    if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_err() && rayon::current_num_threads() != n {
        return Err(Error::Input(format!("the worker threads already run with {} threads, not {n}", rayon::current_num_threads())));
    }
    Ok(n)
}

/// Loads a model (memory-mapped), starting the worker threads first when a count is given.
pub fn load_model(opts: &ModelOptions, progress: &dyn Progress) -> Result<Arc<LoadedModel>> {
    if opts.threads.is_some() {
        init_threads(opts.threads)?;
    }
    let load = LoadOptions { tokenizer: opts.tokenizer.as_deref(), progress };
    Ok(Arc::new(model::load(&opts.path, &load)?))
}

/// Builds the engine `opts` asks for over a loaded model.
pub fn build(loaded: &Arc<LoadedModel>, opts: &EngineOptions, progress: &dyn Progress) -> Result<Box<dyn Engine>> {
    match opts.backend {
        BackendKind::F32 => match &opts.bitstack {
            Some(b) => Ok(Box::new(F32Engine::with_bitstack(loaded.clone(), crate::bitstack::attach(&loaded.model, b, progress)?))),
            None => Ok(Box::new(F32Engine::new(loaded.clone(), opts.chunk_size))),
        },
        BackendKind::Npu if opts.bitstack.is_some() => Err(Error::Input("a BitStack runs on the f32 backend (the npu backend's int8 weights are its own copy; README, \"BitStack\")".into())),
        BackendKind::Npu => {
            let (cal, source) = resolve_calibration(loaded, &opts.calibration, progress)?;
            Ok(Box::new(NpuEngine::new(loaded.clone(), &cal, source, opts.chunk_size, &opts.npu, progress)?))
        }
    }
}

/// Loads the model and builds the engine.
pub fn open(model: &ModelOptions, opts: &EngineOptions, progress: &dyn Progress) -> Result<Box<dyn Engine>> {
    build(&load_model(model, progress)?, opts, progress)
}

/// The calibration `source` names, checked against the model, with a description of where it
/// came from.
fn resolve_calibration(loaded: &LoadedModel, source: &CalibrationSource, progress: &dyn Progress) -> Result<(Arc<Calibration>, String)> {
    let from_file = |path: &std::path::Path| -> Result<(Arc<Calibration>, String)> {
        let c = Calibration::load(path)?;
        c.check_against(&loaded.model, path)?;
        let what = format!("{} ({}, {} tokens)", path.display(), c.source, c.tokens);
        Ok((Arc::new(c), what))
    };
    match source {
        CalibrationSource::File(path) => from_file(path),
        CalibrationSource::Given(c) => Ok((c.clone(), format!("{} tokens ({})", c.tokens, c.source))),
        CalibrationSource::Auto => {
            let beside = crate::quant::calibration::default_path(&loaded.path);
            if beside.exists() {
                return from_file(&beside);
            }
            const ADVICE: &str = "run `llm-npu calibrate` on representative text for better accuracy";
            let what = |c: &Calibration| format!("{} random tokens (no calibration file)", c.tokens);
            // The random tokens are always the same: an earlier run's result is this run's.
            let cache = crate::quant::calibration::random_fallback_cache(&loaded.path);
            if let Some((path, c)) = cache.as_ref().and_then(|p| Calibration::load(p).ok().filter(|c| c.check_against(&loaded.model, p).is_ok()).map(|c| (p, c))) {
                crate::util::mark_used(path);
                progress.note(&format!("warning: no calibration file for this model: using the calibration on {} random tokens an earlier run kept in {} ({ADVICE})", c.tokens, path.display()));
                let what = what(&c);
                return Ok((Arc::new(c), what));
            }
            progress.note(&format!("warning: no calibration file for this model: calibrating on 512 random tokens ({ADVICE})"));
            let c = Calibration::on_random_tokens(&loaded.model, 512, 0, progress)?;
            if let Some(path) = &cache {
                match crate::quant::calibration::keep_random_fallback(&c, &loaded.path, path) {
                    Ok(()) => progress.note(&format!("kept it in {} for later runs", path.display())),
                    Err(e) => progress.note(&format!("warning: could not keep it for later runs: {e}")),
                }
            }
            let what = what(&c);
            Ok((Arc::new(c), what))
        }
    }
}
