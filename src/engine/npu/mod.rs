//! The `npu` engine: llm.npu's prompt- and tensor-level design on the accelerator boundary.
//!
//! - Linear layers run as W8A8 (int8 weights, static per-tensor activation scales from
//!   calibration) in fixed-shape graphs on an accelerator (`crate::accel`, any implementation);
//!   norms, RoPE, attention and SwiGLU run in float on the CPU through the same layer loop as the
//!   f32 path (`Transformer::hidden_states`).
//! - Chunk-sharing graphs: the prompt runs in chunks of fixed sizes (the chunk size and, unless
//!   disabled, its halvings down to 32, so a prompt is covered with little padding). One graph
//!   per (layer, linear group, rows) is compiled on first use and shared by every later chunk and
//!   prompt.
//! - Shadow outlier execution (`crate::shadow`): inputs with strong outliers are quantized with
//!   their p99.9 scale; while the accelerator runs a graph, the CPU computes the clipped
//!   elements' float remainder times the float weights, and adds it to the graph's outputs.
//! - CPU work: decode runs single tokens on the CPU with the same int8 weights and the same W8A8
//!   op (`quant::w8a8`); so does the LM head (per-channel weights, each row's activation scale
//!   taken from the row itself): the f32 head would be read in full for every decoded token.

pub mod scheduled;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Engine;
use crate::accel::{self, AccelContext, Accelerator, CompiledGraph, GraphSpec};
use crate::error::{Error, Result};
use crate::kernels::attention;
use crate::kernels::int8_gemm::{best_kernel, Int8Kernel};
use crate::model::transformer::LinearExecutor;
use crate::model::{KvCache, LinearGroup, LoadedModel, Logits};
use crate::prefill::profile::GroupTiming;
use crate::quant::calibration::Calibration;
use crate::quant::{w8a8, w8a8_dynamic, weight_cache, Int8Linear, WeightGranularity};
use crate::shadow::{BufferPool, ScaleRule, ShadowOptions, ShadowPlan, ShadowPoint, ShadowWork};
use crate::util::Progress;

/// Smallest extra chunk size compiled below the main one.
const MIN_CHUNK: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct NpuOptions {
    /// Which accelerator runs the graphs, by its name in `accel::ACCELERATORS`.
    pub accelerator: &'static str,
    /// Where an accelerator keeps compiled graphs between runs [default: a folder beside the
    /// model, `llm-npu-graphs`].
    pub graph_cache: Option<std::path::PathBuf>,
    /// Also compile halvings of the chunk size (down to 32) to pad less.
    pub smaller_chunks: bool,
    pub weights: WeightGranularity,
    pub shadow: ShadowOptions,
    /// Run prefill chunks as a subgraph DAG on an accelerator and a CPU executor (None: one chunk
    /// after the other on the shared thread pool).
    pub executors: Option<scheduled::ExecutorOptions>,
    /// Prefill attention in int8 (chunks of INT8_MIN_TOKENS or more; decode stays f32).
    pub attention: attention::Precision,
    /// Keep the quantized weights in llm-npu's cache folder (`quant::weight_cache`), and map
    /// them from there when an earlier run kept them, instead of quantizing again.
    pub keep_weights: bool,
}

impl Default for NpuOptions {
    fn default() -> Self {
        NpuOptions { accelerator: "ref", graph_cache: None, smaller_chunks: true, weights: WeightGranularity::PerChannel, shadow: ShadowOptions::default(), executors: None, attention: attention::Precision::F32, keep_weights: false }
    }
}

/// One decoder layer's integer side.
struct NpuLayer {
    /// Per linear group, its int8 linears in output order.
    linears: [Vec<Arc<Int8Linear>>; 4],
    /// Per linear group, the static scale of its input.
    scales: [f32; 4],
    /// Per linear group, its shadow work (None: max scale, nothing clipped).
    shadow: [Option<ShadowPoint>; 4],
    /// Per linear group, its outputs' ranges, when calibration recorded them.
    output_ranges: [Option<Arc<Vec<Vec<f32>>>>; 4],
}

impl NpuLayer {
    fn shadow(&self, g: LinearGroup) -> Option<&ShadowPoint> {
        self.shadow[g.index()].as_ref()
    }
}

#[derive(Debug, Clone, Default)]
pub struct GraphStats {
    pub compiled: usize,
    pub reused: usize,
    pub compile_time: Duration,
    /// Graphs loaded from the accelerator's cache of compiled graphs (counted in `compiled`).
    pub from_cache: usize,
    /// First compile and first cached load per graph shape (group, rows).
    pub per_shape: std::collections::BTreeMap<(LinearGroup, usize), (Option<Duration>, Option<Duration>)>,
    /// The largest workspace one graph needs (the accelerator shares one between graphs).
    pub max_workspace_bytes: usize,
}

pub struct NpuEngine {
    loaded: Arc<LoadedModel>,
    layers: Vec<NpuLayer>,
    pub accel: Box<dyn Accelerator>,
    graphs: Mutex<HashMap<(usize, LinearGroup, usize), Arc<dyn CompiledGraph>>>,
    stats: Mutex<GraphStats>,
    /// The int8 kernel of the CPU work (decode, LM head).
    cpu_kernel: Int8Kernel,
    /// Compiled chunk sizes, largest first.
    pub chunk_sizes: Vec<usize>,
    /// Bytes of int8 weights (with their packing), decoder layers and LM head.
    pub weight_bytes: usize,
    pub weights: WeightGranularity,
    /// What quantizing (or mapping kept) weights took.
    pub quantize_time: Duration,
    /// Where the int8 weights came from: "quantized" here, or "mapped from" what an earlier run
    /// kept.
    pub weights_from: String,
    lm_head: Arc<Int8Linear>,
    /// The int8 weights to keep for later runs: written when the engine is idle or dropped,
    /// after the work (a writer beside a prefill slows it).
    keeping: Mutex<Keeping>,
    /// Where the static scales came from (a file, or random tokens).
    pub calibration: String,
    /// Which inputs run shadow work, with which scales and hot sets.
    pub shadow_plan: ShadowPlan,
    shadow_buffers: BufferPool,
    /// Group timings, while profiling.
    profile: Mutex<Option<Vec<GroupTiming>>>,
    executors: Option<scheduled::Executors>,
    /// Precision of prefill attention.
    attention: attention::Precision,
}

impl NpuEngine {
    /// The precision prefill attention was asked to run in.
    pub fn attention_precision(&self) -> attention::Precision {
        self.attention
    }

    /// Quantizes the decoder's linear layers (progress: one step per layer) with the static
    /// scales of `cal` (already checked against the model; `calibration` says where it is from).
    pub fn new(loaded: Arc<LoadedModel>, cal: &Calibration, calibration: String, chunk_size: Option<usize>, opts: &NpuOptions, progress: &dyn Progress) -> Result<Self> {
        let t0 = Instant::now();
        let model = &loaded.model;
        if chunk_size == Some(0) {
            return Err(Error::Input("the chunk size must be at least 1".into()));
        }
        let shadow_plan = ShadowPlan::new(cal, &model.config, opts.shadow)?;
        // Before quantizing: a missing runtime should not cost the user a minute first.
        let cache_dir = opts.graph_cache.clone().unwrap_or_else(|| crate::util::beside_model_dir(&loaded.path, "graphs"));
        let accel = accel::by_name(opts.accelerator, &AccelContext { cache_dir: Some(cache_dir) })?;
        let chunk_size = chunk_size.unwrap_or_else(|| accel.default_chunk());
        if accel.needs_output_ranges() && !cal.has_output_ranges() {
            return Err(Error::Input(format!(
                "{} needs the output ranges of the linear layers, which this calibration ({calibration}) lacks: run `llm-npu calibrate` again",
                accel.name()
            )));
        }
        let (int8, weights_from, keeping) = Self::int8_weights(&loaded, opts, progress);
        let mut int8 = int8.linears.iter().cloned();
        let mut layers = Vec::with_capacity(model.layers.len());
        let mut weight_bytes = 0;
        for (i, l) in model.layers.iter().enumerate() {
            let plan = &shadow_plan.layers[i];
            let layer = NpuLayer {
                linears: LinearGroup::ALL.map(|g| l.linears(g).iter().map(|_| int8.next().expect("a linear per weight")).collect()),
                scales: LinearGroup::ALL.map(|g| plan.point(g).scale),
                output_ranges: LinearGroup::ALL.map(|g| {
                    let max = &cal.point(i, g).expect("calibration checked against the model").output_max;
                    (!max.is_empty()).then(|| Arc::new(max.clone()))
                }),
                shadow: LinearGroup::ALL.map(|g| {
                    let pp = plan.point(g);
                    let weights: Vec<&crate::tensor::Tensor> = l.linears(g).iter().map(|l| &l.weight).collect();
                    (pp.rule == ScaleRule::P999Shadow).then(|| ShadowPoint::new(pp, &weights, opts.shadow.hot_only))
                }),
            };
            weight_bytes += layer.linears.iter().flatten().map(|l| l.weights.memory_bytes()).sum::<usize>();
            layers.push(layer);
        }
        let lm_head = int8.next().expect("the LM head last");
        weight_bytes += lm_head.weights.memory_bytes();
        // No chunk can hold more tokens than the context; a larger size would only pad.
        let chunk_size = chunk_size.min(model.config.max_seq_len);
        let mut chunk_sizes = vec![chunk_size];
        if opts.smaller_chunks {
            let mut s = chunk_size / 2;
            while s >= MIN_CHUNK {
                chunk_sizes.push(s);
                s /= 2;
            }
        }
        let executors = opts.executors.map(scheduled::Executors::new).transpose()?;
        Ok(NpuEngine {
            loaded,
            layers,
            accel,
            graphs: Mutex::new(HashMap::new()),
            stats: Mutex::new(GraphStats::default()),
            cpu_kernel: best_kernel(),
            chunk_sizes,
            weight_bytes,
            weights: opts.weights,
            quantize_time: t0.elapsed(),
            weights_from,
            lm_head,
            keeping: Mutex::new(keeping.map_or(Keeping::Nothing, Keeping::Pending)),
            calibration,
            shadow_plan,
            shadow_buffers: BufferPool::default(),
            profile: Mutex::new(None),
            executors,
            attention: opts.attention,
        })
    }

    /// Every decoder linear (layer by layer, `LinearGroup::ALL` order) then the LM head in int8,
    /// shared by the npu engines of `loaded` with the same granularity (the first makes them:
    /// `Int8Set::make`). With `keep_weights`, quantized ones are to be kept for later runs when
    /// the engine is idle or dropped (the job returned). Says where they came from.
    fn int8_weights(loaded: &LoadedModel, opts: &NpuOptions, progress: &dyn Progress) -> (Arc<Int8Set>, String, Option<KeepJob>) {
        let kept = opts.keep_weights.then(|| weight_cache::path(&loaded.path, opts.weights)).flatten();
        let (set, made_here) = loaded.derived.get_or_make(&format!("npu int8 weights {:?}", opts.weights), || Int8Set::make(loaded, opts.weights, kept.as_deref(), progress));
        let from = match (&set.mapped_from, made_here) {
            (Some(path), true) => format!("mapped from {} (kept by an earlier run)", path.display()),
            (None, true) => "quantized".into(),
            (_, false) => "shared with another npu engine of this model".into(),
        };
        // Quantized here or by an engine of this model that keeps nothing; an engine of another
        // load of the same model in this process may keep them already.
        let Some(path) = kept.filter(|p| set.mapped_from.is_none() && KeepJob::claim(p)) else { return (set, from, None) };
        let gib = set.linears.iter().map(|l| l.weights.memory_bytes()).sum::<usize>() as f64 / (1u64 << 30) as f64;
        progress.note(&format!("npu: the int8 weights will be kept for later runs in {} ({gib:.2} GiB, written when this run is idle or ends; --no-weight-cache to skip)", path.display()));
        let job = KeepJob { path, model: loaded.path.clone(), linears: set.linears.clone() };
        (set, from, Some(job))
    }

    /// Final norm (f32), then the int8 LM head on the CPU with a per-row dynamic activation
    /// scale (and the family's logit soft-capping).
    fn logits(&self, x: &[f32], which: Logits) -> Vec<f32> {
        let normed = self.model().final_norm(x, which);
        let mut logits = w8a8_dynamic(self.cpu_kernel, &normed, normed.len() / self.model().config.hidden_size, &self.lm_head);
        self.model().cap_logits(&mut logits);
        logits
    }

    pub fn graph_stats(&self) -> GraphStats {
        self.stats.lock().unwrap().clone()
    }

    /// Records the timing of every accelerator graph of the prefills that follow.
    pub fn start_profiling(&self) {
        *self.profile.lock().unwrap() = Some(Vec::new());
    }

    /// The timings recorded since `start_profiling` (profiling stops).
    pub fn take_profile(&self) -> Vec<GroupTiming> {
        self.profile.lock().unwrap().take().unwrap_or_default()
    }

    /// Shadow work done so far, per layer.
    pub fn shadow_work(&self) -> Vec<ShadowWork> {
        self.layers
            .iter()
            .map(|l| {
                let mut w = ShadowWork::default();
                for p in l.shadow.iter().flatten() {
                    w += p.work();
                }
                w
            })
            .collect()
    }

    /// Bytes of float weight columns the shadow keeps resident (hot channels), and what keeping
    /// every channel of the shadowed inputs would take.
    pub fn shadow_memory(&self) -> (usize, usize) {
        let points = || self.layers.iter().flat_map(|l| l.shadow.iter().flatten());
        (points().map(ShadowPoint::resident_bytes).sum(), points().map(ShadowPoint::all_columns_bytes).sum())
    }

    /// Splits `n` prompt tokens into (real tokens, graph rows) chunks in causal order: whole
    /// chunks of the largest size, then smaller ones, the last one padded to the smallest
    /// compiled size that holds it.
    pub fn plan_chunks(&self, n: usize) -> Vec<(usize, usize)> {
        let mut plan = Vec::new();
        let mut left = n;
        for &s in &self.chunk_sizes {
            while left >= s {
                plan.push((s, s));
                left -= s;
            }
        }
        if left > 0 {
            let rows = self.chunk_sizes.iter().rev().copied().find(|&s| s >= left).unwrap_or(self.chunk_sizes[0]);
            plan.push((left, rows));
        }
        plan
    }

    /// The compiled graph for (layer, group, rows), compiling it on first use.
    fn graph(&self, layer: usize, group: LinearGroup, rows: usize) -> Result<Arc<dyn CompiledGraph>> {
        let key = (layer, group, rows);
        if let Some(g) = self.graphs.lock().unwrap().get(&key) {
            self.stats.lock().unwrap().reused += 1;
            return Ok(g.clone());
        }
        let l = &self.layers[layer];
        let spec = GraphSpec {
            name: format!("layer{layer}.{}.rows{rows}", group.name()),
            layer,
            group,
            rows,
            input_scale: l.scales[group.index()],
            linears: l.linears[group.index()].clone(),
            residual: group.adds_to_residual(),
            output_ranges: l.output_ranges[group.index()].clone(),
        };
        let (g, report) = self.accel.compile(&spec)?;
        let g: Arc<dyn CompiledGraph> = Arc::from(g);
        self.graphs.lock().unwrap().insert(key, g.clone());
        let mut st = self.stats.lock().unwrap();
        st.compiled += 1;
        st.compile_time += report.time;
        st.from_cache += usize::from(report.from_cache);
        let shape = st.per_shape.entry((group, rows)).or_default();
        let first = if report.from_cache { &mut shape.1 } else { &mut shape.0 };
        first.get_or_insert(report.time);
        st.max_workspace_bytes = st.max_workspace_bytes.max(report.memory_bytes);
        Ok(g)
    }

    /// Runs `tokens` after what the cache holds: prefill in accelerator chunks, a single token
    /// (decode) on the CPU. Returns logits like `Transformer::forward`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        if tokens.len() == 1 {
            return super::on_pool(|| {
                let x = self.model().hidden_states(&CpuInt8 { npu: self }, tokens, cache, None)?;
                Ok(self.logits(&x, which))
            });
        }
        if let Some(ex) = &self.executors {
            return self.forward_scheduled(ex, tokens, cache, which);
        }
        let mut out = Vec::new();
        let mut at = 0;
        let plan = self.plan_chunks(tokens.len());
        let pass_end = cache.len() + tokens.len();
        for (i, &(real, rows)) in plan.iter().enumerate() {
            let chunk = &tokens[at..at + real];
            at += real;
            let x = self.model().hidden_states_in_pass(&AccelChunk { npu: self, rows, chunk: i }, chunk, cache, None, pass_end)?;
            if let Some(w) = which.for_chunk(i, plan.len()) {
                out.extend(self.logits(&x, w));
            }
        }
        Ok(out)
    }
}

/// A model's linears in int8 (`NpuEngine::int8_weights`), as `LoadedModel::derived` shares them.
struct Int8Set {
    linears: Vec<Arc<Int8Linear>>,
    /// The kept file they are mapped from; None when quantized here.
    mapped_from: Option<std::path::PathBuf>,
}

impl Int8Set {
    /// Mapped from `kept` when an earlier run kept them there, else quantized (progress: one
    /// step per layer); the LM head per channel whatever the decoder's granularity.
    fn make(loaded: &LoadedModel, granularity: WeightGranularity, kept: Option<&std::path::Path>, progress: &dyn Progress) -> Self {
        let model = &loaded.model;
        let decoder = model.layers.iter().flat_map(|l| LinearGroup::ALL.into_iter().flat_map(move |g| l.linears(g)));
        let shapes: Vec<weight_cache::Shape> = decoder.chain([&model.lm_head]).map(|l| weight_cache::Shape { n: l.weight.shape()[0], k: l.weight.shape()[1], bias: l.bias.is_some() }).collect();
        if let Some(path) = kept {
            match weight_cache::load(path, &shapes) {
                Ok(Some(linears)) => return Int8Set { linears: linears.into_iter().map(Arc::new).collect(), mapped_from: Some(path.to_path_buf()) },
                Ok(None) => {}
                Err(e) => progress.note(&format!("warning: the kept int8 weights are unusable ({e}): quantizing again")),
            }
        }
        let mut linears = Vec::with_capacity(shapes.len());
        progress.start("quantizing", "layers", model.layers.len() as u64);
        for l in &model.layers {
            let layer = LinearGroup::ALL.into_iter().flat_map(|g| l.linears(g));
            linears.extend(layer.map(|lin| Arc::new(Int8Linear::from_tensor(&lin.weight, lin.bias.as_ref().map(|b| b.data()), granularity))));
            progress.step();
        }
        progress.finish();
        linears.push(Arc::new(Int8Linear::from_tensor(&model.lm_head.weight, None, WeightGranularity::PerChannel)));
        Int8Set { linears, mapped_from: None }
    }
}

/// Int8 weights to be kept at `path` (`quant::weight_cache`).
struct KeepJob {
    path: std::path::PathBuf,
    model: std::path::PathBuf,
    linears: Vec<Arc<Int8Linear>>,
}

impl KeepJob {
    /// The paths this process's engines will keep weights at.
    fn pending() -> std::sync::MutexGuard<'static, Vec<std::path::PathBuf>> {
        static PENDING: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
        PENDING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when no other engine of this process keeps weights at `path` already; then this
    /// caller does.
    fn claim(path: &std::path::Path) -> bool {
        let mut pending = Self::pending();
        let free = !pending.iter().any(|p| p == path);
        if free {
            pending.push(path.to_path_buf());
        }
        free
    }

    /// Writes the file. A failure only means that the next run quantizes again.
    fn write(self) {
        let _ = weight_cache::keep(&self.path, &self.model, &self.linears.iter().map(|l| &**l).collect::<Vec<_>>());
        KeepJob::pending().retain(|p| *p != self.path);
    }
}

/// Where an engine's kept int8 weights are.
enum Keeping {
    Nothing,
    /// To be written when the engine is idle (`Engine::idle`) or dropped.
    Pending(KeepJob),
    /// Being written by a thread of the lowest priority, started when the engine was idle.
    Writing(std::thread::JoinHandle<()>),
}

impl Drop for NpuEngine {
    /// Keeps the int8 weights for later runs, if this run quantized them: writes them now, or
    /// waits for the writer the engine's idle time started.
    fn drop(&mut self) {
        match std::mem::replace(self.keeping.get_mut().unwrap_or_else(|e| e.into_inner()), Keeping::Nothing) {
            Keeping::Pending(job) => job.write(),
            Keeping::Writing(writer) => {
                let _ = writer.join();
            }
            Keeping::Nothing => {}
        }
    }
}

impl Engine for NpuEngine {
    fn name(&self) -> &'static str {
        "npu"
    }
    fn loaded(&self) -> &Arc<LoadedModel> {
        &self.loaded
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        NpuEngine::forward(self, tokens, cache, which)
    }
    fn as_npu(&self) -> Option<&NpuEngine> {
        Some(self)
    }
    /// Starts writing the int8 weights to keep, if there are any: a server may never be
    /// stopped gently enough to write them when dropped, and a chat's user types meanwhile.
    fn idle(&self) {
        let mut keeping = self.keeping.lock().unwrap_or_else(|e| e.into_inner());
        if let Keeping::Pending(_) = *keeping {
            let Keeping::Pending(job) = std::mem::replace(&mut *keeping, Keeping::Nothing) else { unreachable!("matched above") };
            // When the thread cannot start, the job goes with it: the next run quantizes again.
            if let Ok(writer) = std::thread::Builder::new().name("keep-int8-weights".into()).spawn(move || {
                crate::util::lowest_priority();
                job.write()
            }) {
                *keeping = Keeping::Writing(writer);
            }
        }
    }
}

/// Prefill chunk executor: every linear group runs as a fixed-shape accelerator graph of `rows`
/// rows; a chunk with fewer real tokens is zero-padded on the way in and cut on the way out.
pub(crate) struct AccelChunk<'a> {
    npu: &'a NpuEngine,
    rows: usize,
    /// Index of the chunk in its prompt (for profiling).
    chunk: usize,
}

impl LinearExecutor for AccelChunk<'_> {
    /// The graph on the accelerator and, at the same time, the shadow work of its input on the
    /// CPU; the shadow results are merged into the graph's outputs when both are done.
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let start = Instant::now();
        let shadow = self.npu.layers[layer].shadow(group);
        if self.npu.accel.runs_on_host_cores() {
            // Nothing to overlap with: the graph's threads are the shadow's.
            self.run_graph(layer, group, input, m, outputs)?;
            let t0 = Instant::now();
            if let Some(s) = shadow {
                s.apply(input, outputs);
            }
            self.record(layer, group, start, t0.elapsed());
            return Ok(());
        }
        let pool = &self.npu.shadow_buffers;
        let timed_shadow = || {
            let t0 = Instant::now();
            (shadow.and_then(|s| s.compute(input, pool)), t0.elapsed())
        };
        let (done, (delta, shadow_time)) = rayon::join(|| self.run_graph(layer, group, input, m, outputs), timed_shadow);
        done?;
        if let (Some(s), Some(d)) = (shadow, delta) {
            s.merge(d, outputs, pool);
        }
        self.record(layer, group, start, shadow_time);
        Ok(())
    }

    fn attention(&self) -> attention::Precision {
        self.npu.attention
    }
}

impl AccelChunk<'_> {
    /// Adds a group's timing to the profile, when one is being taken.
    fn record(&self, layer: usize, group: LinearGroup, start: Instant, shadow: std::time::Duration) {
        if let Some(p) = self.npu.profile.lock().unwrap().as_mut() {
            p.push(GroupTiming { chunk: self.chunk, layer, group, rows: self.rows, start, end: Instant::now(), shadow });
        }
    }

    fn run_graph(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let g = self.npu.graph(layer, group, self.rows)?;
        if m == self.rows {
            return g.execute(input, outputs);
        }
        let k = input.len() / m;
        let mut padded = vec![0f32; self.rows * k];
        padded[..input.len()].copy_from_slice(input);
        let mut bufs: Vec<Vec<f32>> = outputs
            .iter()
            .map(|o| {
                let n = o.len() / m;
                let mut b = vec![0f32; self.rows * n];
                b[..o.len()].copy_from_slice(o); // residual graphs read their output
                b
            })
            .collect();
        let mut views: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        g.execute(&padded, &mut views)?;
        for (o, b) in outputs.iter_mut().zip(&bufs) {
            let len = o.len();
            o.copy_from_slice(&b[..len]);
        }
        Ok(())
    }
}

/// Decode executor: CPU work, the same W8A8 op from the same int8 weights, then the shadow.
struct CpuInt8<'a> {
    npu: &'a NpuEngine,
}

impl LinearExecutor for CpuInt8<'_> {
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let l = &self.npu.layers[layer];
        w8a8(self.npu.cpu_kernel, input, m, l.scales[group.index()], &l.linears[group.index()], group.adds_to_residual(), outputs);
        if let Some(s) = l.shadow(group) {
            s.apply(input, outputs);
        }
        Ok(())
    }
}
