//! Decode with weights kept in ggml's blocks: the activation row is quantized to int8 once per
//! token (per 32 values for the legacy types, per 256 with sums per 16 for the K-quants, as
//! llama.cpp's q8_0 / q8_K do), and every weight row is a sum of integer block dot products,
//! each scaled once in float.
//!
//! Exactness between the SIMD kernels and their portable twins is by construction: a block's
//! integer sum is exact in any order, its float contribution is computed with the same operations
//! in every kernel, and contributions are summed in the same order (block u into lane u % 16,
//! then one fixed tree), so the kernels agree bit for bit and tests check that they do.

mod portable;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod gemm;

use std::sync::OnceLock;

use rayon::prelude::*;

pub use portable::{block_dot_portable, row_dot_portable};

use crate::tensor::dtype::{DType, QK, QK_K};
use crate::tensor::Encoded;

/// How an activation row is quantized for a weight type's dot product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// One scale per 32 values (Q4_0 .. Q8_0).
    Q8x32,
    /// One scale per 256 values (the K-quants).
    Q8K,
}

impl ActFormat {
    /// The format a weight type's dot product reads, None for types without one (plain floats).
    pub fn for_weights(dtype: DType) -> Option<ActFormat> {
        match dtype.block().0 {
            QK => Some(ActFormat::Q8x32),
            QK_K => Some(ActFormat::Q8K),
            _ => None,
        }
    }

    fn block(self) -> usize {
        match self {
            ActFormat::Q8x32 => QK,
            ActFormat::Q8K => QK_K,
        }
    }
}

/// One activation row quantized to int8: x_i ~ d[i / block] * qs[i].
pub struct QuantizedActs {
    pub format: ActFormat,
    pub qs: Vec<i8>,
    /// Scale per block.
    pub d: Vec<f32>,
    /// Sum of qs per 16 values (for weight types with offsets or mins).
    pub sums: Vec<i16>,
}

impl QuantizedActs {
    /// Quantizes `x` (its length a multiple of the format's block) with one symmetric scale per
    /// block: d = max|x| / 127, q = round(x / d).
    pub fn new(format: ActFormat, x: &[f32]) -> Self {
        let mut a = QuantizedActs { format, qs: vec![0; x.len()], d: vec![0.0; x.len() / format.block()], sums: vec![0; x.len() / 16] };
        #[cfg(target_arch = "x86_64")]
        if level() != QdotLevel::Portable {
            // SAFETY: avx2 is present whenever the level is above portable.
            unsafe { quantize_avx2(&mut a, x) };
            return a;
        }
        quantize_portable(&mut a, x);
        a
    }

    /// Sum of the int8 values of 32-value block `b`.
    pub fn block_sum(&self, b: usize) -> i32 {
        self.sums[2 * b] as i32 + self.sums[2 * b + 1] as i32
    }
}

/// Same code built for AVX2, so the rounding loop vectorizes (the results are the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(a: &mut QuantizedActs, x: &[f32]) {
    quantize_portable(a, x)
}

/// The portable build of the activation quantizer, whatever this CPU has (tests compare).
#[cfg(test)]
pub(crate) fn quantize_portable_of(format: ActFormat, x: &[f32]) -> QuantizedActs {
    let mut a = QuantizedActs { format, qs: vec![0; x.len()], d: vec![0.0; x.len() / format.block()], sums: vec![0; x.len() / 16] };
    quantize_portable(&mut a, x);
    a
}

#[inline(always)]
fn quantize_portable(a: &mut QuantizedActs, x: &[f32]) {
    let block = a.format.block();
    assert_eq!(x.len() % block, 0, "activation length {} is not a multiple of {block}", x.len());
    for ((xs, qs), d) in x.chunks_exact(block).zip(a.qs.chunks_exact_mut(block)).zip(&mut a.d) {
        let amax = crate::kernels::ops::max_abs(xs);
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = nearest_int(v * id).clamp(-127, 127) as i8;
        }
    }
    for (s, qs) in a.sums.iter_mut().zip(a.qs.chunks_exact(16)) {
        *s = qs.iter().map(|&q| q as i16).sum();
    }
}

/// Round to nearest (ties to even) for |v| < 2^22, as ggml's nearest_int: adding 1.5 * 2^23
/// leaves the rounded integer in the low mantissa bits. Branch-free, so it vectorizes.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let f = v + 12582912.0;
    (f.to_bits() & 0x7f_ffff) as i32 - 0x40_0000
}

/// Per-block float contributions summed in one fixed order: block u goes to lane u % 16 (a
/// 16-wide SIMD accumulator holds exactly these lanes), the lanes are added in one tree.
#[derive(Default)]
pub struct Lanes(pub [f32; 16]);

impl Lanes {
    #[inline(always)]
    pub fn add(&mut self, block: usize, c: f32) {
        self.0[block % 16] += c;
    }

    pub fn sum(mut self) -> f32 {
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                self.0[i] += self.0[i + w];
            }
        }
        self.0[0]
    }
}

/// Instruction sets the dot products have kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QdotLevel {
    Portable,
    Avx2,
    /// AVX-512 with VNNI and VBMI (Zen 4 and later, Intel since Ice Lake).
    Avx512Vnni,
}

impl QdotLevel {
    /// Every level this CPU can run (for tests that compare them).
    pub fn available() -> Vec<QdotLevel> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut v = vec![QdotLevel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(QdotLevel::Avx2);
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vbmi")
                {
                    v.push(QdotLevel::Avx512Vnni);
                }
            }
        }
        v
    }
}

/// The best level this CPU runs (each level's features include the ones below it).
fn best_level() -> QdotLevel {
    static BEST: OnceLock<QdotLevel> = OnceLock::new();
    *BEST.get_or_init(|| *QdotLevel::available().last().expect("portable is always there"))
}

/// The best level here; `LLM_NPU_SIMD=portable` or `=avx2` caps it (testing, comparison).
pub fn level() -> QdotLevel {
    static LEVEL: OnceLock<QdotLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = best_level();
        match std::env::var("LLM_NPU_SIMD").as_deref() {
            Ok("portable") => QdotLevel::Portable,
            Ok("avx2") => best.min(QdotLevel::Avx2),
            _ => best,
        }
    })
}

/// dot(weight row `row` of type `dtype`, the quantized activation) with the kernel for `level`
/// (which the caller has checked this CPU runs: `QdotLevel::available`).
pub fn row_dot(level: QdotLevel, dtype: DType, row: &[u8], a: &QuantizedActs) -> f32 {
    check(dtype, row.len(), a);
    // SAFETY: just checked.
    unsafe { row_dot_checked(level, dtype, row, a) }
}

/// What the kernels rely on: the activation's format fits the weight type, and the row holds
/// exactly the blocks of the activation's length.
fn check(dtype: DType, row_bytes: usize, a: &QuantizedActs) {
    assert_eq!(Some(a.format), ActFormat::for_weights(dtype), "activation format for {}", dtype.name());
    assert_eq!(dtype.n_bytes(a.qs.len()), Some(row_bytes), "row and activation lengths differ");
}

/// `row_dot` without the checks, for loops that made them once per matrix.
/// Safety: `check(dtype, row.len(), a)` holds and `level` is one of `QdotLevel::available()`.
#[inline(always)]
unsafe fn row_dot_checked(level: QdotLevel, dtype: DType, row: &[u8], a: &QuantizedActs) -> f32 {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract.
    unsafe {
        match (level, dtype) {
            (QdotLevel::Avx512Vnni, DType::Q8_0) => return avx512::q8_0(row, a),
            (QdotLevel::Avx512Vnni, DType::Q4_0) => return avx512::q4_0(row, a),
            (QdotLevel::Avx512Vnni, DType::Q4K) => return avx512::q4_k(row, a),
            (QdotLevel::Avx512Vnni, DType::Q6K) => return avx512::q6_k(row, a),
            (QdotLevel::Avx2, DType::Q8_0) => return avx2::q8_0(row, a),
            (QdotLevel::Avx2, DType::Q4_0) => return avx2::q4_0(row, a),
            (QdotLevel::Avx2, DType::Q4K) => return avx2::q4_k(row, a),
            (QdotLevel::Avx2, DType::Q6K) => return avx2::q6_k(row, a),
            (QdotLevel::Avx2 | QdotLevel::Avx512Vnni, _) => return avx2::portable_built_for_avx2(dtype, row, a),
            (QdotLevel::Portable, _) => {}
        }
    }
    row_dot_portable(dtype, row, a)
}

/// Rows per parallel task: large enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 32;

/// Below this many tokens each weight row is dotted with each token (decode); from here on the
/// integer GEMM runs, where there is one.
#[cfg(target_arch = "x86_64")]
const GEMM_MIN_TOKENS: usize = 4;

/// Whether many-token products run as an integer GEMM here (AVX-512 VNNI); without it the caller
/// is better off decoding panels to f32 for its float GEMM.
pub fn has_gemm() -> bool {
    level() == QdotLevel::Avx512Vnni
}

/// Each token row of x ([m, k]) quantized for `format`.
fn quantize_rows(format: ActFormat, x: &[f32], k: usize) -> Vec<QuantizedActs> {
    assert_eq!(x.len() % k, 0);
    x.par_chunks(k).with_min_len(16).map(|xr| QuantizedActs::new(format, xr)).collect()
}

/// y[i, r] = dot(w[r, :], x[i, :]) (or y += that) for m token rows of x: the activations are
/// quantized once; a few tokens take each weight row in turn, many go through the integer GEMM.
pub fn matmul(w: Encoded, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
    matmul_at(level(), w, x, m, y, accumulate)
}

/// `matmul` with the kernels of `lvl` (one of `QdotLevel::available()`: benchmarks compare them).
pub fn matmul_at(lvl: QdotLevel, w: Encoded, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
    let format = ActFormat::for_weights(w.dtype).expect("a block-quantized weight");
    assert_eq!(x.len(), m * w.cols);
    matmul_quantized(lvl, w, &quantize_rows(format, x, w.cols), y, accumulate)
}

/// `matmul` for activations already quantized (in `w`'s format).
fn matmul_quantized(lvl: QdotLevel, w: Encoded, acts: &[QuantizedActs], y: &mut [f32], accumulate: bool) {
    assert!(lvl <= best_level(), "{lvl:?} is not available on this CPU");
    let (n, m) = (w.rows, acts.len());
    assert_eq!(y.len(), m * n);
    acts.iter().for_each(|a| check(w.dtype, w.row_bytes(), a));
    assert_eq!(w.bytes.len(), n * w.row_bytes(), "weight bytes do not match its shape");
    #[cfg(target_arch = "x86_64")]
    if lvl == QdotLevel::Avx512Vnni && m >= GEMM_MIN_TOKENS {
        // SAFETY: the level's features are present and the formats and shapes were checked.
        return unsafe { gemm::matmul(w, acts, y, accumulate) };
    }
    super::matvec::rows_for_tokens(n, m, y, accumulate, ROWS_PER_TASK, || (), |_, r, out| {
        let row = w.row(r);
        for (o, a) in out.iter_mut().zip(acts) {
            // SAFETY: checked above, and `lvl` at the top.
            *o = unsafe { row_dot_checked(lvl, w.dtype, row, a) };
        }
    });
}

/// outs[i] = x . ws[i]^T for weights reading the same input (q/k/v, gate/up): the input is
/// quantized once per activation format. One token runs as one parallel loop over all the
/// weights' rows (the threads are handed work once, not once per weight).
pub fn matmul_many(ws: &[Encoded], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len());
    let mut acts: Vec<(ActFormat, Vec<QuantizedActs>)> = Vec::new();
    for w in ws {
        let format = ActFormat::for_weights(w.dtype).expect("a block-quantized weight");
        assert_eq!(x.len(), m * w.cols);
        if !acts.iter().any(|(f, _)| *f == format) {
            acts.push((format, quantize_rows(format, x, w.cols)));
        }
    }
    let acts_for = |w: &Encoded| &acts.iter().find(|(f, _)| Some(*f) == ActFormat::for_weights(w.dtype)).expect("quantized above").1;
    let lvl = level();
    if m > 1 {
        for (w, y) in ws.iter().zip(outs.iter_mut()) {
            matmul_quantized(lvl, *w, acts_for(w), y, false);
        }
        return;
    }
    let mut tasks: Vec<(Encoded, usize, &mut [f32])> = Vec::new();
    for (w, y) in ws.iter().zip(outs.iter_mut()) {
        assert_eq!(y.len(), w.rows);
        assert_eq!(w.bytes.len(), w.rows * w.row_bytes(), "weight bytes do not match its shape");
        check(w.dtype, w.row_bytes(), &acts_for(w)[0]);
        tasks.extend(y.chunks_mut(ROWS_PER_TASK).enumerate().map(|(t, ys)| (*w, t * ROWS_PER_TASK, ys)));
    }
    tasks.into_par_iter().for_each(|(w, r0, ys)| {
        let a = &acts_for(&w)[0];
        for (i, out) in ys.iter_mut().enumerate() {
            // SAFETY: checked above for every weight; `lvl` is `level()`.
            *out = unsafe { row_dot_checked(lvl, w.dtype, w.row(r0 + i), a) };
        }
    });
}

#[cfg(test)]
pub(crate) mod tests;
