//! Matrix-vector product for decode: y[n] = dot(w[n, :], x). Memory-bound, so the work is split
//! over threads by rows and each row is one streaming SIMD dot product.

use rayon::prelude::*;

use super::{simd_level, SimdLevel};
use crate::tensor::Encoded;

/// Rows per parallel task: large enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;

/// The rows of a weight matrix [n, k]: f32 in memory, or encoded blocks decoded row by row.
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    Encoded(Encoded<'a>),
}

impl<'a> WeightRows<'a> {
    /// Row `r` as f32: borrowed, or decoded into `buf`.
    #[inline]
    pub fn row<'b>(&'b self, r: usize, k: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match self {
            WeightRows::F32(w) => &w[r * k..(r + 1) * k],
            WeightRows::Encoded(e) => {
                buf.resize(k, 0.0);
                e.decode_rows(r, buf);
                buf
            }
        }
    }
}

/// With `accumulate`, y += W x instead of y = W x.
pub fn matvec(w: &[f32], n: usize, k: usize, x: &[f32], y: &mut [f32], accumulate: bool) {
    assert_eq!(w.len(), n * k);
    matmul_few_rows(WeightRows::F32(w), n, k, x, 1, y, accumulate)
}

/// y[i, r] = dot(w[r, :], x[i, :]) for a few token rows (m small): each weight row is read once
/// (an encoded one decoded once) and used for every token, which is what matters when weights
/// stream from memory.
pub fn matmul_few_rows(w: WeightRows, n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
    if let WeightRows::F32(w) = w {
        assert_eq!(w.len(), n * k);
    }
    assert_eq!(x.len(), m * k);
    if k == 0 {
        // Empty dot products (and chunks of 0 below would panic).
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    let level = simd_level();
    rows_for_tokens(n, m, y, accumulate, ROWS_PER_TASK, Vec::new, |buf, r, out| {
        let wr = w.row(r, k, buf);
        for (o, xi) in out.iter_mut().zip(x.chunks_exact(k)) {
            *o = dot_with(level, wr, xi);
        }
    });
}

/// y[i, r] (or y += that) for `m` tokens and `n` output rows, in parallel over blocks of
/// `rows_per_task` rows: `row(state, r, out)` fills out[i] for every token i from weight row r
/// (`state` is per task: a decode buffer, say), so each weight row is read once for all tokens.
/// One token writes y directly; several go through a buffer in row order, scattered after.
pub(crate) fn rows_for_tokens<S>(
    n: usize,
    m: usize,
    y: &mut [f32],
    accumulate: bool,
    rows_per_task: usize,
    init: impl Fn() -> S + Sync + Send,
    row: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    assert_eq!(y.len(), m * n);
    if m == 0 {
        return; // no tokens, nothing to write (and chunks of 0 would panic)
    }
    let write = |out: &mut f32, v: f32| *out = if accumulate { *out + v } else { v };
    if m == 1 {
        y.par_chunks_mut(rows_per_task).enumerate().for_each_init(init, |state, (t, ys)| {
            for (i, out) in ys.iter_mut().enumerate() {
                let mut v = [0f32];
                row(state, t * rows_per_task + i, &mut v);
                write(out, v[0]);
            }
        });
        return;
    }
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(rows_per_task * m).enumerate().for_each_init(init, |state, (t, ys)| {
        for (j, yr) in ys.chunks_exact_mut(m).enumerate() {
            row(state, t * rows_per_task + j, yr);
        }
    });
    for (r, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            write(&mut y[i * n + r], v);
        }
    }
}

#[inline]
fn dot_with(level: SimdLevel, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only selected when the CPU reports avx512f; lengths are equal.
        SimdLevel::Avx512 => unsafe { dot_avx512(a, b) },
        _ => dot_portable(a, b),
    }
}

/// Portable dot product with four independent accumulators (the reference for the SIMD one).
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, acc_j) in acc.iter_mut().enumerate() {
            *acc_j = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), _mm512_loadu_ps(pb.add(i + 16 * j)), *acc_j);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
        acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, pa.add(i)), _mm512_maskz_loadu_ps(mask, pb.add(i)), acc[1]);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}
