//! Element-wise and small ops of the transformer: RMSNorm, RoPE, SwiGLU, softmax (attention is
//! in attention.rs).
//! These are a few percent of the work; they are written for clarity and auto-vectorization.

use rayon::prelude::*;


/// Rows per parallel task for the element-wise ops: below this much work threads cost more
/// than they save (decode runs them on one row).
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Splits `len` elements of `row`-sized rows into per-task row counts.
fn rows_per_task(len: usize, row: usize) -> usize {
    (PAR_MIN_ELEMS / row.max(1)).max(1).min(len / row.max(1)).max(1)
}

/// RMSNorm of each `dim`-row of `x` into `out`, as Hugging Face computes it: x * rsqrt(mean(x^2) + eps) * w.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    let rows = rows_per_task(x.len(), dim);
    let level = super::simd_level();
    out.par_chunks_mut(rows * dim).zip(x.par_chunks(rows * dim)).for_each(|(o, xs)| match level {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { rms_norm_rows_avx512(xs, w, eps, o) },
        _ => rms_norm_rows(xs, w, eps, o),
    });
}

/// `rms_norm_rows` compiled for AVX-512 (the baseline build gave it SSE: 3.5% of a prefill);
/// the same operations in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_rows_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_rows(x, w, eps, out)
}

/// The portable twin of `rms_norm` (rows one after another).
#[inline(always)]
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss = sum_of_squares(xr) / dim as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
}

/// Sum of x^2 (RMSNorm's), as `sum`: a plain `.sum()` made RMSNorm latency-bound.
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    sum_mapped(x, |v| v * v)
}

/// Sum of x, as `sum_mapped`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    sum_mapped(x, |v| v)
}

/// Sum of f(x) over 16 lane accumulators (then `lanes_sum` and the tail in order): vectorizes
/// where a plain `.sum()` is one serial chain of dependent adds (float addition is not
/// reassociated).
#[inline(always)]
fn sum_mapped(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for c in chunks {
        for l in 0..16 {
            lanes[l] += f(c[l]);
        }
    }
    lanes_sum(lanes) + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// e^x for f32 without branches or calls, so loops over it vectorize: x = n ln2 + f with
/// |f| <= ln2/2 (Cody-Waite split of ln2), a degree-6 polynomial for e^f, and 2^n built in the
/// exponent bits. Relative error below 2e-7 on [-87, 88]; inputs beyond are clamped (e^-87 ~ 0).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // 2^n from the exponent bits. n is a whole number in [-126, 127]; adding 1.5 * 2^23 puts it
    // in the low mantissa bits, which keeps the whole function in vector registers (an `as i32`
    // cast would be a scalar conversion per lane).
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// gate <- silu(gate) * up (SwiGLU).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    glu(Activation::Silu, gate, up)
}

/// The activation of a gated MLP's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x sigmoid(x): SwiGLU (Llama, Qwen, Mistral, Phi-3).
    Silu,
    /// GELU, tanh approximation (PyTorch's `gelu_pytorch_tanh`): GeGLU (Gemma).
    GeluTanh,
}

/// gate = act(gate) * up, elementwise.
pub fn glu(act: Activation, gate: &mut [f32], up: &[f32]) {
    let level = super::simd_level();
    gate.par_chunks_mut(PAR_MIN_ELEMS).zip(up.par_chunks(PAR_MIN_ELEMS)).for_each(|(g, u)| match level {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { glu_avx512(act, g, u) },
        _ => glu_portable(act, g, u),
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn glu_avx512(act: Activation, gate: &mut [f32], up: &[f32]) {
    glu_portable(act, gate, up)
}

/// The portable twin of `glu`.
#[inline(always)]
pub fn glu_portable(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + exp_fast(-*g)) * u;
            }
        }
        Activation::GeluTanh => {
            // 0.5 x (1 + tanh(z)) = x sigmoid(2 z), z = sqrt(2 / pi) (x + 0.044715 x^3).
            const K: f32 = 0.797_884_6; // sqrt(2 / pi)
            for (g, &u) in gate.iter_mut().zip(up) {
                let x = *g;
                let z2 = 2.0 * K * (x + 0.044715 * x * x * x);
                *g = x / (1.0 + exp_fast(-z2)) * u;
            }
        }
    }
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (a, &b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
}

/// In-place softmax. Max, exponentials and sum run over exact 16-float chunks with lane
/// accumulators, so they vectorize; the tail is done one by one.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = max_of(x);
    let inv = 1.0 / exp_minus(x, max);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The larger of a and b, b when a is NaN: one `vmaxps` once vectorized, where `f32::max`
/// (which also ignores a NaN in b) costs a compare and a blend more.
#[inline(always)]
pub fn max_select(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest element (-inf for none), over 16 lanes so it vectorizes.
#[inline(always)]
pub fn max_of(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut lane_max = [f32::NEG_INFINITY; 16];
    for c in chunks {
        for l in 0..16 {
            lane_max[l] = max_select(c[l], lane_max[l]);
        }
    }
    tail.iter().fold(lanes_max(lane_max), |m, &x| max_select(x, m))
}

/// `max_of` on AVX-512 when SIMD is set (by callers on a path that checked avx512f): the same
/// value, since a maximum does not depend on the order it is taken in (`_mm512_max_ps(a, b)` is
/// `max_select(a, b)`, NaNs skipped alike). The portable loop's 16 lanes come out of the
/// compiler as a patchwork of 4-, 2-, 1- and 8-lane pieces.
#[inline(always)]
pub fn max_of_simd<const SIMD: bool>(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD callers run on CPUs with avx512f.
        return unsafe { max_of_avx512(x) };
    }
    max_of(x)
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn max_of_avx512(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    // Four chains: one `vmaxps` after another waits for each result (4 cycles), which made a
    // row's max of 256 scores a latency chain as long as its exponentials.
    let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let (quads, rest) = x.as_chunks::<64>();
    for c in quads {
        for (i, m) in m.iter_mut().enumerate() {
            *m = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr().add(16 * i)), *m);
        }
    }
    let mut chunks = rest.chunks_exact(16);
    for c in &mut chunks {
        m[0] = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), m[0]);
    }
    let tail = chunks.remainder();
    m[1] = _mm512_max_ps(_mm512_mask_loadu_ps(m[1], first_lanes(tail.len()), tail.as_ptr()), m[1]);
    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])))
}

/// The largest magnitude (0 for none; NaNs are skipped), over 16 lanes as `max_of`.
#[inline(always)]
pub fn max_abs(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut lane_max = [0f32; 16];
    for c in chunks {
        for l in 0..16 {
            lane_max[l] = max_select(c[l].abs(), lane_max[l]);
        }
    }
    tail.iter().fold(lanes_max(lane_max), |m, v| max_select(v.abs(), m))
}

/// The mask of a 16-lane vector's first min(count, 16) lanes: masked loads and stores at the
/// end of a slice or tile.
#[inline(always)]
pub fn first_lanes(count: usize) -> u16 {
    ((1u32 << count.min(16)) - 1) as u16
}

/// Soft-capping, cap * tanh(x / cap), in place (Gemma 2's attention scores and final logits).
pub fn softcap(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
}

/// The largest of 16 lane maxima (NaN-free: `max_select` keeps NaNs out of the lanes), halving
/// the lanes each step: four dependent `vmaxps` where a fold is sixteen (with `f32::max`, each a
/// compare and blend more). Per row and key tile, attention's softmax spent more on a serial
/// fold here than on its exponentials.
#[inline(always)]
pub fn lanes_max(lanes: [f32; 16]) -> f32 {
    let h8: [f32; 8] = std::array::from_fn(|l| max_select(lanes[l], lanes[l + 8]));
    let h4: [f32; 4] = std::array::from_fn(|l| max_select(h8[l], h8[l + 4]));
    max_select(max_select(h4[0], h4[2]), max_select(h4[1], h4[3]))
}

/// The sum of 16 lane sums in the same halving tree as `lanes_max`, the same order everywhere
/// (the SIMD and portable twins both call it).
#[inline(always)]
pub fn lanes_sum(lanes: [f32; 16]) -> f32 {
    let h8: [f32; 8] = std::array::from_fn(|l| lanes[l] + lanes[l + 8]);
    let h4: [f32; 4] = std::array::from_fn(|l| h8[l] + h8[l + 4]);
    (h4[0] + h4[2]) + (h4[1] + h4[3])
}

/// x = e^(x - max) in place; returns the sum, over 16 lane sums (a single running sum is a
/// serial chain the compiler may not vectorize, since float addition is not reassociated).
#[inline(always)]
pub fn exp_minus(x: &mut [f32], max: f32) -> f32 {
    let (chunks, tail) = x.as_chunks_mut::<16>();
    let mut lane_sum = [0f32; 16];
    for c in chunks.iter_mut() {
        for l in 0..16 {
            c[l] = exp_fast(c[l] - max);
            lane_sum[l] += c[l];
        }
    }
    for v in tail.iter_mut() {
        *v = exp_fast(*v - max);
    }
    lanes_sum(lane_sum) + tail.iter().sum::<f32>()
}

/// `exp_minus` on AVX-512 when SIMD is set (by callers on a path that checked avx512f and FMA):
/// the same reduction of x to n ln2 + f and degree-6 polynomial, in fused multiply-adds, with
/// 2^n applied by `vscalefps`: half the instructions of the portable loop, within 2e-7 of it
/// (not bit-equal: fused steps round once). Most of f32 attention's softmax.
#[inline(always)]
pub fn exp_minus_simd<const SIMD: bool>(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD callers run on CPUs with avx512f and FMA.
        return unsafe { exp_minus_avx512(x, max) };
    }
    exp_minus(x, max)
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn exp_minus_avx512(x: &mut [f32], max: f32) -> f32 {
    use std::arch::x86_64::*;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let (vmax, lo, hi, log2e) = (_mm512_set1_ps(max), _mm512_set1_ps(-87.0), _mm512_set1_ps(88.0), _mm512_set1_ps(std::f32::consts::LOG2_E));
    let (ln2_hi, ln2_lo) = (_mm512_set1_ps(LN2_HI), _mm512_set1_ps(LN2_LO));
    let c = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0].map(|v: f32| _mm512_set1_ps(v));
    let mut sum = _mm512_setzero_ps();
    for i in (0..x.len()).step_by(16) {
        let mask = first_lanes(x.len() - i);
        let at = x.as_mut_ptr().add(i);
        // As exp_fast: clamped to [-87, 88], n = x log2 e rounded, f = x - n ln2 in two steps.
        let y = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, at), vmax), lo), hi);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(y, log2e));
        let f = _mm512_fnmadd_ps(n, ln2_lo, _mm512_fnmadd_ps(n, ln2_hi, y));
        let mut p = c[0];
        for &k in &c[1..] {
            p = _mm512_fmadd_ps(p, f, k);
        }
        let e = _mm512_scalef_ps(p, n);
        _mm512_mask_storeu_ps(at, mask, e);
        sum = _mm512_mask_add_ps(sum, mask, sum, e);
    }
    _mm512_reduce_add_ps(sum)
}

/// How a head's dimensions are paired for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face "rotate_half": dimension i pairs with i + d/2.
    Neox,
    /// Meta / GGUF llama / llama2.c: dimension 2i pairs with 2i + 1.
    Interleaved,
}

/// Rotates every head of `x` ([tokens][heads * head_dim]) by the angles of its token.
/// `cos`/`sin` are [tokens][half] with `half` rotated pairs per head (half <= head_dim / 2).
pub fn apply_rope(x: &mut [f32], head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32], half: usize) {
    let row_len = x.len() / (cos.len() / half);
    let level = super::simd_level();
    x.par_chunks_mut(row_len).enumerate().for_each(|(t, row)| {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        match level {
            // SAFETY: Avx512 is only selected when the CPU has avx512f.
            #[cfg(target_arch = "x86_64")]
            super::SimdLevel::Avx512 => unsafe { rope_row_avx512(row, head_dim, style, c, s) },
            _ => rope_row(row, head_dim, style, c, s),
        }
    });
}

/// `rope_row` compiled for AVX-512 (same operations, same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rope_row_avx512(row: &mut [f32], head_dim: usize, style: RopeStyle, c: &[f32], s: &[f32]) {
    rope_row(row, head_dim, style, c, s)
}

/// One token's heads rotated by its angles (`c`, `s`: `half` values each); the portable twin of
/// `apply_rope`.
#[inline(always)]
pub fn rope_row(row: &mut [f32], head_dim: usize, style: RopeStyle, c: &[f32], s: &[f32]) {
    let half = c.len();
    for head in row.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Neox => {
                // The two halves as separate slices, so the loop vectorizes.
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
                    let (a, b) = (*x0, *x1);
                    *x0 = a * c - b * s;
                    *x1 = b * c + a * s;
                }
            }
            RopeStyle::Interleaved => {
                for ((pair, &c), &s) in head[..2 * half].chunks_exact_mut(2).zip(c).zip(s) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = b * c + a * s;
                }
            }
        }
    }
}

/// y += a * x (the shadow path's rank-1 updates).
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len());
    match super::simd_level() {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { axpy_avx512(y, a, x) },
        _ => axpy_portable(y, a, x),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_portable(y, a, x)
}

/// The portable twin of `axpy` (no fused multiply-add, so both give identical bits).
#[inline(always)]
pub fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// y = sum_e a_e x_e over `terms` (a_e, x_e), in their order: y = a_0 x_0 (or, with `add_to_y`,
/// y += a_0 x_0), then y += a_e x_e, as `axpy` would do them one by one (the same bits), but
/// each block of y stays in registers while every term is added, so y is written once instead
/// of loaded and stored per term (the shadow path's rows with several outliers).
pub fn weighted_sum(y: &mut [f32], terms: &[(f32, &[f32])], add_to_y: bool) {
    assert!(!terms.is_empty() && terms.iter().all(|(_, x)| x.len() == y.len()));
    match super::simd_level() {
        // SAFETY: Avx512 is only selected when the CPU has avx512f; the lengths are checked.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { weighted_sum_avx512(y, terms, add_to_y) },
        _ => weighted_sum_portable(y, terms, add_to_y),
    }
}

/// 64 lanes of y per pass over the terms (four registers), then 16 at a time, the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_avx512(y: &mut [f32], terms: &[(f32, &[f32])], add_to_y: bool) {
    use std::arch::x86_64::*;
    let n = y.len();
    let mut i = 0;
    while i + 64 <= n {
        let (a0, x0) = terms[0];
        let a = _mm512_set1_ps(a0);
        let mut acc: [__m512; 4] = std::array::from_fn(|v| {
            let first = _mm512_mul_ps(a, _mm512_loadu_ps(x0.as_ptr().add(i + 16 * v)));
            if add_to_y {
                _mm512_add_ps(_mm512_loadu_ps(y.as_ptr().add(i + 16 * v)), first)
            } else {
                first
            }
        });
        for &(ae, xe) in &terms[1..] {
            let a = _mm512_set1_ps(ae);
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(a, _mm512_loadu_ps(xe.as_ptr().add(i + 16 * v))));
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.as_mut_ptr().add(i + 16 * v), *acc);
        }
        i += 64;
    }
    while i < n {
        let mask = first_lanes(n - i);
        let (a0, x0) = terms[0];
        let mut acc = _mm512_mul_ps(_mm512_set1_ps(a0), _mm512_maskz_loadu_ps(mask, x0.as_ptr().add(i)));
        if add_to_y {
            acc = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y.as_ptr().add(i)), acc);
        }
        for &(ae, xe) in &terms[1..] {
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(ae), _mm512_maskz_loadu_ps(mask, xe.as_ptr().add(i))));
        }
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), mask, acc);
        i += 16;
    }
}

/// The portable twin of `weighted_sum`: the same products and sums in the same order.
pub fn weighted_sum_portable(y: &mut [f32], terms: &[(f32, &[f32])], add_to_y: bool) {
    let (a0, x0) = terms[0];
    if add_to_y {
        axpy_portable(y, a0, x0);
    } else {
        for (y, &x) in y.iter_mut().zip(x0) {
            *y = a0 * x;
        }
    }
    for &(a, x) in &terms[1..] {
        axpy_portable(y, a, x);
    }
}

/// Pushes onto `out` the indices of `x` where |x * inv_scale| > limit: the elements a static
/// scale clips. Blocks of 16 are skipped on one vectorized max, so the common case (no outlier)
/// is a plain streaming compare.
pub fn find_beyond(x: &[f32], inv_scale: f32, limit: f32, out: &mut Vec<u32>) {
    match super::simd_level() {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { find_beyond_avx512(x, inv_scale, limit, out) },
        _ => find_beyond_portable(x, inv_scale, limit, out),
    }
}

/// One compare mask per 16 elements; the mask's bits are the indices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn find_beyond_avx512(x: &[f32], inv_scale: f32, limit: f32, out: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let (blocks, tail) = x.as_chunks::<16>();
    let (inv, lim) = (_mm512_set1_ps(inv_scale), _mm512_set1_ps(limit));
    for (b, block) in blocks.iter().enumerate() {
        let v = _mm512_abs_ps(_mm512_mul_ps(_mm512_loadu_ps(block.as_ptr()), inv));
        let mut mask = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, lim);
        while mask != 0 {
            out.push((b * 16) as u32 + mask.trailing_zeros());
            mask &= mask - 1;
        }
    }
    let base = blocks.len() * 16;
    for (l, &v) in tail.iter().enumerate() {
        if (v * inv_scale).abs() > limit {
            out.push((base + l) as u32);
        }
    }
}

#[inline(always)]
pub fn find_beyond_portable(x: &[f32], inv_scale: f32, limit: f32, out: &mut Vec<u32>) {
    let (blocks, tail) = x.as_chunks::<16>();
    for (b, block) in blocks.iter().enumerate() {
        let mut m = [0f32; 16];
        for l in 0..16 {
            m[l] = (block[l] * inv_scale).abs();
        }
        if m.iter().copied().fold(0f32, f32::max) > limit {
            for (l, &v) in m.iter().enumerate() {
                if v > limit {
                    out.push((b * 16 + l) as u32);
                }
            }
        }
    }
    let base = blocks.len() * 16;
    for (l, &v) in tail.iter().enumerate() {
        if (v * inv_scale).abs() > limit {
            out.push((base + l) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxima_skip_nans_in_the_lanes_and_the_tail_on_every_path() {
        let simd = crate::kernels::simd_level() == crate::kernels::SimdLevel::Avx512;
        // Past 64 the SIMD max runs four chains of 16 lanes, then single vectors and a tail.
        for len in [0usize, 1, 15, 16, 17, 40, 64, 100, 257] {
            let x: Vec<f32> = (0..len).map(|i| if i % 7 == 3 { f32::NAN } else { (i as f32 * 0.37).sin() * 3.0 }).collect();
            let want = x.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
            let want_abs = x.iter().copied().filter(|v| !v.is_nan()).fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(max_of(&x), want, "max_of, length {len}");
            assert_eq!(max_abs(&x), want_abs, "max_abs, length {len}");
            if simd {
                assert_eq!(max_of_simd::<true>(&x), want, "max_of_simd, length {len}");
            }
        }
    }

    #[test]
    fn exp_fast_is_accurate() {
        let (mut worst, mut at) = (0f64, 0f32);
        for i in -86_990..87_990 {
            let x = i as f32 * 1e-3;
            let rel = ((exp_fast(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            if rel > worst {
                (worst, at) = (rel, x);
            }
        }
        assert!(worst < 5e-7, "max relative error {worst} at x = {at}");
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert!(exp_fast(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn simd_silu_and_gelu_match_portable() {
        #[cfg(target_arch = "x86_64")]
        if super::super::simd_level() == super::super::SimdLevel::Avx512 {
            let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            for act in [Activation::Silu, Activation::GeluTanh] {
                let mut g1: Vec<f32> = (0..1000).map(|i| val(i) * 20.0).collect();
                let mut g2 = g1.clone();
                let up: Vec<f32> = (0..1000).map(|i| val(i + 5)).collect();
                unsafe { glu_avx512(act, &mut g1, &up) };
                glu_portable(act, &mut g2, &up);
                for (x, y) in g1.iter().zip(&g2) {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{act:?}: {x} vs {y}");
                }
            }
        }
        if super::super::simd_level() != super::super::SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU: only GeLU against its definition runs");
        }
        // GeLU's tanh form against its definition (f64).
        let mut g: Vec<f32> = (-80..80).map(|i| i as f32 / 10.0).collect();
        let want: Vec<f64> = g.iter().map(|&x| {
            let x = x as f64;
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }).collect();
        glu(Activation::GeluTanh, &mut g, &vec![1.0; 160]);
        for (x, y) in g.iter().zip(&want) {
            assert!((*x as f64 - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn axpy_and_find_beyond_match_their_portable_twins() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.0;
        for n in [0, 1, 15, 16, 17, 31, 64, 100, 1000, 5632] {
            let x: Vec<f32> = (0..n).map(val).collect();
            let mut a: Vec<f32> = (0..n).map(|i| val(i + 3)).collect();
            let mut b = a.clone();
            unsafe { axpy_avx512(&mut a, -1.7, &x) };
            axpy_portable(&mut b, -1.7, &x);
            assert_eq!(a, b, "axpy n={n}");
            // One to five terms, against the portable twin and against axpy term by term.
            let cols: Vec<Vec<f32>> = (0..5).map(|t| (0..n).map(|i| val(i * 3 + t)).collect()).collect();
            for count in 1..=5 {
                let terms: Vec<(f32, &[f32])> = cols[..count].iter().enumerate().map(|(t, c)| (0.5 - t as f32 * 0.9, c.as_slice())).collect();
                let (mut ws, mut wp) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                unsafe { weighted_sum_avx512(&mut ws, &terms, false) };
                weighted_sum_portable(&mut wp, &terms, false);
                let mut by_axpy: Vec<f32> = terms[0].1.iter().map(|&x| terms[0].0 * x).collect();
                for &(a, x) in &terms[1..] {
                    axpy_portable(&mut by_axpy, a, x);
                }
                assert_eq!(ws, wp, "weighted_sum n={n} terms={count}");
                assert_eq!(wp, by_axpy, "weighted_sum portable n={n} terms={count}");
                // Added onto y's values: the same as axpy term by term onto y.
                let start: Vec<f32> = (0..n).map(|i| val(i + 11)).collect();
                let (mut ws, mut wp, mut by_axpy) = (start.clone(), start.clone(), start.clone());
                unsafe { weighted_sum_avx512(&mut ws, &terms, true) };
                weighted_sum_portable(&mut wp, &terms, true);
                for &(a, x) in &terms {
                    axpy_portable(&mut by_axpy, a, x);
                }
                assert_eq!(ws, wp, "weighted_sum onto y n={n} terms={count}");
                assert_eq!(wp, by_axpy, "weighted_sum onto y portable n={n} terms={count}");
            }
            // Plant values beyond the limit at the edges of blocks and in the tail.
            let mut y = x.clone();
            let planted: Vec<u32> = [0usize, 15, 16, 17, 33, n.saturating_sub(1), n / 2].into_iter().filter(|&i| i < n).map(|i| i as u32).collect();
            for &i in &planted {
                y[i as usize] = if i % 2 == 0 { 900.0 } else { -900.0 };
            }
            let mut want: Vec<u32> = planted.clone();
            want.sort();
            want.dedup();
            let (mut fa, mut fb) = (Vec::new(), Vec::new());
            unsafe { find_beyond_avx512(&y, 0.25, 127.0, &mut fa) };
            find_beyond_portable(&y, 0.25, 127.0, &mut fb);
            assert_eq!(fa, want, "find_beyond n={n}");
            assert_eq!(fb, want, "find_beyond portable n={n}");
            // Exactly at the limit is not beyond it; NaN never is.
            let edge = [508.0f32, -508.0, 508.1, f32::NAN];
            let mut fe = Vec::new();
            find_beyond(&edge, 0.25, 127.0, &mut fe);
            assert_eq!(fe, vec![2]);
        }
    }
}
