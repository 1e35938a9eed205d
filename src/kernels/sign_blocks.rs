//! Sign-matrix blocks times a vector: the decode product of BitStack (Wang et al., ICLR 2025,
//! issue 17), which stores a weight as a stack of residual blocks W_b = S_b * (U_b V_b): S_b the
//! sign of the residual (one bit per weight), U_b V_b a rank-r approximation of its magnitude.
//!
//! y += W_b x = sum_c U_b[:, c] * (S_b (V_b[c, :] * x)): the r scaled copies z_c = V_b[c] * x
//! are made once per call, then every row reads its sign bits once for all r of them. A sign
//! dot product is 2 (sum of z over the set bits) - (sum of z), so a set of 16 bits costs one
//! masked add per rank on AVX-512.
//!
//! Many tokens at once (prefill, evaluation) instead rebuild rows of the dense block
//! (`add_dense_rows`: U V by the GEMM, then the signs) and multiply them with the float GEMM.

use rayon::prelude::*;

use super::{simd_level, SimdLevel};

/// One block of a [rows, cols] weight: sign bits row by row (bit j % 64 of word j / 64 of the
/// row is the sign of column j: 1 for +, 0 for -; each row padded to whole words with zeros) and
/// the magnitude factors U [rows][rank] and V [rank][cols].
#[derive(Clone, Copy)]
pub struct SignBlock<'a> {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub signs: &'a [u64],
    pub u: &'a [f32],
    pub v: &'a [f32],
}

impl SignBlock<'_> {
    /// u64 words of sign bits per row.
    pub fn words_per_row(cols: usize) -> usize {
        cols.div_ceil(64)
    }

    fn check(&self, x: &[f32], y: &[f32]) {
        assert_eq!(self.signs.len(), self.rows * Self::words_per_row(self.cols), "sign bits of a {}x{} block", self.rows, self.cols);
        assert!(self.u.len() == self.rows * self.rank && self.v.len() == self.rank * self.cols, "factors of rank {}", self.rank);
        assert!(x.len() == self.cols && y.len() == self.rows);
    }

    /// The dense weight this block stands for, [rows][cols] (tests and references).
    pub fn dense(&self) -> Vec<f32> {
        let words = Self::words_per_row(self.cols);
        let mut w = vec![0f32; self.rows * self.cols];
        for (i, row) in w.chunks_exact_mut(self.cols.max(1)).enumerate().take(self.rows) {
            for (j, wij) in row.iter_mut().enumerate() {
                let magnitude: f32 = (0..self.rank).map(|c| self.u[i * self.rank + c] * self.v[c * self.cols + j]).sum();
                let positive = self.signs[i * words + j / 64] >> (j % 64) & 1 == 1;
                *wij = if positive { magnitude } else { -magnitude };
            }
        }
        w
    }
}

impl SignBlock<'_> {
    /// out[i][..] += row r0 + i of this block, for the `out.len() / cols` rows from r0: U's rows
    /// times V through the GEMM, then each product given its sign.
    pub fn add_dense_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols.max(1);
        assert!(r0 + n <= self.rows && out.len() == n * self.cols);
        if n == 0 || self.rank == 0 {
            return;
        }
        let words = Self::words_per_row(self.cols);
        let vt = transpose(self.v, self.rank, self.cols);
        let mut magnitude = vec![0f32; out.len()];
        super::linear(&self.u[r0 * self.rank..(r0 + n) * self.rank], n, self.rank, &vt, self.cols, &mut magnitude);
        out.par_chunks_mut(self.cols).zip(magnitude.par_chunks(self.cols)).enumerate().for_each(|(i, (o, m))| {
            let bits = &self.signs[(r0 + i) * words..(r0 + i + 1) * words];
            for (j, (o, &m)) in o.iter_mut().zip(m).enumerate() {
                // +m where the bit is set, -m where not: flip the float's sign bit.
                let flip = (!bits[j / 64] >> (j % 64) & 1) as u32;
                *o += f32::from_bits(m.to_bits() ^ (flip << 31));
            }
        });
    }
}

/// [cols][rows] from [rows][cols].
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for (i, row) in a.chunks_exact(cols.max(1)).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            t[j * rows + i] = x;
        }
    }
    t
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Rows whose sign bits meet each loaded vector of z together (a multiple of it is ROWS_PER_TASK).
const ROWS: usize = 4;

/// y += W_b x with the best kernel for this CPU.
pub fn sign_block_matvec(b: &SignBlock, x: &[f32], y: &mut [f32]) {
    let level = simd_level();
    run(b, x, y, |signs, n, z, totals, rank, t| match level {
        // SAFETY: Avx512 is only selected when the CPU has avx512f.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { sign_dots_avx512(signs, n, z, totals, rank, t) },
        _ => sign_dots_portable(signs, n, z, totals, rank, t),
    });
}

/// The portable twin of `sign_block_matvec`.
pub fn sign_block_matvec_portable(b: &SignBlock, x: &[f32], y: &mut [f32]) {
    run(b, x, y, sign_dots_portable);
}

/// `sign_dots(words of n rows, n, z, totals, rank, out)` writes out[r * rank + c] = S_r . z_c.
fn run(b: &SignBlock, x: &[f32], y: &mut [f32], sign_dots: impl Fn(&[u64], usize, &[f32], &[f32], usize, &mut [f32]) + Sync) {
    b.check(x, y);
    let (cols, rank) = (b.cols, b.rank);
    if b.rows == 0 || rank == 0 || cols == 0 {
        return; // W_b x is 0
    }
    // z_c = V[c] * x, padded with zeros to whole 64-column words, stored 16 columns at a time
    // for all ranks together ([cols / 16][rank][16]: the vectors a set of 16 sign bits meets are
    // adjacent), and sum_j z_c[j].
    let words = SignBlock::words_per_row(cols);
    let mut z = vec![0f32; rank * words * 64];
    let mut totals = vec![0f32; rank];
    for (c, vc) in b.v.chunks_exact(cols).enumerate() {
        for (j, (&vj, &xj)) in vc.iter().zip(x).enumerate() {
            let zj = vj * xj;
            z[(j / 16 * rank + c) * 16 + j % 16] = zj;
            totals[c] += zj;
        }
    }
    y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each_init(
        || vec![0f32; ROWS * rank],
        |t, (task, ys)| {
            for (g, yg) in ys.chunks_mut(ROWS).enumerate() {
                let i0 = task * ROWS_PER_TASK + g * ROWS;
                let n = yg.len();
                sign_dots(&b.signs[i0 * words..(i0 + n) * words], n, &z, &totals, rank, &mut t[..n * rank]);
                for (r, yi) in yg.iter_mut().enumerate() {
                    let i = i0 + r;
                    *yi += b.u[i * rank..(i + 1) * rank].iter().zip(&t[r * rank..(r + 1) * rank]).map(|(u, s)| u * s).sum::<f32>();
                }
            }
        },
    );
}

/// out[r * rank + c] = 2 (sum of z_c over row r's set bits) - total_c, 16 lanes per rank like
/// the SIMD kernel.
fn sign_dots_portable(signs: &[u64], n: usize, z: &[f32], totals: &[f32], rank: usize, out: &mut [f32]) {
    let words = signs.len() / n;
    for (row, out_r) in signs.chunks_exact(words).zip(out.chunks_exact_mut(rank)) {
        for (c, o) in out_r.iter_mut().enumerate() {
            let mut lanes = [0f32; 16];
            for (w, &word) in row.iter().enumerate() {
                for j in 0..64 {
                    if word >> j & 1 == 1 {
                        lanes[j % 16] += z[((w * 4 + j / 16) * rank + c) * 16 + j % 16];
                    }
                }
            }
            *o = 2.0 * lanes.iter().sum::<f32>() - totals[c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sign_dots_avx512(signs: &[u64], n: usize, z: &[f32], totals: &[f32], rank: usize, out: &mut [f32]) {
    let words = signs.len() / n;
    assert!(z.len() >= words * 64 * rank && out.len() >= n * rank);
    // ROWS rows x up to 4 ranks of accumulators: each vector of z loaded serves ROWS rows (the
    // paper's rank 16 is four groups of 4).
    let mut r0 = 0;
    while r0 < n {
        let rows = if n - r0 >= ROWS { ROWS } else { 1 };
        let mut c0 = 0;
        while c0 < rank {
            let s = &signs[r0 * words..(r0 + rows) * words];
            c0 += match (rows, rank - c0) {
                (ROWS, 4..) => sign_dots_tile_avx512::<ROWS, 4>(s, words, z, totals, rank, c0, &mut out[r0 * rank..]),
                (ROWS, _) => sign_dots_tile_avx512::<ROWS, 1>(s, words, z, totals, rank, c0, &mut out[r0 * rank..]),
                (_, 4..) => sign_dots_tile_avx512::<1, 4>(s, words, z, totals, rank, c0, &mut out[r0 * rank..]),
                _ => sign_dots_tile_avx512::<1, 1>(s, words, z, totals, rank, c0, &mut out[r0 * rank..]),
            };
        }
        r0 += rows;
    }
}

/// Rows 0..R of `signs` (`words` each) against ranks c0..c0 + G; returns G.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sign_dots_tile_avx512<const R: usize, const G: usize>(signs: &[u64], words: usize, z: &[f32], totals: &[f32], rank: usize, c0: usize, out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    assert!(signs.len() >= R * words && c0 + G <= rank && z.len() >= words * 64 * rank && out.len() >= (R - 1) * rank + c0 + G);
    let mut acc = [[_mm512_setzero_ps(); G]; R];
    for w in 0..words {
        // In bounds: the assert above.
        let bits: [u64; R] = std::array::from_fn(|r| *signs.get_unchecked(r * words + w));
        for q in 0..4 {
            let zp = z.as_ptr().add(((w * 4 + q) * rank + c0) * 16);
            for g in 0..G {
                let zv = _mm512_loadu_ps(zp.add(g * 16));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    acc_r[g] = _mm512_mask_add_ps(acc_r[g], (bits[r] >> (16 * q)) as u16, acc_r[g], zv);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (g, a) in acc_r.iter().enumerate() {
            out[r * rank + c0 + g] = 2.0 * _mm512_reduce_add_ps(*a) - totals[c0 + g];
        }
    }
    G
}
