//! Causal grouped-query attention over the KV cache, tiled for long prompts (the flash-attention
//! scheme): a task takes `TOKENS_PER_TASK` query tokens of one KV head, all the query heads that
//! share it (rows = tokens x group), and walks the keys in tiles of `KEY_TILE`. Each tile of K
//! and V is read from memory once for all of the task's rows and stays in L2 while they use it;
//! the softmax is online (a running max and sum per row, the output rescaled when the max grows),
//! so no row of scores as long as the context is ever stored. Attending one token at a time
//! instead streamed the whole cache once per token, which made a 2,048-token prompt 0.65x as fast
//! per token as a 512-token one.
//!
//! Cache layout (kv_cache.rs): K transposed per KV head, [n_kv_heads][head_dim][kv_stride], so 16
//! consecutive keys of one dimension are one vector load; V as [n_kv_heads][kv_stride][head_dim].

use rayon::prelude::*;

use super::ops::{exp_fast, exp_minus_simd, lanes_sum, max_of_simd, softcap};
use super::disjoint::DisjointWrites;
use super::simd_level;
#[cfg(target_arch = "x86_64")]
use super::SimdLevel;

mod bf16;
mod int8;
pub use bf16::Bf16Kv;
pub use int8::Int8Kv;

/// How prefill attention multiplies: f32 throughout (the default: AVX-512 FMA, or where the
/// CPU has AMX-BF16 bf16 tiles with each operand split into three bf16 parts, six products
/// that together are as accurate as f32 FMA and 1.4x as fast at 4,096 tokens, `bf16.rs`); bf16
/// products into f32 sums on AMX tiles (`bf16.rs`; f32 where the CPU has no AMX-BF16); or int8
/// products with f32 scales and an f32 softmax (`int8.rs`), 4x the multiply rate of f32 FMA on
/// VNNI CPUs at a measured accuracy cost (README "Long prompts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    /// The precision attention at this head size really multiplies in on this CPU: bf16 runs
    /// the f32 kernels where `bf16_runs` says no.
    pub fn on_this_cpu(self, head_dim: usize) -> Precision {
        if self == Precision::Bf16 && !bf16_runs(head_dim) {
            Precision::F32
        } else {
            self
        }
    }

    /// "f32", "bf16" or "int8".
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// Batches shorter than this attend in f32 whatever the precision: converting the cache costs
/// about as much as attending with one token's rows, so decode stays f32.
pub const INT8_MIN_TOKENS: usize = 16;

/// The cache's copies in the precisions attention multiplies in, kept between calls: each
/// call converts only the slots written since (the cache says which: `forget_from`).
#[derive(Default)]
pub struct KeptKv {
    int8: Int8Kv,
    bf16: Bf16Kv,
}

impl KeptKv {
    /// Slots from `slot` on were (or will be) rewritten.
    pub fn forget_from(&mut self, slot: usize) {
        self.int8.forget_from(slot);
        self.bf16.forget_from(slot);
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.int8.memory_bytes() + self.bf16.memory_bytes()
    }
}


/// Shapes of one causal attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Position of the first query token (number of cached tokens before this batch).
    pub pos0: usize,
    /// Slots per KV head in the cache buffers: a multiple of 16, >= pos0 + tokens - kv_base.
    pub kv_stride: usize,
    /// The position held in slot 0 (a windowed layer's cache drops what no query sees); every
    /// position a query of this batch sees is held.
    pub kv_base: usize,
    /// Sliding-window attention: a query at position p sees keys p + 1 - window ..= p only.
    pub window: Option<usize>,
    /// Scores are q.k times this (usually 1 / sqrt(head_dim)).
    pub scale: f32,
    /// Scores soft-capped as cap * tanh(s / cap) before the softmax.
    pub softcap: Option<f32>,
}

/// Lanes per vector: one 512-bit register of f32.
const LANES: usize = 16;
/// Query tokens per task; with the group's heads they are the rows sharing each K/V tile (and
/// its copy, `tile_scores`). 16 rather than 8: the f32 kernel at the last 512 tokens of a
/// 4,096-token prompt 93-98 -> 82-86 ms per TinyLlama layer (attention_bench, alternating);
/// 32 was no clearer, with half the tasks to share among threads.
const TOKENS_PER_TASK: usize = 16;
/// Keys per tile (a multiple of LANES): K and V tiles of 2 x 256 x head_dim floats (128 KB at
/// head_dim 64) stay in L2 while every row of the task uses them.
const KEY_TILE: usize = 256;
/// Query rows per microkernel pass: each key and value vector loaded serves this many rows.
const ROWS: usize = 4;
/// Query rows per AMX block: two 16-row tiles of `amx::tile_32x32`.
const AMX_ROWS: usize = 32;
/// Floats between the dimensions of a packed key tile: KEY_TILE plus one cache line, so that
/// consecutive dimensions fall in different L1 sets.
const PACKED_PITCH: usize = KEY_TILE + LANES;

/// Causal attention of `q` ([tokens][n_heads * head_dim]) over the cache into `out` (same
/// shape). Slot i of the cache holds position kv_base + i, valid up to pos0 + tokens; query
/// token t sees positions up to pos0 + t (the last `window` of them with a sliding window).
/// Threads split (KV head, token block) tasks.
/// In f32.
pub fn causal_attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    causal_attention_in(Precision::F32, q, k_cache, v_cache, s, out)
}

/// `causal_attention` in a given precision (int8 only for batches of INT8_MIN_TOKENS or more),
/// quantizing the cache afresh.
pub fn causal_attention_in(precision: Precision, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    causal_attention_cached(precision, q, k_cache, v_cache, s, out, &mut KeptKv::default())
}

/// `causal_attention_in` with the cache's int8 or bf16 copy kept in `kept` between calls:
/// each call converts only the slots written since (the caller tells it which, `forget_from`).
pub fn causal_attention_cached(precision: Precision, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32], kept: &mut KeptKv) {
    best_attention(precision, true, q, k_cache, v_cache, s, out, kept)
}

/// `causal_attention_in` on the best SIMD path without AMX tiles (f32: the AVX-512 FMA
/// kernels), for measuring what the tiles gain.
pub fn causal_attention_without_amx(precision: Precision, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    best_attention(precision, false, q, k_cache, v_cache, s, out, &mut KeptKv::default())
}

/// `causal_attention_cached` on the best SIMD path, or the best without AMX (for the tests,
/// which check both against the portable twin).
#[allow(clippy::too_many_arguments)]
fn best_attention(precision: Precision, allow_amx: bool, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32], kept: &mut KeptKv) {
    let level = simd_level();
    #[cfg(target_arch = "x86_64")]
    let vnni = level == SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512bw");
    // AMX where the GEMMs use it (LLM_NPU_INT8 can turn both off), the head size fits and no
    // softcap comes between the scores and their maxima (taken in the AMX epilogue).
    #[cfg(target_arch = "x86_64")]
    let amx = allow_amx && vnni && super::int8_gemm::best_kernel() == super::int8_gemm::Int8Kernel::Amx && int8::amx_fits(s.head_dim) && s.softcap.is_none();
    // bf16 runs on AMX tiles only: where they are missing or not allowed, it is f32.
    let precision = match precision.on_this_cpu(s.head_dim) {
        Precision::Bf16 if !allow_amx => Precision::F32,
        p => p,
    };
    // f32 on AMX-BF16 tiles, its operands split into three bf16 parts (six products: as
    // accurate as f32 FMA, `bf16.rs`), where bf16 attention could run.
    let split_f32 = allow_amx && precision == Precision::F32 && bf16_runs(s.head_dim);
    run(precision, split_f32, q, k_cache, v_cache, s, out, kept, |task, bufs, out| match level {
        // SAFETY: AMX-BF16 and AVX512-BF16 are available (checked above) and head_dim fits.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if task.kv16.is_some() => unsafe { task_avx512_amx_bf16(task, bufs, out) },
        // SAFETY: AMX is available (best_kernel checked), and the CPU has what VNNI needs.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if amx && task.kv8.is_some() => unsafe { task_avx512_amx(task, bufs, out) },
        // SAFETY: the VNNI path is only taken when the CPU has avx512vnni and avx512bw.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if vnni && task.kv8.is_some() => unsafe { task_avx512_vnni(task, bufs, out) },
        // SAFETY: Avx512 is only selected when the CPU has avx512f (and FMA, which it implies).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { task_avx512(task, bufs, out) },
        _ => task.attend::<false, false, false>(bufs, out),
    });
}

/// Whether `Precision::Bf16` runs in bf16 at this head size on this CPU: on AMX tiles where the
/// GEMMs use them (LLM_NPU_INT8 can turn both off), with AVX512-BF16 for the conversions
/// (Sapphire Rapids has both); elsewhere it runs the f32 kernels. Where it does, prefill in
/// `Precision::F32` runs on the same tiles, its operands in three bf16 parts.
pub fn bf16_runs(head_dim: usize) -> bool {
    super::bf16_split::tiles_run() && bf16::fits(head_dim)
}

/// The portable twin of `causal_attention`.
pub fn causal_attention_portable(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    causal_attention_portable_in(Precision::F32, q, k_cache, v_cache, s, out)
}

/// The portable twin of `causal_attention_in`.
pub fn causal_attention_portable_in(precision: Precision, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    portable_attention(precision, q, k_cache, v_cache, s, out, &mut KeptKv::default())
}

/// The portable twin of `causal_attention_cached`.
fn portable_attention(precision: Precision, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32], kept: &mut KeptKv) {
    run(precision, false, q, k_cache, v_cache, s, out, kept, |task, bufs, out| task.attend::<false, false, false>(bufs, out));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn task_avx512(task: Task, bufs: &mut Buffers, out: DisjointWrites) {
    task.attend::<true, false, false>(bufs, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn task_avx512_vnni(task: Task, bufs: &mut Buffers, out: DisjointWrites) {
    task.attend::<true, true, false>(bufs, out)
}

/// Safety: AMX must be available and the head size fit it (`int8::amx_fits`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn task_avx512_amx(task: Task, bufs: &mut Buffers, out: DisjointWrites) {
    task.attend::<true, true, true>(bufs, out)
}

/// Safety: AMX-BF16 and AVX512-BF16 must be available and the head size fit (`bf16::fits`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,fma")]
unsafe fn task_avx512_amx_bf16(task: Task, bufs: &mut Buffers, out: DisjointWrites) {
    task.attend::<true, false, true>(bufs, out)
}


#[allow(clippy::too_many_arguments)]
fn run(precision: Precision, split_f32: bool, q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32], kept: &mut KeptKv, attend: impl Fn(Task, &mut Buffers, DisjointWrites) + Sync) {
    let (hd, row) = (s.head_dim, s.n_heads * s.head_dim);
    assert!(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.kv_stride % LANES == 0, "attention shape {s:?}");
    assert!(q.len() % row.max(1) == 0 && out.len() == q.len());
    let tokens = q.len() / row.max(1);
    if tokens == 0 || hd == 0 {
        return;
    }
    assert!(s.pos0 + tokens - s.kv_base <= s.kv_stride, "the cache holds {} slots, the batch needs {}", s.kv_stride, s.pos0 + tokens - s.kv_base);
    let per_head = hd * s.kv_stride;
    assert!(k_cache.len() >= s.n_kv_heads * per_head && v_cache.len() >= s.n_kv_heads * per_head);
    let blocks = tokens.div_ceil(TOKENS_PER_TASK);
    // Every slot a query of this batch sees, quantized once for all tasks (those not quantized
    // by an earlier call).
    let seen = s.pos0 + tokens - s.kv_base;
    let kv8 = (precision == Precision::Int8 && tokens >= INT8_MIN_TOKENS).then(|| kept.int8.update(k_cache, v_cache, s, seen));
    // bf16 attention multiplies one bf16 part of each operand; f32 on bf16 tiles (`split_f32`)
    // three parts, six products.
    let bf16_parts = match precision {
        Precision::Bf16 => Some(1),
        Precision::F32 if split_f32 => Some(bf16::SPLIT_PARTS),
        _ => None,
    };
    let kv16 = bf16_parts.filter(|_| tokens >= INT8_MIN_TOKENS && bf16::fits(hd)).map(|parts| kept.bf16.update(k_cache, v_cache, s, seen, parts));
    let out_ptr = DisjointWrites::new(out);
    (0..s.n_kv_heads * blocks).into_par_iter().for_each(|i| {
        let (kvh, b) = (i % s.n_kv_heads, i / s.n_kv_heads);
        let t0 = b * TOKENS_PER_TASK;
        let task = Task {
            s,
            q,
            kt: &k_cache[kvh * per_head..(kvh + 1) * per_head],
            v: &v_cache[kvh * per_head..(kvh + 1) * per_head],
            kvh,
            t0,
            t1: (t0 + TOKENS_PER_TASK).min(tokens),
            kv8: kv8.as_ref().map(|kv| kv.head(kvh)),
            kv16: kv16.as_ref().map(|kv| kv.head(kvh)),
            token_of_row: DivideBy::new(s.n_heads / s.n_kv_heads),
        };
        // Each thread's buffers outlive the call: made afresh per rayon split (as
        // `for_each_init` does), their first writes were page faults and zeroing, 3-4% of
        // attention at 4,096 tokens in perf. A task calls no rayon code, so it never re-enters.
        THREAD_BUFFERS.with_borrow_mut(|bufs| attend(task, bufs, out_ptr));
    });
}

thread_local! {
    static THREAD_BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// Per-thread working memory, reused across tasks.
#[derive(Default)]
struct Buffers {
    /// The task's query rows, [rows][head_dim].
    q: Vec<f32>,
    /// The current tile's keys, [head_dim][PACKED_PITCH].
    k: Vec<f32>,
    /// Scores then probabilities of every row over one key tile, [rows][KEY_TILE].
    p: Vec<f32>,
    /// Running max and sum of exponentials per row.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// The int8 and bf16 paths' running sums, per row in 16 lane sums (SIMD adds a vector at
    /// a time), added up into `sum` once at the end rather than per key tile.
    sum_lanes: Vec<[f32; LANES]>,
    /// Unnormalized output per row, [rows][head_dim].
    o: Vec<f32>,
    /// The int8 path's query rows and probabilities, with their scales (`int8.rs`).
    int8: int8::Buffers,
    /// The bf16 path's query rows, scores, probabilities and outputs (`bf16.rs`).
    bf16: bf16::Buffers,
}

impl Buffers {
    /// Each row's running sum from its lane sums.
    fn finish_sums(&mut self) {
        for (s, lanes) in self.sum.iter_mut().zip(&self.sum_lanes) {
            *s = lanes_sum(*lanes);
        }
    }
}

/// Query tokens t0..t1 of one KV head.
#[derive(Clone, Copy)]
struct Task<'a> {
    s: AttnShape,
    q: &'a [f32],
    /// This KV head's keys, [head_dim][kv_stride], and values, [kv_stride][head_dim].
    kt: &'a [f32],
    v: &'a [f32],
    kvh: usize,
    t0: usize,
    t1: usize,
    /// This KV head's int8 keys and values when attention runs in int8.
    kv8: Option<int8::HeadKv<'a>>,
    /// This KV head's bf16 keys and values when attention runs in bf16.
    kv16: Option<bf16::HeadKv<'a>>,
    /// Row -> token: a division by the group per call of `keys_of`, which runs several times
    /// per row and key tile.
    token_of_row: DivideBy,
}

/// Division by a fixed divisor without a `div` instruction (which `keys_of` spent 3% of int8
/// attention on): Lemire's exact method, n / d = the high 64 bits of (2^64 / d + 1) x n for
/// every n below 2^32.
#[derive(Clone, Copy)]
struct DivideBy {
    magic: u128,
}

impl DivideBy {
    fn new(d: usize) -> Self {
        assert!(d > 0 && d <= u32::MAX as usize);
        DivideBy { magic: (1u128 << 64) / d as u128 + 1 }
    }

    #[inline(always)]
    fn of(self, n: usize) -> usize {
        debug_assert!(n <= u32::MAX as usize);
        ((self.magic * n as u128) >> 64) as usize
    }
}

impl Task<'_> {
    fn group(&self) -> usize {
        self.s.n_heads / self.s.n_kv_heads
    }

    /// The slots query row r sees: first..end. Rows are token-major: r = (t - t0) * group + g.
    #[inline(always)]
    fn keys_of(&self, r: usize) -> (usize, usize) {
        let p = self.s.pos0 + self.t0 + self.token_of_row.of(r);
        let first = self.s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        (first.saturating_sub(self.s.kv_base), p + 1 - self.s.kv_base)
    }

    #[inline(always)]
    fn attend<const FMA: bool, const VNNI: bool, const AMX: bool>(&self, b: &mut Buffers, out: DisjointWrites) {
        let (hd, group) = (self.s.head_dim, self.group());
        let rows = (self.t1 - self.t0) * group;
        let row_len = self.s.n_heads * hd;
        b.q.clear();
        for t in self.t0..self.t1 {
            let h0 = self.kvh * group;
            b.q.extend_from_slice(&self.q[t * row_len + h0 * hd..t * row_len + (h0 + group) * hd]);
        }
        b.p.resize(rows * KEY_TILE, 0.0);
        b.max.clear();
        b.max.resize(rows, f32::NEG_INFINITY);
        b.sum.clear();
        b.sum.resize(rows, 0.0);
        b.sum_lanes.clear();
        b.sum_lanes.resize(rows, [0.0; LANES]);
        b.o.clear();
        b.o.resize(rows * hd, 0.0);
        // The keys any row sees, from the first row's window start to the last row's position
        // (from a whole block of the bf16 copy's 32 keys: `bf16::key_index`).
        let align = if self.kv16.is_some() { 2 * LANES } else { LANES };
        let first = self.keys_of(0).0 / align * align;
        let end = self.keys_of(rows - 1).1;
        if let Some(kv) = &self.kv8 {
            b.int8.start_task(&b.q, rows, hd, self.s.scale);
            for j0 in (first..end).step_by(KEY_TILE) {
                let j1 = (j0 + KEY_TILE).min(end);
                #[cfg(target_arch = "x86_64")]
                if AMX {
                    // SAFETY: AMX is only set by task_avx512_amx, whose caller checked that
                    // AMX is available and fits head_dim; start_task readied the buffers.
                    unsafe { self.tile_amx::<VNNI>(kv, b, rows, j0, j1) };
                    continue;
                }
                self.tile_scores_i8::<VNNI>(kv, b, rows, j0, j1);
                self.tile_softmax_i8::<VNNI>(kv, b, 0..rows, j0, j1, None);
                self.tile_values_i8::<VNNI>(kv, b, rows, j0, j1);
            }
            b.finish_sums();
        } else if let Some(kv) = &self.kv16 {
            b.bf16.start_task(&b.q, rows, hd, self.s.scale, kv.parts());
            for j0 in (first..end).step_by(KEY_TILE) {
                let j1 = (j0 + KEY_TILE).min(end);
                // SAFETY: AMX is only set by task_avx512_amx_bf16, whose caller checked AMX-BF16,
                // AVX512-BF16 and the head size; without it the portable code runs.
                unsafe { self.tile_bf16::<AMX>(kv, b, rows, j0, j1) };
            }
            b.o.copy_from_slice(b.bf16.outputs(rows, hd));
            b.finish_sums();
        } else {
            for j0 in (first..end).step_by(KEY_TILE) {
                let j1 = (j0 + KEY_TILE).min(end);
                self.tile_scores::<FMA>(b, rows, j0, j1);
                self.tile_softmax::<FMA>(b, rows, j0, j1);
                self.tile_values::<FMA>(b, rows, j0, j1);
            }
        }
        for r in 0..rows {
            let (t, h) = (self.t0 + r / group, self.kvh * group + r % group);
            let inv = 1.0 / b.sum[r];
            // SAFETY: row (t, h) of `out` is written by this task alone (its tokens, its KV
            // head's query heads); run() checked that out holds every token's n_heads * head_dim
            // values.
            let dst = unsafe { out.slice(t * row_len + h * hd, hd) };
            for (d, &o) in dst.iter_mut().zip(&b.o[r * hd..(r + 1) * hd]) {
                *d = o * inv;
            }
        }
    }

    /// Row r's slots within the tile j0..j1 (empty when it sees none there).
    #[inline(always)]
    fn seen_in(&self, r: usize, j0: usize, j1: usize) -> (usize, usize) {
        let (a, e) = self.keys_of(r);
        (a.clamp(j0, j1), e.clamp(j0, j1))
    }

    /// The 16-key blocks of the tile any of rows r..r + n sees: (first slot, block count).
    fn blocks_seen(&self, r: usize, n: usize, j0: usize, j1: usize) -> (usize, usize) {
        let (a, _) = self.seen_in(r, j0, j1);
        let (_, e) = self.seen_in(r + n - 1, j0, j1);
        let lo = a / LANES * LANES;
        (lo, if e > a { (e - lo).div_ceil(LANES) } else { 0 })
    }

    /// Scores of every row over the tile's keys (j0 a multiple of LANES) into b.p (row r at
    /// r * KEY_TILE, slot j at j - j0). Key blocks are the outer loop, so each block of K (hd x
    /// 64 floats) stays in L1 while all the task's rows use it.
    #[inline(always)]
    fn tile_scores<const FMA: bool>(&self, b: &mut Buffers, rows: usize, j0: usize, j1: usize) {
        let (hd, scale) = (self.s.head_dim, self.s.scale);
        let blocks = (j1 - j0).div_ceil(LANES);
        // The tile's keys copied out of the cache: its rows (one per dimension) lie kv_stride
        // floats apart, a power of two for most contexts, which maps every row of a block to the
        // same L1 sets; at PACKED_PITCH they spread over all of them.
        let width = blocks * LANES;
        b.k.resize(hd * PACKED_PITCH, 0.0);
        for d in 0..hd {
            let from = d * self.s.kv_stride + j0;
            b.k[d * PACKED_PITCH..d * PACKED_PITCH + width].copy_from_slice(&self.kt[from..from + width]);
        }
        let (kt, stride) = (&b.k[..], PACKED_PITCH);
        self.for_score_blocks(rows, j0, j1, |r, take, n, at| {
            let (qs, out) = (&b.q[r * hd..(r + take) * hd], &mut b.p[r * KEY_TILE + at..]);
            match (take, n) {
                (ROWS, 4) => scores::<ROWS, 4, FMA>(qs, hd, kt, stride, at, scale, out),
                (ROWS, _) => scores::<ROWS, 1, FMA>(qs, hd, kt, stride, at, scale, out),
                (_, 4) => scores::<1, 4, FMA>(qs, hd, kt, stride, at, scale, out),
                _ => scores::<1, 1, FMA>(qs, hd, kt, stride, at, scale, out),
            }
        });
    }

    /// Calls `kernel(r, take, n, at)` for every group of `take` rows (ROWS or 1) and `n` 16-key
    /// blocks (4 or 1) of the tile j0..j1 that any of those rows sees; `at` is the blocks' first
    /// slot within the tile. Rows are in position order, so later groups see more keys.
    #[inline(always)]
    fn for_score_blocks(&self, rows: usize, j0: usize, j1: usize, mut kernel: impl FnMut(usize, usize, usize, usize)) {
        let blocks = (j1 - j0).div_ceil(LANES);
        let mut jb = 0;
        while jb < blocks {
            let n = if jb + 4 <= blocks { 4 } else { 1 };
            let (j, at) = (j0 + jb * LANES, jb * LANES);
            let mut r = 0;
            while r < rows {
                let take = if r + ROWS <= rows { ROWS } else { 1 };
                let (lo, count) = self.blocks_seen(r, take, j0, j1);
                if count > 0 && lo <= j + (n - 1) * LANES && j < lo + count * LANES {
                    kernel(r, take, n, at);
                }
                r += take;
            }
            jb += n;
        }
    }

    /// Each row's scores over the tile become probabilities against its running max (0 for
    /// keys it does not see); its running sum and output are rescaled when the max grows.
    #[inline(always)]
    fn tile_softmax<const FMA: bool>(&self, b: &mut Buffers, rows: usize, j0: usize, j1: usize) {
        let width = (j1 - j0).next_multiple_of(LANES);
        for r in 0..rows {
            let row = &mut b.p[r * KEY_TILE..r * KEY_TILE + width];
            match self.new_max::<FMA>(r, j0, j1, row, &mut b.max[r], &mut b.sum[r], &mut b.o) {
                Some((a, e, max)) => {
                    row[..a - j0].fill(0.0);
                    row[e - j0..].fill(0.0);
                    b.sum[r] += exp_minus_simd::<FMA>(&mut row[a - j0..e - j0], max);
                }
                None => row.fill(0.0),
            }
        }
    }

    /// Row r's scores over the tile (`row`, slot j at j - j0) softcapped where the model says
    /// so, and its running max raised to theirs (`raise_max`): returns the slots it sees (a..e)
    /// and the new max, None if it sees none.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn new_max<const SIMD: bool>(&self, r: usize, j0: usize, j1: usize, row: &mut [f32], max: &mut f32, sum: &mut f32, o: &mut [f32]) -> Option<(usize, usize, f32)> {
        let (a, e) = self.seen_in(r, j0, j1);
        if a >= e {
            return None;
        }
        let seen = &mut row[a - j0..e - j0];
        if let Some(cap) = self.s.softcap {
            softcap(seen, cap);
        }
        Some((a, e, self.raise_max(r, max_of_simd::<SIMD>(seen), exp_fast, max, std::slice::from_mut(sum), o)))
    }

    /// Row r's running max raised to `tile_max`, its running sum (one value, or the int8 and bf16
    /// paths' lane sums) and output (row r of `o`) rescaled to it by `exp` of the difference (the
    /// exponential of the scores' base); returns the new max.
    #[inline(always)]
    fn raise_max(&self, r: usize, tile_max: f32, exp: impl Fn(f32) -> f32, max: &mut f32, sum: &mut [f32], o: &mut [f32]) -> f32 {
        let hd = self.s.head_dim;
        let new_max = max.max(tile_max);
        // Skip the exponential's latency when the max holds, as it mostly does.
        let alpha = if new_max == *max { 1.0 } else { exp(*max - new_max) };
        *max = new_max;
        if alpha != 1.0 {
            sum.iter_mut().for_each(|x| *x *= alpha);
            o[r * hd..(r + 1) * hd].iter_mut().for_each(|x| *x *= alpha);
        }
        new_max
    }

    /// o[r] += sum_j p[r][j] v_j over the tile, 64 keys at a time as the outer loop (their
    /// values stay in L1 while every row group uses them).
    #[inline(always)]
    fn tile_values<const FMA: bool>(&self, b: &mut Buffers, rows: usize, j0: usize, j1: usize) {
        const KEYS: usize = 4 * LANES;
        let hd = self.s.head_dim;
        let dim_blocks = hd / LANES;
        for k0 in (j0..j1).step_by(KEYS) {
            let k1 = (k0 + KEYS).min(j1);
            let vs = &self.v[k0 * hd..k1 * hd];
            let mut r = 0;
            while r < rows {
                let take = if r + ROWS <= rows { ROWS } else { 1 };
                let (lo, count) = self.blocks_seen(r, take, j0, j1);
                if count > 0 && lo < k1 && k0 < lo + count * LANES {
                    let p = &b.p[r * KEY_TILE + (k0 - j0)..];
                    let o = &mut b.o[r * hd..(r + take) * hd];
                    let mut db = 0;
                    while db < dim_blocks {
                        let d = if db + 4 <= dim_blocks { 4 } else { 1 };
                        match (take, d) {
                            (ROWS, 4) => values::<ROWS, 4, FMA>(p, vs, hd, db, o),
                            (ROWS, _) => values::<ROWS, 1, FMA>(p, vs, hd, db, o),
                            (_, 4) => values::<1, 4, FMA>(p, vs, hd, db, o),
                            _ => values::<1, 1, FMA>(p, vs, hd, db, o),
                        }
                        db += d;
                    }
                    for i in 0..take {
                        let probs = &p[i * KEY_TILE..i * KEY_TILE + (k1 - k0)];
                        for dd in dim_blocks * LANES..hd {
                            o[i * hd + dd] += probs.iter().zip(vs.chunks_exact(hd)).map(|(&pj, vj)| pj * vj[dd]).sum::<f32>();
                        }
                    }
                }
                r += take;
            }
        }
    }
}

/// a * b + c, fused when the caller's target has FMA (then it is one instruction; without it
/// `mul_add` would be a slow software call, so the portable build multiplies and adds).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// acc[i][b] += a(i) * x[b] for R rows and B 16-lane blocks: the portable microkernels' step.
#[inline(always)]
fn rank1_update<const R: usize, const B: usize, const FMA: bool>(acc: &mut [[[f32; LANES]; B]; R], a: impl Fn(usize) -> f32, x: &[&[f32; LANES]; B]) {
    for (i, acc_i) in acc.iter_mut().enumerate() {
        let ai = a(i);
        for (acc_ib, xb) in acc_i.iter_mut().zip(x) {
            for l in 0..LANES {
                acc_ib[l] = madd::<FMA>(ai, xb[l], acc_ib[l]);
            }
        }
    }
}

/// Scores of R query rows (`qs`, [R][hd]) for the N 16-key blocks from slot `j` on, times
/// `scale`, into `out` (row i at i * KEY_TILE): one load of 16 keys per dimension feeds R rows.
#[inline(always)]
fn scores<const R: usize, const N: usize, const FMA: bool>(qs: &[f32], hd: usize, kt: &[f32], stride: usize, j: usize, scale: f32, out: &mut [f32]) {
    assert!(qs.len() >= R * hd && (hd == 0 || (hd - 1) * stride + j + N * LANES <= kt.len()) && j + N * LANES <= stride);
    assert!(out.len() >= (R - 1) * KEY_TILE + N * LANES);
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only set on the AVX-512 path; the asserts above bound every access.
        unsafe { scores_avx512::<R, N>(qs, hd, kt, stride, j, scale, out) };
        return;
    }
    let mut acc = [[[0f32; LANES]; N]; R];
    for d in 0..hd {
        let k: [&[f32; LANES]; N] = std::array::from_fn(|b| {
            let at = d * stride + j + b * LANES;
            kt[at..at + LANES].try_into().unwrap()
        });
        rank1_update::<R, N, FMA>(&mut acc, |i| qs[i * hd + d], &k);
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (b, acc_ib) in acc_i.iter().enumerate() {
            let at = i * KEY_TILE + b * LANES;
            for l in 0..LANES {
                out[at + l] = acc_ib[l] * scale;
            }
        }
    }
}

/// `rank1_update` in registers: acc[i][b] += a(i) * (16 floats at x + 16 b).
/// Safety: x points to B * 16 readable floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rank1_update_avx512<const R: usize, const B: usize>(acc: &mut [[std::arch::x86_64::__m512; B]; R], a: impl Fn(usize) -> f32, x: *const f32) {
    use std::arch::x86_64::*;
    let mut v = [_mm512_setzero_ps(); B];
    for (b, vb) in v.iter_mut().enumerate() {
        *vb = _mm512_loadu_ps(x.add(b * LANES));
    }
    for (i, acc_i) in acc.iter_mut().enumerate() {
        let ai = _mm512_set1_ps(a(i));
        for b in 0..B {
            acc_i[b] = _mm512_fmadd_ps(ai, v[b], acc_i[b]);
        }
    }
}

/// `scores` with the accumulators held in registers (the array form spills them to the stack
/// on every step).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512<const R: usize, const N: usize>(qs: &[f32], hd: usize, kt: &[f32], stride: usize, j: usize, scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let (kp, qp) = (kt.as_ptr().add(j), qs.as_ptr());
    for d in 0..hd {
        rank1_update_avx512::<R, N>(&mut acc, |i| *qp.add(i * hd + d), kp.add(d * stride));
    }
    let scale = _mm512_set1_ps(scale);
    for (i, acc_i) in acc.iter().enumerate() {
        for (b, &a) in acc_i.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(i * KEY_TILE + b * LANES), _mm512_mul_ps(a, scale));
        }
    }
}

/// Dimension blocks db..db+D (16 each) of o[i] += sum_j p[i][j] v_j for R rows over the tile's
/// values `vs` ([keys][hd]): each value vector loaded once serves R rows.
#[inline(always)]
fn values<const R: usize, const D: usize, const FMA: bool>(p: &[f32], vs: &[f32], hd: usize, db: usize, o: &mut [f32]) {
    let keys = vs.len() / hd.max(1);
    assert!(p.len() >= (R - 1) * KEY_TILE + keys && o.len() >= R * hd && (db + D) * LANES <= hd);
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only set on the AVX-512 path; the assert above bounds every access.
        unsafe { values_avx512::<R, D>(p, vs, keys, hd, db, o) };
        return;
    }
    let mut acc: [[[f32; LANES]; D]; R] = std::array::from_fn(|i| std::array::from_fn(|c| o[i * hd + (db + c) * LANES..][..LANES].try_into().unwrap()));
    for (j, vj) in vs.chunks_exact(hd).enumerate() {
        let v: [&[f32; LANES]; D] = std::array::from_fn(|c| vj[(db + c) * LANES..(db + c + 1) * LANES].try_into().unwrap());
        rank1_update::<R, D, FMA>(&mut acc, |i| p[i * KEY_TILE + j], &v);
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (c, acc_ic) in acc_i.iter().enumerate() {
            o[i * hd + (db + c) * LANES..][..LANES].copy_from_slice(acc_ic);
        }
    }
}

/// `values` with the accumulators held in registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values_avx512<const R: usize, const D: usize>(p: &[f32], vs: &[f32], keys: usize, hd: usize, db: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let op = o.as_mut_ptr().add(db * LANES);
    let mut acc = [[_mm512_setzero_ps(); D]; R];
    for (i, acc_i) in acc.iter_mut().enumerate() {
        for (c, a) in acc_i.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(op.add(i * hd + c * LANES));
        }
    }
    let (vp, pp) = (vs.as_ptr().add(db * LANES), p.as_ptr());
    for j in 0..keys {
        rank1_update_avx512::<R, D>(&mut acc, |i| *pp.add(i * KEY_TILE + j), vp.add(j * hd));
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (c, &a) in acc_i.iter().enumerate() {
            _mm512_storeu_ps(op.add(i * hd + c * LANES), a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divide_by_matches_integer_division() {
        for d in (1..=70).chain([96, 127, 128, 1000, 65_537, u32::MAX as usize]) {
            let by = DivideBy::new(d);
            let edges = [u32::MAX as usize, u32::MAX as usize - 1, d * 1000 - 1, d * 1000, d * 1000 + 1];
            for n in (0..5000).chain(edges.into_iter().filter(|&n| n <= u32::MAX as usize)) {
                assert_eq!(by.of(n), n / d, "{n} / {d}");
            }
        }
    }

    type Kernel = fn(Precision, &[f32], &[f32], &[f32], AttnShape, &mut [f32]);

    /// Deterministic test values spread over -1..1.
    fn val(i: usize) -> f32 {
        ((i * 7919 % 1000) as f32 / 500.0) - 1.0
    }

    /// A prompt from position 0 in a cache of `stride` slots, head_dim 64's scale.
    fn prompt_shape(n_heads: usize, n_kv_heads: usize, hd: usize, stride: usize) -> AttnShape {
        AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0: 0, kv_stride: stride, kv_base: 0, window: None, scale: 0.125, softcap: None }
    }

    /// The precision tests' cases: each (head_dim, window, pos0, tokens) with 8 query heads on
    /// 2 KV heads, 8 on 1 and 6 on 2; keys and queries in -2..2, values in -1..1. Calls
    /// `check(case, head_dim, run)`, where `run(kernel, precision)` is that kernel's output.
    fn for_each_case(cases: &[(usize, Option<usize>, usize, usize)], mut check: impl FnMut(&str, usize, &dyn Fn(Kernel, Precision) -> Vec<f32>)) {
        for (&(hd, window, pos0, tokens), (n_heads, n_kv_heads)) in cases.iter().flat_map(|c| [(8, 2), (8, 1), (6, 2)].map(|h| (c, h))) {
            let stride = (pos0 + tokens).next_multiple_of(LANES);
            let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window, scale: 1.0 / (hd as f32).sqrt(), softcap: None };
            let k: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| 2.0 * val(i)).collect();
            let v: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| val(i + 13)).collect();
            let q: Vec<f32> = (0..tokens * n_heads * hd).map(|i| 2.0 * val(i + 101)).collect();
            let run = |f: Kernel, p| {
                let mut o = vec![f32::NAN; q.len()];
                f(p, &q, &k, &v, s, &mut o);
                o
            };
            check(&format!("hd {hd} {window:?} {pos0}+{tokens}, {n_heads} heads on {n_kv_heads}"), hd, &run);
        }
    }

    #[test]
    fn int8_attention_equals_its_portable_twin_and_stays_near_f32() {
        // Lengths crossing KEY_TILE and TOKENS_PER_TASK, windows starting mid-tile, head sizes
        // that are and are not multiples of 16 (the SIMD values kernel) and of 4 (key groups).
        // Groups of 4, 8 and 3 query heads per KV head: tasks of 32, 64 and 24 rows (fewer at
        // the end), whole and partial AMX blocks.
        let cases = [(64, None, 700usize, 37usize), (64, Some(300), 900, 20), (64, None, 0, 600), (80, None, 100, 33), (8, None, 5, 40), (6, Some(9), 30, 17)];
        for_each_case(&cases, |case, _, run| {
            let (best, portable) = (run(causal_attention_in, Precision::Int8), run(causal_attention_portable_in, Precision::Int8));
            let without_amx = run(|p, q, k, v, s, o| best_attention(p, false, q, k, v, s, o, &mut KeptKv::default()), Precision::Int8);
            let exact = run(causal_attention_portable_in, Precision::F32);
            assert!(best.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{case}: best SIMD and portable int8 differ");
            assert!(without_amx.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{case}: SIMD without AMX and portable int8 differ");
            // Outputs are averages of values in -1..1: int8 keys, queries, values and
            // probabilities leave them within 0.01 here (0.0010-0.0095 seen).
            let worst = best.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.02, "{case}: int8 off f32 by {worst}");
            assert!(worst > 0.0, "{case}: the int8 path did not run");
        });
    }

    #[test]
    fn bf16_attention_matches_its_portable_twin_and_stays_near_f32() {
        // As the int8 test's cases, with head sizes the tiles take (32, 64, 96) and one they do
        // not (80: f32 on every path). Where the CPU has no AMX-BF16 the best path is f32.
        let cases = [(64, None, 700usize, 37usize), (64, Some(300), 900, 20), (64, None, 0, 600), (32, None, 100, 33), (96, Some(40), 60, 70), (80, None, 100, 33)];
        for_each_case(&cases, |case, hd, run| {
            let (best, portable) = (run(causal_attention_in, Precision::Bf16), run(causal_attention_portable_in, Precision::Bf16));
            let (f32_best, exact) = (run(causal_attention_in, Precision::F32), run(causal_attention_portable_in, Precision::F32));
            let off = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if !bf16::fits(hd) {
                assert!(best == f32_best && portable == exact, "{case}: a head size the tiles do not take must run in f32");
                return;
            }
            if bf16_runs(hd) {
                // The same products and exponentials; AMX's f32 sums of the products differ
                // from sequential rounding in the last bits, which can move a probability
                // across a bf16 rounding step (1.3e-4 at most seen in the outputs, most cases
                // 1e-7).
                assert!(off(&best, &portable) < 5e-4, "{case}: AMX bf16 and its portable twin differ by {}", off(&best, &portable));
            } else {
                assert!(best == f32_best, "{case}: without AMX-BF16 bf16 must run the f32 kernels");
            }
            // Outputs are averages of values in -1..1; bf16 keeps 8 significant bits (0.0003-0.0039
            // seen, int8 0.0014-0.0106 on the same cases).
            let worst = off(&portable, &exact);
            assert!(worst > 0.0 && worst < 0.01, "{case}: bf16 off f32 by {worst}");
            assert!(off(&best, &exact) < 0.01, "{case}: best bf16 off f32 by {}", off(&best, &exact));
        });
    }

    #[test]
    fn f32_attention_on_bf16_tiles_is_as_accurate_as_f32_fma() {
        // Where the CPU has AMX-BF16, f32 attention runs on bf16 tiles with its operands split
        // into three parts (six products): its error against f64 must be of f32 FMA's size, and
        // its portable twin must agree with it. Keys and queries in -4..4 peak the softmax.
        let cases = [(64, None, 700usize, 37usize), (64, Some(300), 900, 20), (64, None, 0, 300), (32, None, 100, 33), (96, Some(40), 60, 70)];
        for (&(hd, window, pos0, tokens), (n_heads, n_kv_heads)) in cases.iter().flat_map(|c| [(8, 2), (6, 2)].map(|h| (c, h))) {
            let case = format!("hd {hd} {window:?} {pos0}+{tokens}, {n_heads} heads on {n_kv_heads}");
            let stride = (pos0 + tokens).next_multiple_of(LANES);
            let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window, scale: 1.0 / (hd as f32).sqrt(), softcap: None };
            let k: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| 4.0 * val(i) + 1e-4 * val(i + 7)).collect();
            let v: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| val(i + 13) + 1e-4 * val(i + 3)).collect();
            let q: Vec<f32> = (0..tokens * n_heads * hd).map(|i| 4.0 * val(i + 101) + 1e-4 * val(i + 5)).collect();
            let exact: Vec<f64> = crate::kernels::properties::attention_by_definition(&q, &k, &v, s, tokens).into_iter().map(|(x, _)| x).collect();
            let off = |x: &[f32]| x.iter().zip(&exact).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
            let with = |split: bool, portable: bool| {
                let mut o = vec![f32::NAN; q.len()];
                if portable {
                    run(Precision::F32, split, &q, &k, &v, s, &mut o, &mut KeptKv::default(), |task, bufs, out| task.attend::<false, false, false>(bufs, out));
                } else {
                    best_attention(Precision::F32, split, &q, &k, &v, s, &mut o, &mut KeptKv::default());
                }
                o
            };
            let (fma, split_portable) = (with(false, false), with(true, true));
            let (fma_off, portable_off) = (off(&fma), off(&split_portable));
            // Seen: f32 FMA 0.6-1.5e-6 off f64 on these outputs (within -1..1), the split path
            // 2.2-6.7e-7 on AMX and in its portable twin (six products leave out terms below
            // 2^-24 of each, and a tile product's 32 terms are summed before they join the
            // rest; the FMA kernel adds all head_dim terms one by one into one sum).
            assert!(fma_off < 1e-5, "{case}: f32 FMA off f64 by {fma_off:e}");
            assert!(portable_off < 2.0 * fma_off.max(1e-7), "{case}: split bf16 (portable) off f64 by {portable_off:e}, f32 FMA by {fma_off:e}");
            if bf16_runs(hd) {
                let best = with(true, false);
                let mut default = vec![f32::NAN; q.len()];
                causal_attention(&q, &k, &v, s, &mut default);
                assert!(default == best, "{case}: f32 attention must take the bf16 tiles where they run");
                let best_off = off(&best);
                assert!(best_off < 2.0 * fma_off.max(1e-7), "{case}: split bf16 on AMX off f64 by {best_off:e}, f32 FMA by {fma_off:e}");
                let twins = best.iter().zip(&split_portable).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(twins < 1e-6, "{case}: split bf16 on AMX and its portable twin differ by {twins:e}");
            } else {
                eprintln!("SKIPPED (AMX part): no AMX-BF16 on this CPU");
            }
        }
    }

    #[test]
    fn bf16_attention_raises_its_lazy_max_when_scores_jump() {
        // Dimension 0 of every key holds 256 x its key tile's index and every query 1 there, so
        // each tile's scores pass the tile before's by 46 in base 2 (more than the lazy max's
        // headroom) and the fourth's pass the first's by 138: exponentials left on a stale
        // reference would overflow f32 (NaN outputs). The rest are small values, as above.
        let (n_heads, n_kv_heads, hd, tokens) = (4, 2, 64, 1000usize);
        let stride = tokens.next_multiple_of(LANES);
        let s = prompt_shape(n_heads, n_kv_heads, hd, stride);
        let mut k: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| 0.25 * val(i)).collect();
        for (h, j) in (0..n_kv_heads).flat_map(|h| (0..stride).map(move |j| (h, j))) {
            k[h * hd * stride + j] = 256.0 * (j / KEY_TILE) as f32;
        }
        let v: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| val(i + 13)).collect();
        let mut q: Vec<f32> = (0..tokens * n_heads * hd).map(|i| 0.25 * val(i + 101)).collect();
        q.iter_mut().step_by(hd).for_each(|x| *x = 1.0);
        let run = |f: Kernel, p| {
            let mut o = vec![f32::NAN; q.len()];
            f(p, &q, &k, &v, s, &mut o);
            o
        };
        let exact = run(causal_attention_portable_in, Precision::F32);
        for (name, got) in [("best", run(causal_attention_in, Precision::Bf16)), ("portable", run(causal_attention_portable_in, Precision::Bf16))] {
            let worst = got.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.01, "{name} bf16 off f32 by {worst} with jumping scores");
        }
    }

    #[test]
    fn bf16_copy_kept_between_chunks_equals_a_fresh_one_and_forgets_rewritten_slots() {
        // A prompt in chunks through a kept bf16 copy gives the bits of a copy converted afresh
        // for each call; after the cache goes back and takes other tokens, too.
        let (n_heads, n_kv_heads, hd, stride) = (8, 2, 64, 320);
        let s = |pos0| AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window: None, scale: 0.125, softcap: None };
        let (mut k, mut v) = (vec![0f32; n_kv_heads * hd * stride], vec![0f32; n_kv_heads * hd * stride]);
        let mut kept = KeptKv::default();
        for (pos0, n, seed) in [(0, 100, 0), (100, 60, 0), (160, 140, 0), (100, 200, 55_555)] {
            for h in 0..n_kv_heads {
                for p in pos0..pos0 + n {
                    for d in 0..hd {
                        k[(h * hd + d) * stride + p] = 2.0 * val(seed + p * 131 + h * hd + d);
                        v[(h * stride + p) * hd + d] = val(seed + p * 137 + h * hd + d + 7);
                    }
                }
            }
            let q: Vec<f32> = (0..n * n_heads * hd).map(|i| 2.0 * val(seed + pos0 * 4099 + i + 101)).collect();
            let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            kept.forget_from(pos0);
            causal_attention_cached(Precision::Bf16, &q, &k, &v, s(pos0), &mut a, &mut kept);
            causal_attention_in(Precision::Bf16, &q, &k, &v, s(pos0), &mut b);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "chunk at {pos0} (seed {seed}): the kept copy differs from a fresh one");
        }
    }

    #[test]
    fn int8_copy_kept_between_chunks_matches_its_twin_and_forgets_rewritten_slots() {
        // A prompt in chunks through a kept int8 copy on the best path and another on the
        // portable one: the same bits, near f32. Then the cache goes back to the first chunk's
        // end and takes other tokens: the copy told so gives the bits of a copy that only ever
        // saw those (a stale slot would differ).
        let (n_heads, n_kv_heads, hd, stride) = (8, 2, 64, 320);
        let s = |pos0| AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window: None, scale: 0.125, softcap: None };
        // Position p's key and value rows ([n_kv_heads * hd]) and query row, from a seed.
        let write = |k: &mut [f32], v: &mut [f32], p: usize, seed: usize| {
            for h in 0..n_kv_heads {
                for d in 0..hd {
                    k[(h * hd + d) * stride + p] = 2.0 * val(seed + p * 131 + h * hd + d) + if d == 5 { 3.0 } else { 0.0 };
                    v[(h * stride + p) * hd + d] = val(seed + p * 137 + h * hd + d + 7);
                }
            }
        };
        let queries = |pos0: usize, n: usize| -> Vec<f32> { (0..n * n_heads * hd).map(|i| 2.0 * val(pos0 * 4099 + i + 101)).collect() };
        let (mut k, mut v) = (vec![0f32; n_kv_heads * hd * stride], vec![0f32; n_kv_heads * hd * stride]);
        let (mut kept, mut kept_portable) = (KeptKv::default(), KeptKv::default());
        // Writes chunk pos0..pos0+n (seed) as KvCache::append does, attends it through `copy`.
        let chunk = |k: &mut Vec<f32>, v: &mut Vec<f32>, copies: &mut [&mut KeptKv], pos0: usize, n: usize, seed: usize| -> Vec<Vec<f32>> {
            for p in pos0..pos0 + n {
                write(k, v, p, seed);
            }
            let q = queries(pos0, n);
            copies
                .iter_mut()
                .enumerate()
                .map(|(i, copy)| {
                    copy.forget_from(pos0);
                    let mut o = vec![f32::NAN; q.len()];
                    if i == 1 {
                        portable_attention(Precision::Int8, &q, k, v, s(pos0), &mut o, copy);
                    } else {
                        causal_attention_cached(Precision::Int8, &q, k, v, s(pos0), &mut o, copy);
                    }
                    o
                })
                .collect()
        };
        for (pos0, n) in [(0, 100), (100, 60), (160, 140)] {
            let outs = chunk(&mut k, &mut v, &mut [&mut kept, &mut kept_portable], pos0, n, 0);
            assert!(outs[0].iter().zip(&outs[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "chunk at {pos0}: kept copies differ between the best path and the portable one");
            let mut exact = vec![0f32; outs[0].len()];
            causal_attention_portable(&queries(pos0, n), &k, &v, s(pos0), &mut exact);
            let worst = outs[0].iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst > 0.0 && worst < 0.02, "chunk at {pos0}: int8 off f32 by {worst}");
        }
        // Back to position 100, other tokens: the kept copy against a new one fed the same.
        let rewritten = chunk(&mut k, &mut v, &mut [&mut kept], 100, 200, 55_555).remove(0);
        let mut fresh = KeptKv::default();
        let (mut k2, mut v2) = (k.clone(), v.clone());
        chunk(&mut k2, &mut v2, &mut [&mut fresh], 0, 100, 0);
        let want = chunk(&mut k2, &mut v2, &mut [&mut fresh], 100, 200, 55_555).remove(0);
        assert!(rewritten.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "the kept copy did not forget the rewritten slots");
    }

    #[test]
    fn int8_keys_lose_nothing_to_an_offset_every_key_shares() {
        // Trained models' keys carry large offsets in a few dimensions, the same for every slot.
        // They move each row's scores by one amount, so int8 attention must not spend its
        // resolution on them: the result stays as close to f32 as without the offset.
        let (n_heads, n_kv_heads, hd, tokens) = (4, 1, 64, 100usize);
        let stride = tokens.next_multiple_of(LANES);
        let s = prompt_shape(n_heads, n_kv_heads, hd, stride);
        let v: Vec<f32> = (0..stride * hd).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..tokens * n_heads * hd).map(|i| 2.0 * val(i + 101)).collect();
        let worst = |offset: f32| {
            // Keys are [head_dim][kv_stride]: dimension 3 of every slot gets the offset.
            let k: Vec<f32> = (0..stride * hd).map(|i| 2.0 * val(i) + if i / stride == 3 { offset } else { 0.0 }).collect();
            let (mut int8, mut exact) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            causal_attention_in(Precision::Int8, &q, &k, &v, s, &mut int8);
            causal_attention_portable(&q, &k, &v, s, &mut exact);
            int8.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
        };
        let (plain, offset) = (worst(0.0), worst(200.0));
        assert!(offset < 0.02 && offset < 2.0 * plain, "int8 off f32 by {plain} without the offset, {offset} with it");
    }

    #[test]
    fn a_long_context_spans_several_key_tiles_and_matches_the_portable_twin() {
        // Random shapes are in kernels::properties; here the lengths that cross KEY_TILE and
        // TOKENS_PER_TASK many times, with a window that starts mid-tile.
        for (window, pos0, tokens) in [(None, 700usize, 37usize), (Some(300), 900, 20), (None, 0, 600)] {
            let (n_heads, n_kv_heads, hd) = (8, 2, 64);
            let stride = (pos0 + tokens).next_multiple_of(LANES);
            let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window, scale: 0.125, softcap: None };
            let k: Vec<f32> = (0..n_kv_heads * stride * hd).map(val).collect();
            let v: Vec<f32> = (0..n_kv_heads * stride * hd).map(|i| val(i + 13)).collect();
            let q: Vec<f32> = (0..tokens * n_heads * hd).map(|i| val(i + 101)).collect();
            let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            causal_attention(&q, &k, &v, s, &mut a);
            causal_attention_portable(&q, &k, &v, s, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{window:?} {pos0}+{tokens}: {x} vs {y}");
            }
        }
    }
}
