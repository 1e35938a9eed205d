//! The `npu` backend: llm.npu's prompt- and tensor-level design on the accelerator boundary.
//!
//! - Linear layers run as W8A8 (per-tensor int8 weights, static per-tensor activation scales
//!   from calibration) on the accelerator; norms, RoPE, attention and SwiGLU run in float on the
//!   CPU through the same layer loop as the f32 path (`Transformer::hidden_states`).
//! - Chunk-sharing graphs: the prompt runs in chunks of fixed sizes (the chunk size and, unless
//!   disabled, its halvings down to 32, so a prompt is covered with little padding). One graph
//!   per (layer, part, rows) is compiled on first use and shared by every later chunk and prompt.
//! - Shadow outlier execution (`crate::shadow`): inputs with strong outliers are quantized with
//!   their p99.9 scale; while the accelerator runs a graph, the CPU computes the clipped
//!   elements' float remainder times the float weights, and adds it to the graph's outputs.
//! - Decode runs single tokens on the CPU with the same int8 weights and the same W8A8 code.
//! - The LM head runs on the CPU in int8 too (per-channel weights, each row's activation scale
//!   taken from the row itself): the f32 head would be read in full for every decoded token.

pub mod scheduled;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accel::cpu::{run_w8a8, CpuAccelerator, CpuGraph};
use crate::accel::{Accelerator, LinearGraphSpec};
use crate::calibrate::Calibration;
use crate::error::{Error, Result};
use crate::model::transformer::LinearExecutor;
use crate::model::{KvCache, LinearInput, Logits, Transformer};
use crate::quant::{scale_for, QuantLinear, WeightGranularity};
use crate::shadow::{BufferPool, ShadowOptions, ShadowPlan, ShadowPoint, ShadowWork};

/// Smallest extra chunk size compiled below the main one.
const MIN_CHUNK: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct NpuOptions {
    /// Main chunk size (the paper's default is 256).
    pub chunk_size: usize,
    /// Also compile halvings of the chunk size (down to 32) to pad less.
    pub smaller_chunks: bool,
    pub weights: WeightGranularity,
    pub shadow: ShadowOptions,
    /// Run prefill chunks as a subgraph DAG on an accelerator and a CPU executor (None: one chunk
    /// after the other on the shared thread pool).
    pub executors: Option<scheduled::ExecutorOptions>,
}

impl Default for NpuOptions {
    fn default() -> Self {
        NpuOptions { chunk_size: 256, smaller_chunks: true, weights: WeightGranularity::PerChannel, shadow: ShadowOptions::default(), executors: None }
    }
}

/// The four linear groups of a layer, one graph each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Qkv,
    O,
    GateUp,
    Down,
}

struct NpuLayer {
    qkv: Vec<Arc<QuantLinear>>,
    o: Vec<Arc<QuantLinear>>,
    gate_up: Vec<Arc<QuantLinear>>,
    down: Vec<Arc<QuantLinear>>,
    /// Static input scales: attn_in, o_in, ffn_in, down_in.
    scales: [f32; 4],
    /// Shadow work per input (None: max scale, nothing clipped).
    shadow: [Option<ShadowPoint>; 4],
}

impl Part {
    /// The linear input this part's graph reads.
    pub fn input(self) -> LinearInput {
        match self {
            Part::Qkv => LinearInput::Attn,
            Part::O => LinearInput::O,
            Part::GateUp => LinearInput::Ffn,
            Part::Down => LinearInput::Down,
        }
    }
}

impl NpuLayer {
    /// The part's linears, its input scale, and whether it adds into the residual stream.
    fn part(&self, p: Part) -> (&[Arc<QuantLinear>], f32, bool) {
        let (linears, residual) = match p {
            Part::Qkv => (&self.qkv, false),
            Part::O => (&self.o, true),
            Part::GateUp => (&self.gate_up, false),
            Part::Down => (&self.down, true),
        };
        (linears, self.scales[p.input() as usize], residual)
    }

    fn shadow(&self, p: Part) -> Option<&ShadowPoint> {
        self.shadow[p.input() as usize].as_ref()
    }
}

/// One accelerator part's run in a profiled prefill (`NpuModel::start_profiling`).
#[derive(Debug, Clone, Copy)]
pub struct PartTiming {
    pub chunk: usize,
    pub layer: usize,
    pub part: Part,
    /// Rows of the graph (the chunk size it was compiled for).
    pub rows: usize,
    /// The graph and its shadow work, from start to merged outputs.
    pub start: Instant,
    pub end: Instant,
    /// Time the shadow work took (it runs beside the graph).
    pub shadow: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GraphStats {
    pub compiled: usize,
    pub reused: usize,
    pub compile_time: Duration,
    /// The largest workspace one graph needs (the accelerator shares one between graphs).
    pub max_workspace_bytes: usize,
}

pub struct NpuModel<'m> {
    pub model: &'m Transformer,
    layers: Vec<NpuLayer>,
    pub accel: CpuAccelerator,
    graphs: Mutex<HashMap<(usize, Part, usize), Arc<CpuGraph>>>,
    stats: Mutex<GraphStats>,
    /// Compiled chunk sizes, largest first.
    pub chunk_sizes: Vec<usize>,
    /// Bytes of int8 weights (with their packing), decoder layers and LM head.
    pub weight_bytes: usize,
    lm_head: QuantLinear,
    /// Which inputs run shadow work, with which scales and hot sets.
    pub shadow_plan: ShadowPlan,
    shadow_buffers: BufferPool,
    /// Part timings, while profiling.
    profile: Mutex<Option<Vec<PartTiming>>>,
    executors: Option<scheduled::Executors>,
}

impl<'m> NpuModel<'m> {
    /// Quantizes the decoder's linear layers (progress: `on_layer` once per layer).
    pub fn new(model: &'m Transformer, cal: &Calibration, opts: NpuOptions, on_layer: &dyn Fn()) -> Result<Self> {
        if opts.chunk_size == 0 {
            return Err(Error::Input("--chunk-size must be at least 1".into()));
        }
        let shadow_plan = ShadowPlan::new(cal, &model.config, opts.shadow)?;
        let mut layers = Vec::with_capacity(model.layers.len());
        let mut weight_bytes = 0;
        for (i, l) in model.layers.iter().enumerate() {
            let q = |lin: &crate::model::transformer::Linear| {
                let (n, k) = (lin.out_features(), lin.in_features());
                Arc::new(QuantLinear::new(lin.weight.data(), n, k, lin.bias.as_ref().map(|b| b.data()), opts.weights))
            };
            let (a, mlp) = (&l.self_attn, &l.mlp);
            let plan = &shadow_plan.layers[i];
            let shadow = |p: LinearInput, linears: &[&crate::model::transformer::Linear]| {
                let pp = &plan.points[p as usize];
                let weights: Vec<&crate::tensor::Tensor> = linears.iter().map(|l| &l.weight).collect();
                (pp.rule == crate::shadow::ScaleRule::P999Shadow).then(|| ShadowPoint::new(pp, &weights, opts.shadow.hot_only))
            };
            let layer = NpuLayer {
                qkv: vec![q(&a.q_proj), q(&a.k_proj), q(&a.v_proj)],
                o: vec![q(&a.o_proj)],
                gate_up: vec![q(&mlp.gate_proj), q(&mlp.up_proj)],
                down: vec![q(&mlp.down_proj)],
                scales: LinearInput::ALL.map(|p| plan.points[p as usize].scale),
                shadow: [
                    shadow(LinearInput::Attn, &[&a.q_proj, &a.k_proj, &a.v_proj]),
                    shadow(LinearInput::O, &[&a.o_proj]),
                    shadow(LinearInput::Ffn, &[&mlp.gate_proj, &mlp.up_proj]),
                    shadow(LinearInput::Down, &[&mlp.down_proj]),
                ],
            };
            weight_bytes += [&layer.qkv, &layer.o, &layer.gate_up, &layer.down].iter().flat_map(|g| g.iter()).map(|l| l.weights.memory_bytes()).sum::<usize>();
            layers.push(layer);
            on_layer();
        }
        let head = &model.lm_head;
        let lm_head = QuantLinear::new(head.weight.data(), head.out_features(), head.in_features(), None, WeightGranularity::PerChannel);
        weight_bytes += lm_head.weights.memory_bytes();
        // No chunk can hold more tokens than the context; a larger size would only pad.
        let chunk_size = opts.chunk_size.min(model.config.max_seq_len);
        let mut chunk_sizes = vec![chunk_size];
        if opts.smaller_chunks {
            let mut s = chunk_size / 2;
            while s >= MIN_CHUNK {
                chunk_sizes.push(s);
                s /= 2;
            }
        }
        Ok(NpuModel {
            model,
            layers,
            accel: CpuAccelerator::default(),
            graphs: Mutex::new(HashMap::new()),
            stats: Mutex::new(GraphStats::default()),
            chunk_sizes,
            weight_bytes,
            lm_head,
            shadow_plan,
            shadow_buffers: BufferPool::default(),
            profile: Mutex::new(None),
            executors: opts.executors.map(scheduled::Executors::new).transpose()?,
        })
    }

    /// Final norm (f32), then the int8 LM head with a per-row dynamic activation scale.
    fn logits(&self, x: &[f32], which: Logits) -> Vec<f32> {
        let (d, vocab) = (self.model.config.hidden_size, self.model.config.vocab_size);
        let rows = match which {
            Logits::Last => &x[x.len() - d..],
            Logits::All => x,
        };
        let m = rows.len() / d;
        let mut normed = vec![0f32; rows.len()];
        self.model.norm.forward(rows, &mut normed);
        let mut xq = vec![0i8; normed.len()];
        let mut row_scales = Vec::with_capacity(m);
        for (r, q) in normed.chunks_exact(d).zip(xq.chunks_exact_mut(d)) {
            let s = scale_for(r.iter().fold(0f32, |a, v| a.max(v.abs())));
            crate::quant::quantize(r, s, q);
            row_scales.push(s);
        }
        let mut acc = vec![0i32; m * vocab];
        crate::kernels::int8_gemm::gemm_i8(self.accel.kernel, &xq, m, &self.lm_head.weights, &mut acc);
        let mut logits = vec![0f32; m * vocab];
        for ((out, a), s) in logits.chunks_exact_mut(vocab).zip(acc.chunks_exact(vocab)).zip(&row_scales) {
            for (j, (o, &v)) in out.iter_mut().zip(a).enumerate() {
                *o = v as f32 * (s * self.lm_head.scale(j));
            }
        }
        logits
    }

    pub fn graph_stats(&self) -> GraphStats {
        *self.stats.lock().unwrap()
    }

    /// Records the timing of every accelerator part of the prefills that follow.
    pub fn start_profiling(&self) {
        *self.profile.lock().unwrap() = Some(Vec::new());
    }

    /// The timings recorded since `start_profiling` (profiling stops).
    pub fn take_profile(&self) -> Vec<PartTiming> {
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

    /// The compiled graph for (layer, part, rows), compiling it on first use.
    fn graph(&self, layer: usize, part: Part, rows: usize) -> Result<Arc<CpuGraph>> {
        let key = (layer, part, rows);
        if let Some(g) = self.graphs.lock().unwrap().get(&key) {
            self.stats.lock().unwrap().reused += 1;
            return Ok(g.clone());
        }
        let (linears, input_scale, residual) = self.layers[layer].part(part);
        let spec = LinearGraphSpec { name: format!("layer{layer}.{part:?}.rows{rows}"), rows, input_scale, linears: linears.to_vec(), residual };
        let (g, report) = self.accel.compile(spec)?;
        let g = Arc::new(g);
        self.graphs.lock().unwrap().insert(key, g.clone());
        let mut st = self.stats.lock().unwrap();
        st.compiled += 1;
        st.compile_time += report.time;
        st.max_workspace_bytes = st.max_workspace_bytes.max(report.memory_bytes);
        Ok(g)
    }

    /// Runs `tokens` after what the cache holds: prefill in accelerator chunks, a single token
    /// (decode) on the CPU. Returns logits like `Transformer::forward`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        if tokens.len() == 1 {
            let x = self.model.hidden_states(&CpuInt8 { npu: self }, tokens, cache, None)?;
            return Ok(self.logits(&x, which));
        }
        if let Some(ex) = &self.executors {
            return self.forward_scheduled(ex, tokens, cache, which);
        }
        let mut out = Vec::new();
        let mut at = 0;
        let plan = self.plan_chunks(tokens.len());
        for (i, &(real, rows)) in plan.iter().enumerate() {
            let chunk = &tokens[at..at + real];
            at += real;
            let x = self.model.hidden_states(&AccelChunk { npu: self, rows, chunk: i }, chunk, cache, None)?;
            match which {
                Logits::All => out.extend(self.logits(&x, Logits::All)),
                Logits::Last if i + 1 == plan.len() => out = self.logits(&x, Logits::Last),
                Logits::Last => {}
            }
        }
        Ok(out)
    }
}

/// Prefill chunk executor: every linear group runs as a fixed-shape accelerator graph of `rows`
/// rows; a chunk with fewer real tokens is zero-padded on the way in and cut on the way out.
pub(crate) struct AccelChunk<'a, 'm> {
    npu: &'a NpuModel<'m>,
    rows: usize,
    /// Index of the chunk in its prompt (for profiling).
    chunk: usize,
}

impl AccelChunk<'_, '_> {
    /// The graph on the accelerator and, at the same time, the shadow work of its input on the
    /// CPU; the shadow results are merged into the graph's outputs when both are done.
    fn run(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let start = Instant::now();
        let shadow = self.npu.layers[layer].shadow(part);
        let pool = &self.npu.shadow_buffers;
        let timed_shadow = || {
            let t0 = Instant::now();
            (shadow.and_then(|s| s.compute(input, pool)), t0.elapsed())
        };
        let (done, (delta, shadow_time)) = rayon::join(|| self.run_graph(layer, part, input, m, outputs), timed_shadow);
        done?;
        if let (Some(s), Some(d)) = (shadow, delta) {
            s.merge(d, outputs, pool);
        }
        if let Some(p) = self.npu.profile.lock().unwrap().as_mut() {
            p.push(PartTiming { chunk: self.chunk, layer, part, rows: self.rows, start, end: Instant::now(), shadow: shadow_time });
        }
        Ok(())
    }

    fn run_graph(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let g = self.npu.graph(layer, part, self.rows)?;
        if m == self.rows {
            return self.npu.accel.execute(&g, input, outputs);
        }
        let k = input.len() / m;
        let mut padded = vec![0f32; self.rows * k];
        padded[..input.len()].copy_from_slice(input);
        let mut bufs: Vec<Vec<f32>> = outputs.iter().map(|o| {
            let n = o.len() / m;
            let mut b = vec![0f32; self.rows * n];
            b[..o.len()].copy_from_slice(o); // residual graphs read their output
            b
        }).collect();
        let mut views: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        self.npu.accel.execute(&g, &padded, &mut views)?;
        for (o, b) in outputs.iter_mut().zip(&bufs) {
            let len = o.len();
            o.copy_from_slice(&b[..len]);
        }
        Ok(())
    }
}

/// Decode executor: the same W8A8 op on the CPU, from the same int8 weights.
struct CpuInt8<'a, 'm> {
    npu: &'a NpuModel<'m>,
}

impl CpuInt8<'_, '_> {
    fn run(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let l = &self.npu.layers[layer];
        let (linears, scale, residual) = l.part(part);
        run_w8a8(self.npu.accel.kernel, input, m, scale, linears, residual, outputs);
        if let Some(s) = l.shadow(part) {
            s.apply(input, outputs, &self.npu.shadow_buffers);
        }
        Ok(())
    }
}

/// Runs one linear group of one layer; both executors are this plus the mapping below.
trait PartRunner {
    fn run(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()>;
}

impl PartRunner for AccelChunk<'_, '_> {
    fn run(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        AccelChunk::run(self, layer, part, input, m, outputs)
    }
}

impl PartRunner for CpuInt8<'_, '_> {
    fn run(&self, layer: usize, part: Part, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        CpuInt8::run(self, layer, part, input, m, outputs)
    }
}

impl<T: PartRunner> LinearExecutor for T {
    fn qkv(&self, layer: usize, h: &[f32], m: usize, q: &mut [f32], k: &mut [f32], v: &mut [f32]) -> Result<()> {
        self.run(layer, Part::Qkv, h, m, &mut [q, k, v])
    }
    fn o_proj_residual(&self, layer: usize, attn: &[f32], m: usize, x: &mut [f32]) -> Result<()> {
        self.run(layer, Part::O, attn, m, &mut [x])
    }
    fn gate_up(&self, layer: usize, h: &[f32], m: usize, gate: &mut [f32], up: &mut [f32]) -> Result<()> {
        self.run(layer, Part::GateUp, h, m, &mut [gate, up])
    }
    fn down_residual(&self, layer: usize, act: &[f32], m: usize, x: &mut [f32]) -> Result<()> {
        self.run(layer, Part::Down, act, m, &mut [x])
    }
}
