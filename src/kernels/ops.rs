//! Element-wise and small ops of the transformer: RMSNorm, RoPE, SwiGLU, softmax, causal attention.
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
    out.par_chunks_mut(rows * dim).zip(x.par_chunks(rows * dim)).for_each(|(o, xs)| rms_norm_rows(xs, w, eps, o));
}

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss = sum_of_squares(xr) / dim as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
}

/// Sum of x^2 over 16 lane accumulators: a plain `.sum()` is one serial chain of dependent adds
/// (float addition is not reassociated), which made RMSNorm latency-bound.
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for c in chunks {
        for l in 0..16 {
            lanes[l] += c[l] * c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
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
    let (chunks, tail) = x.as_chunks_mut::<16>();
    let mut lane_max = [f32::NEG_INFINITY; 16];
    for c in chunks.iter() {
        for l in 0..16 {
            lane_max[l] = lane_max[l].max(c[l]);
        }
    }
    let max = tail.iter().chain(&lane_max).copied().fold(f32::NEG_INFINITY, f32::max);
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
    let sum: f32 = lane_sum.iter().sum::<f32>() + tail.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
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
    x.par_chunks_mut(row_len).enumerate().for_each(|(t, row)| {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x1 * c[i] + x0 * s[i];
            }
        }
    });
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

/// Causal grouped-query attention of `q` ([tokens][n_heads * head_dim]) over the cache into `out`:
/// `k_cache` is [n_kv_heads][head_dim][kv_stride] (transposed), `v_cache` [n_kv_heads][kv_stride]
/// [head_dim], slot i holding position kv_base + i, valid up to pos0 + tokens. Query token t sees
/// keys 0..=pos0 + t (the last `window` of them with a sliding window).
/// Threads split the query tokens.
pub fn causal_attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    let row = s.n_heads * s.head_dim;
    let level = super::simd_level();
    out.par_chunks_mut(row).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (t, out_row)| {
        let q_row = &q[t * row..(t + 1) * row];
        match level {
            // SAFETY: Avx512 is only selected when the CPU has avx512f.
            #[cfg(target_arch = "x86_64")]
            super::SimdLevel::Avx512 => unsafe { attend_row_avx512(q_row, k_cache, v_cache, s, t, scores, out_row) },
            _ => attend_row::<false>(q_row, k_cache, v_cache, s, t, scores, out_row),
        }
    });
}

/// The portable twin of `causal_attention`.
pub fn causal_attention_portable(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    let row = s.n_heads * s.head_dim;
    out.par_chunks_mut(row).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (t, out_row)| {
        attend_row::<false>(&q[t * row..(t + 1) * row], k_cache, v_cache, s, t, scores, out_row)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn attend_row_avx512(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, t: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_row::<true>(q, k, v, s, t, scores, out)
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

/// Lanes per accumulator block: one 512-bit register of f32.
const LANES: usize = 16;

/// All heads of one query token: scores, softmax, weighted sum of values. The query heads that
/// share a KV head (grouped-query attention) are done four at a time, so every key and value
/// vector loaded from the cache serves four heads instead of one.
#[inline(always)]
fn attend_row<const FMA: bool>(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, t: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let (hd, stride) = (s.head_dim, s.kv_stride);
    debug_assert_eq!(stride % LANES, 0);
    let group = s.n_heads / s.n_kv_heads;
    // Slots of the keys this query sees: first..n_keys.
    let n_keys = s.pos0 + t + 1 - s.kv_base;
    let first = s.window.map_or(0, |w| (s.pos0 + t + 1).saturating_sub(w).saturating_sub(s.kv_base));
    debug_assert!(s.window.is_none_or(|w| s.kv_base <= (s.pos0 + t + 1).saturating_sub(w)) && (s.kv_base == 0 || s.window.is_some()));
    let padded = n_keys.next_multiple_of(LANES);
    scores.resize(HEADS_PER_TILE * padded, 0.0);
    let g = Group { hd, stride, n_keys, first, padded, scale: s.scale, softcap: s.softcap };
    for kvh in 0..s.n_kv_heads {
        let kt = &k_cache[kvh * hd * stride..(kvh + 1) * hd * stride];
        let vh = &v_cache[kvh * stride * hd..(kvh * stride + n_keys) * hd];
        let (mut h, end) = (kvh * group, (kvh + 1) * group);
        while h < end {
            if h + HEADS_PER_TILE <= end {
                g.heads::<HEADS_PER_TILE, FMA>(q, h, kt, vh, scores, out);
                h += HEADS_PER_TILE;
            } else {
                g.heads::<1, FMA>(q, h, kt, vh, scores, out);
                h += 1;
            }
        }
    }
}

/// Query heads attended together (they share one KV head).
const HEADS_PER_TILE: usize = 4;

/// The geometry of one query token's attention over one KV head.
struct Group {
    hd: usize,
    stride: usize,
    n_keys: usize,
    /// First key in the window: earlier ones get probability 0 (and are skipped: the scores
    /// start at its 16-key block, the weighted sum at it).
    first: usize,
    /// n_keys rounded up to whole 16-key blocks: the row length of the score buffer
    padded: usize,
    scale: f32,
    softcap: Option<f32>,
}

impl Group {
    /// Query heads h0..h0+H: their scores (row i of `scores` for head h0+i), softmax, outputs.
    #[inline(always)]
    fn heads<const H: usize, const FMA: bool>(&self, q: &[f32], h0: usize, kt: &[f32], vh: &[f32], scores: &mut [f32], out: &mut [f32]) {
        let (hd, padded) = (self.hd, self.padded);
        let qs = &q[h0 * hd..(h0 + H) * hd];
        let key_blocks = padded / LANES;
        let mut jb = self.first / LANES;
        while jb + 4 <= key_blocks {
            self.scores::<H, 4, FMA>(qs, kt, jb, scores);
            jb += 4;
        }
        while jb < key_blocks {
            self.scores::<H, 1, FMA>(qs, kt, jb, scores);
            jb += 1;
        }
        for i in 0..H {
            if let Some(cap) = self.softcap {
                scores[i * padded + self.first..i * padded + self.n_keys].iter_mut().for_each(|s| *s = (*s / cap).tanh() * cap);
            }
            softmax(&mut scores[i * padded + self.first..i * padded + self.n_keys]);
            scores[i * padded..i * padded + self.first].fill(0.0);
        }
        let dim_blocks = hd / LANES;
        let mut db = 0;
        while db + 4 <= dim_blocks {
            self.values::<H, 4, FMA>(scores, vh, db, &mut out[h0 * hd..(h0 + H) * hd]);
            db += 4;
        }
        while db < dim_blocks {
            self.values::<H, 1, FMA>(scores, vh, db, &mut out[h0 * hd..(h0 + H) * hd]);
            db += 1;
        }
        for i in 0..H {
            let probs = &scores[i * padded + self.first..i * padded + self.n_keys];
            for d in dim_blocks * LANES..hd {
                out[(h0 + i) * hd + d] = probs.iter().zip(vh[self.first * hd..].chunks_exact(hd)).map(|(&p, vj)| p * vj[d]).sum();
            }
        }
    }

    /// Scores of H heads for key blocks jb..jb+N (16 keys each) down the transposed keys:
    /// one load of 16 keys per dimension feeds H heads.
    #[inline(always)]
    fn scores<const H: usize, const N: usize, const FMA: bool>(&self, qs: &[f32], kt: &[f32], jb: usize, scores: &mut [f32]) {
        assert!(qs.len() >= H * self.hd && kt.len() >= self.hd * self.stride && (jb + N) * LANES <= self.padded.min(self.stride));
        assert!(scores.len() >= (H - 1) * self.padded + (jb + N) * LANES);
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: FMA is only set on the AVX-512 path; the asserts above bound every access.
            unsafe { self.scores_avx512::<H, N>(qs, kt, jb, scores) };
            return;
        }
        let mut acc = [[[0f32; LANES]; N]; H];
        for d in 0..self.hd {
            let k: [&[f32; LANES]; N] = std::array::from_fn(|b| {
                let at = d * self.stride + (jb + b) * LANES;
                kt[at..at + LANES].try_into().unwrap()
            });
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let qd = qs[i * self.hd + d];
                for (acc_ib, kb) in acc_i.iter_mut().zip(&k) {
                    for l in 0..LANES {
                        acc_ib[l] = madd::<FMA>(qd, kb[l], acc_ib[l]);
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (b, acc_ib) in acc_i.iter().enumerate() {
                let at = i * self.padded + (jb + b) * LANES;
                for l in 0..LANES {
                    scores[at + l] = acc_ib[l] * self.scale;
                }
            }
        }
    }

    /// `scores` with the accumulators held in registers (the array form above spills them to
    /// the stack on every step).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_avx512<const H: usize, const N: usize>(&self, qs: &[f32], kt: &[f32], jb: usize, scores: &mut [f32]) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); N]; H];
        let (kp, qp) = (kt.as_ptr().add(jb * LANES), qs.as_ptr());
        for d in 0..self.hd {
            let row = kp.add(d * self.stride);
            let mut k = [_mm512_setzero_ps(); N];
            for (b, kb) in k.iter_mut().enumerate() {
                *kb = _mm512_loadu_ps(row.add(b * LANES));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let qd = _mm512_set1_ps(*qp.add(i * self.hd + d));
                for b in 0..N {
                    acc_i[b] = _mm512_fmadd_ps(qd, k[b], acc_i[b]);
                }
            }
        }
        let scale = _mm512_set1_ps(self.scale);
        for (i, acc_i) in acc.iter().enumerate() {
            for (b, &a) in acc_i.iter().enumerate() {
                _mm512_storeu_ps(scores.as_mut_ptr().add(i * self.padded + (jb + b) * LANES), _mm512_mul_ps(a, scale));
            }
        }
    }

    /// Dimension blocks db..db+D (16 each) of sum_j p_j v_j for H heads: each value vector
    /// loaded once serves H heads.
    #[inline(always)]
    fn values<const H: usize, const D: usize, const FMA: bool>(&self, probs: &[f32], vh: &[f32], db: usize, out: &mut [f32]) {
        let mut acc = [[[0f32; LANES]; D]; H];
        for (j, vj) in vh.chunks_exact(self.hd).enumerate().skip(self.first) {
            let v: [&[f32; LANES]; D] = std::array::from_fn(|c| vj[(db + c) * LANES..(db + c + 1) * LANES].try_into().unwrap());
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let p = probs[i * self.padded + j];
                for (acc_ic, vc) in acc_i.iter_mut().zip(&v) {
                    for l in 0..LANES {
                        acc_ic[l] = madd::<FMA>(p, vc[l], acc_ic[l]);
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (c, acc_ic) in acc_i.iter().enumerate() {
                let at = i * self.hd + (db + c) * LANES;
                out[at..at + LANES].copy_from_slice(acc_ic);
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

    /// softmax(q.k / sqrt(d)) . v for every head of query token t, in f64, the textbook way.
    fn attention_by_definition(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, t: usize) -> Vec<f32> {
        let (hd, st) = (s.head_dim, s.kv_stride);
        let group = s.n_heads / s.n_kv_heads;
        // Slots, as in the kernel: slot j holds position kv_base + j.
        let n = s.pos0 + t + 1 - s.kv_base;
        let first = s.window.map_or(0, |w| (s.pos0 + t + 1).saturating_sub(w) - s.kv_base);
        let mut out = vec![0f32; s.n_heads * hd];
        for h in 0..s.n_heads {
            let kvh = h / group;
            let cap = |x: f64| s.softcap.map_or(x, |c| (x / c as f64).tanh() * c as f64);
            let sc: Vec<f64> = (0..n).map(|j| if j < first { f64::NEG_INFINITY } else { cap( (0..hd).map(|d| q[h * hd + d] as f64 * k[(kvh * hd + d) * st + j] as f64).sum::<f64>() * s.scale as f64) }).collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[h * hd + d] = (0..n).map(|j| e[j] / z * v[(kvh * st + j) * hd + d] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn simd_attention_and_silu_match_portable() {
        if super::super::simd_level() != super::super::SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        // Groups of 2 (one head at a time) and 5 (a tile of four plus one), head_dim with a tail.
        // And sliding windows shorter than, equal to and within a key block of the keys seen.
        // A windowed cache whose slot 0 holds a later position (kv_base) too.
        for ((n_heads, n_kv_heads, hd), window, pos0, kv_base) in [((4, 2, 24), None, 3, 0), ((10, 2, 72), None, 3, 0), ((8, 8, 16), None, 3, 0), ((4, 2, 24), Some(5), 3, 0), ((10, 2, 72), Some(17), 3, 0), ((8, 8, 16), Some(1), 3, 0), ((10, 2, 72), Some(17), 30, 14), ((4, 2, 24), Some(5), 20, 16)] {
        let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: 48, kv_base, window, scale: 1.0 / (hd as f32).sqrt(), softcap: window.map(|_| 1.5) };
        let k: Vec<f32> = (0..n_kv_heads * 48 * hd).map(val).collect();
        let v: Vec<f32> = (0..n_kv_heads * 48 * hd).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..n_heads * hd).map(|i| val(i + 101)).collect();
        for t in 0..(48 + kv_base - pos0).min(40) {
            let (mut a, mut b) = (vec![0f32; n_heads * hd], vec![0f32; n_heads * hd]);
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            unsafe { attend_row_avx512(&q, &k, &v, s, t, &mut sa, &mut a) };
            attend_row::<false>(&q, &k, &v, s, t, &mut sb, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "t={t}: {x} vs {y}");
            }
            // And against a plain scalar attention straight from the definition.
            let r = attention_by_definition(&q, &k, &v, s, t);
            for (x, y) in a.iter().zip(&r) {
                assert!((x - y).abs() < 1e-4, "heads {n_heads}/{n_kv_heads} t={t}: {x} vs {y}");
            }
        }
        }
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

    #[test]
    fn axpy_and_find_beyond_match_their_portable_twins() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
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
