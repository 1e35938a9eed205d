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
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
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
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// gate <- silu(gate) * up (SwiGLU).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let level = super::simd_level();
    gate.par_chunks_mut(PAR_MIN_ELEMS).zip(up.par_chunks(PAR_MIN_ELEMS)).for_each(|(g, u)| match level {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        super::SimdLevel::Avx512 => unsafe { silu_mul_avx512(g, u) },
        _ => silu_mul_generic(g, u),
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    silu_mul_generic(gate, up)
}

#[inline(always)]
fn silu_mul_generic(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_fast(-*g)) * u;
    }
}

pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(PAR_MIN_ELEMS).zip(y.par_chunks(PAR_MIN_ELEMS)).for_each(|(xs, ys)| {
        for (a, &b) in xs.iter_mut().zip(ys) {
            *a += b;
        }
    });
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
    /// Positions per KV head in the cache buffers: a multiple of 16, >= pos0 + tokens.
    pub kv_stride: usize,
}

/// Causal grouped-query attention of `q` ([tokens][n_heads * head_dim]) over the cache into `out`:
/// `k_cache` is [n_kv_heads][head_dim][kv_stride] (transposed), `v_cache` [n_kv_heads][kv_stride]
/// [head_dim], both valid up to pos0 + tokens. Query token t sees keys 0..=pos0 + t.
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

/// All heads of one query token: scores, softmax, weighted sum of values.
#[inline(always)]
fn attend_row<const FMA: bool>(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, t: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let (hd, stride) = (s.head_dim, s.kv_stride);
    debug_assert_eq!(stride % LANES, 0);
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_keys = s.pos0 + t + 1;
    let key_blocks = n_keys.div_ceil(LANES);
    scores.resize(key_blocks * LANES, 0.0);
    let dim_blocks = hd / LANES;
    for h in 0..s.n_heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let kt = &k_cache[kvh * hd * stride..(kvh + 1) * hd * stride];
        // scores[j] = q . k_j down the transposed keys (stride pads the last block).
        let mut jb = 0;
        while jb + 4 <= key_blocks {
            score_blocks::<4, FMA>(qh, kt, stride, jb, scale, scores);
            jb += 4;
        }
        while jb < key_blocks {
            score_blocks::<1, FMA>(qh, kt, stride, jb, scale, scores);
            jb += 1;
        }
        let probs = &mut scores[..n_keys];
        softmax(probs);
        // out_h = sum_j p_j v_j.
        let vh = &v_cache[kvh * stride * hd..(kvh * stride + n_keys) * hd];
        let oh = &mut out[h * hd..(h + 1) * hd];
        let mut db = 0;
        while db + 4 <= dim_blocks {
            value_blocks::<4, FMA>(probs, vh, hd, db, oh);
            db += 4;
        }
        while db < dim_blocks {
            value_blocks::<1, FMA>(probs, vh, hd, db, oh);
            db += 1;
        }
        for d in dim_blocks * LANES..hd {
            oh[d] = probs.iter().zip(vh.chunks_exact(hd)).map(|(&p, vj)| p * vj[d]).sum();
        }
    }
}

/// Scores of key blocks jb..jb+N (16 keys each): N independent accumulators in registers.
#[inline(always)]
fn score_blocks<const N: usize, const FMA: bool>(qh: &[f32], kt: &[f32], stride: usize, jb: usize, scale: f32, scores: &mut [f32]) {
    let mut acc = [[0f32; LANES]; N];
    for (d, &qd) in qh.iter().enumerate() {
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let at = d * stride + (jb + b) * LANES;
            let k16: &[f32; LANES] = kt[at..at + LANES].try_into().unwrap();
            for l in 0..LANES {
                acc_b[l] = madd::<FMA>(qd, k16[l], acc_b[l]);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for l in 0..LANES {
            scores[(jb + b) * LANES + l] = acc_b[l] * scale;
        }
    }
}

/// Dimension blocks db..db+N (16 each) of sum_j p_j v_j: N independent accumulators.
#[inline(always)]
fn value_blocks<const N: usize, const FMA: bool>(probs: &[f32], vh: &[f32], hd: usize, db: usize, oh: &mut [f32]) {
    let mut acc = [[0f32; LANES]; N];
    for (&p, vj) in probs.iter().zip(vh.chunks_exact(hd)) {
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let d0 = (db + b) * LANES;
            let v16: &[f32; LANES] = vj[d0..d0 + LANES].try_into().unwrap();
            for l in 0..LANES {
                acc_b[l] = madd::<FMA>(p, v16[l], acc_b[l]);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        oh[(db + b) * LANES..(db + b + 1) * LANES].copy_from_slice(acc_b);
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

    #[test]
    fn simd_attention_and_silu_match_portable() {
        if super::super::simd_level() != super::super::SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let s = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 24, pos0: 3, kv_stride: 16 };
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let k: Vec<f32> = (0..2 * 16 * 24).map(val).collect();
        let v: Vec<f32> = (0..2 * 16 * 24).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..96).map(|i| val(i + 101)).collect();
        for t in 0..8 {
            let (mut a, mut b) = (vec![0f32; 96], vec![0f32; 96]);
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            unsafe { attend_row_avx512(&q, &k, &v, s, t, &mut sa, &mut a) };
            attend_row::<false>(&q, &k, &v, s, t, &mut sb, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "t={t}: {x} vs {y}");
            }
        }
        let mut g1: Vec<f32> = (0..1000).map(|i| val(i) * 20.0).collect();
        let mut g2 = g1.clone();
        let up: Vec<f32> = (0..1000).map(|i| val(i + 5)).collect();
        unsafe { silu_mul_avx512(&mut g1, &up) };
        silu_mul_generic(&mut g2, &up);
        for (x, y) in g1.iter().zip(&g2) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
