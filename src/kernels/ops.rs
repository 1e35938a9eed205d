//! Element-wise and small ops of the transformer: RMSNorm, RoPE, SwiGLU, softmax, causal attention.
//! These are a few percent of the work; they are written for clarity and auto-vectorization.

use rayon::prelude::*;

use super::matvec::dot;

/// RMSNorm of each `dim`-row of `x` into `out`, as Hugging Face computes it: x * rsqrt(mean(x^2) + eps) * w.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
}

/// gate <- silu(gate) * up (SwiGLU).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
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
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
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
    /// Row stride of one kv head's cache ([capacity][head_dim]).
    pub kv_capacity: usize,
}

/// Causal grouped-query attention of `q` ([tokens][n_heads * head_dim]) over the cache
/// (`k_cache`/`v_cache`: [n_kv_heads][capacity][head_dim], valid up to pos0 + tokens) into `out`.
/// Query token t sees keys 0..=pos0 + t. Threads split the query tokens.
pub fn causal_attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    let row = s.n_heads * s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    out.par_chunks_mut(row).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (t, out_row)| {
        let n_keys = s.pos0 + t + 1;
        scores.resize(n_keys, 0.0);
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qh = &q[t * row + h * s.head_dim..t * row + (h + 1) * s.head_dim];
            let kbase = kvh * s.kv_capacity * s.head_dim;
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc = dot(qh, &k_cache[kbase + j * s.head_dim..kbase + (j + 1) * s.head_dim]) * scale;
            }
            softmax(scores);
            let oh = &mut out_row[h * s.head_dim..(h + 1) * s.head_dim];
            oh.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v_cache[kbase + j * s.head_dim..kbase + (j + 1) * s.head_dim];
                for (o, &v) in oh.iter_mut().zip(vj) {
                    *o += p * v;
                }
            }
        }
    });
}
