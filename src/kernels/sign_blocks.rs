//! Sign-matrix blocks times a vector: the decode product of BitStack (Wang et al., ICLR 2025,
//! issue 17), which stores a weight as a stack of residual blocks W_b = S_b * (U_b V_b): S_b the
//! sign of the residual (one bit per weight), U_b V_b a rank-r approximation of its magnitude.
//!
//! y += W_b x = sum_c U_b[:, c] * (S_b (V_b[c, :] * x)): the r scaled copies z_c = V_b[c] * x
//! are made once per call and quantized to int8 (as llama.cpp quantizes activations), then
//! every row reads its sign bits once for all r of them. A sign dot product is 2 (sum of z over
//! the set bits) - (sum of z): on AVX-512 VNNI, 64 bits become 64 bytes of 0 / 1 and one
//! vpdpbusd per rank sums z over them. The integer sums are exact, so the SIMD kernel and its
//! portable twin give the same result bit for bit.
//!
//! Many tokens at once (prefill, evaluation) instead rebuild rows of the dense block
//! (`add_dense_rows`: U V by the GEMM, then the signs) and multiply them with the float GEMM.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
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
        // 64 rows at a time: the magnitudes stay in cache and no matrix-sized buffer is made.
        const PANEL: usize = 64;
        let mut magnitude = vec![0f32; PANEL.min(n) * self.cols];
        for (p, out) in out.chunks_mut(PANEL * self.cols).enumerate() {
            let (first, rows) = (r0 + p * PANEL, out.len() / self.cols);
            let magnitude = &mut magnitude[..out.len()];
            super::linear(&self.u[first * self.rank..(first + rows) * self.rank], rows, self.rank, &vt, self.cols, magnitude);
            out.par_chunks_mut(self.cols).zip(magnitude.par_chunks(self.cols)).enumerate().for_each(|(i, (o, m))| {
                let bits = &self.signs[(first + i) * words..(first + i + 1) * words];
                for (j, (o, &m)) in o.iter_mut().zip(m).enumerate() {
                    // +m where the bit is set, -m where not: flip the float's sign bit.
                    let flip = (!bits[j / 64] >> (j % 64) & 1) as u32;
                    *o += f32::from_bits(m.to_bits() ^ (flip << 31));
                }
            });
        }
    }
}

/// [cols][rows] from [rows][cols], in parallel over bands of 16 output rows.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    if a.is_empty() {
        return t;
    }
    t.par_chunks_mut(16 * rows).enumerate().for_each(|(band, t)| {
        let j0 = band * 16;
        for (i, row) in a.chunks_exact(cols).enumerate() {
            for (dj, &x) in row[j0..j0 + t.len() / rows].iter().enumerate() {
                t[dj * rows + i] = x;
            }
        }
    });
    t
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Rows whose sign bits meet each loaded vector of z together (a multiple of it is ROWS_PER_TASK).
const ROWS: usize = 4;

/// The kernel that counts z over the set bits: `(signs of n rows, n, zq, rank, out)`.
type SignDots = fn(&[u64], usize, &[i8], usize, &mut [i32]);

/// The integer sign-dot kernel this CPU runs (AVX-512 VNNI, else portable).
fn best_sign_dots() -> SignDots {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni") {
        // SAFETY: the features it needs were just detected.
        return |s, n, z, rank, out| unsafe { sign_dots_vnni(s, n, z, rank, out) };
    }
    sign_dots_portable
}

/// y += W_b x with the best kernel for this CPU.
pub fn sign_block_matvec(b: &SignBlock, x: &[f32], y: &mut [f32]) {
    run(std::slice::from_ref(b), x, y, best_sign_dots());
}

/// The portable twin of `sign_block_matvec` (the same result bit for bit).
pub fn sign_block_matvec_portable(b: &SignBlock, x: &[f32], y: &mut [f32]) {
    run(std::slice::from_ref(b), x, y, sign_dots_portable);
}

/// y += sum_b W_b x over blocks of the same shape (a stack of one matrix) in one pass: each
/// task takes its rows through every block, so a matrix costs one parallel loop, not one per
/// block. Equal bit for bit to adding the blocks one by one in order.
pub fn sign_blocks_matvec(blocks: &[SignBlock], x: &[f32], y: &mut [f32]) {
    run(blocks, x, y, best_sign_dots());
}

/// z_c = V[c] * x quantized to int8 per rank (as llama.cpp quantizes activations): `q` padded
/// with zeros to whole 64-column words and stored 64 columns at a time for all ranks together
/// ([words][rank][64]: the vectors one word of sign bits meets are adjacent), a scale and the
/// exact sum of the quantized values per rank.
pub struct QuantizedZ {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
    pub totals: Vec<i32>,
}

impl QuantizedZ {
    pub fn new(v: &[f32], x: &[f32], rank: usize) -> QuantizedZ {
        let cols = x.len();
        let words = SignBlock::words_per_row(cols);
        let mut q = vec![0i8; rank * words * 64];
        let (mut scale, mut totals) = (vec![0f32; rank], vec![0i32; rank]);
        let mut z = vec![0f32; cols];
        for (c, vc) in v.chunks_exact(cols.max(1)).take(rank).enumerate() {
            z.iter_mut().zip(vc.iter().zip(x)).for_each(|(z, (&v, &x))| *z = v * x);
            let max = super::ops::max_abs(&z);
            scale[c] = max / 127.0;
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            for (j, &zj) in z.iter().enumerate() {
                let v = (zj * inv).round() as i8;
                q[(j / 64 * rank + c) * 64 + j % 64] = v;
                totals[c] += v as i32;
            }
        }
        QuantizedZ { q, scale, totals }
    }
}

/// `sign_dots(words of n rows, n, zq, rank, out)` writes out[r * rank + c] = the sum of zq_c
/// over row r's set bits; a sign dot is then 2 that - total_c, exact in integers.
fn run(blocks: &[SignBlock], x: &[f32], y: &mut [f32], sign_dots: SignDots) {
    let Some(first) = blocks.first() else { return };
    let (rows, cols) = (first.rows, first.cols);
    for b in blocks {
        assert!(b.rows == rows && b.cols == cols, "blocks of one matrix share its shape");
        b.check(x, y);
    }
    let blocks: Vec<&SignBlock> = blocks.iter().filter(|b| b.rank > 0).collect();
    if rows == 0 || cols == 0 || blocks.is_empty() {
        return; // W_b x is 0
    }
    let words = SignBlock::words_per_row(cols);
    let zs: Vec<QuantizedZ> = blocks.iter().map(|b| QuantizedZ::new(b.v, x, b.rank)).collect();
    let max_rank = blocks.iter().map(|b| b.rank).max().unwrap_or(0);
    y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each_init(
        || vec![0i32; ROWS * max_rank],
        |t, (task, ys)| {
            for (g, yg) in ys.chunks_mut(ROWS).enumerate() {
                let i0 = task * ROWS_PER_TASK + g * ROWS;
                let n = yg.len();
                for (b, z) in blocks.iter().zip(&zs) {
                    let rank = b.rank;
                    sign_dots(&b.signs[i0 * words..(i0 + n) * words], n, &z.q, rank, &mut t[..n * rank]);
                    for (r, yi) in yg.iter_mut().enumerate() {
                        let u = &b.u[(i0 + r) * rank..(i0 + r + 1) * rank];
                        let dots = &t[r * rank..(r + 1) * rank];
                        *yi += (0..rank).map(|c| u[c] * (z.scale[c] * (2 * dots[c] - z.totals[c]) as f32)).sum::<f32>();
                    }
                }
            }
        },
    );
}

fn sign_dots_portable(signs: &[u64], n: usize, zq: &[i8], rank: usize, out: &mut [i32]) {
    let words = signs.len() / n;
    for (row, out_r) in signs.chunks_exact(words).zip(out.chunks_exact_mut(rank)) {
        for (c, o) in out_r.iter_mut().enumerate() {
            let mut sum = 0i32;
            for (w, &word) in row.iter().enumerate() {
                let zw = &zq[(w * rank + c) * 64..(w * rank + c + 1) * 64];
                sum += (0..64).filter(|j| word >> j & 1 == 1).map(|j| zw[j] as i32).sum::<i32>();
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn sign_dots_vnni(signs: &[u64], n: usize, zq: &[i8], rank: usize, out: &mut [i32]) {
    let words = signs.len() / n;
    assert!(zq.len() >= words * 64 * rank && out.len() >= n * rank);
    // ROWS rows x up to 4 ranks of accumulators: each vector of z loaded serves ROWS rows (the
    // paper's rank 16 is four groups of 4).
    let mut r0 = 0;
    while r0 < n {
        let rows = if n - r0 >= ROWS { ROWS } else { 1 };
        let mut c0 = 0;
        while c0 < rank {
            let s = &signs[r0 * words..(r0 + rows) * words];
            let o = &mut out[r0 * rank..];
            c0 += match (rows, rank - c0) {
                (ROWS, 4..) => sign_dots_tile_vnni::<ROWS, 4>(s, words, zq, rank, c0, o),
                (ROWS, _) => sign_dots_tile_vnni::<ROWS, 1>(s, words, zq, rank, c0, o),
                (_, 4..) => sign_dots_tile_vnni::<1, 4>(s, words, zq, rank, c0, o),
                _ => sign_dots_tile_vnni::<1, 1>(s, words, zq, rank, c0, o),
            };
        }
        r0 += rows;
    }
}

/// Rows 0..R of `signs` (`words` each) against ranks c0..c0 + G; returns G. A word of 64 sign
/// bits becomes 64 bytes of 0 / 1 (one masked move), which vpdpbusd multiplies with 64 int8
/// values of z per rank: one instruction per 64 weights and rank.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn sign_dots_tile_vnni<const R: usize, const G: usize>(signs: &[u64], words: usize, zq: &[i8], rank: usize, c0: usize, out: &mut [i32]) -> usize {
    use std::arch::x86_64::*;
    assert!(signs.len() >= R * words && c0 + G <= rank && zq.len() >= words * 64 * rank && out.len() >= (R - 1) * rank + c0 + G);
    let ones = _mm512_set1_epi8(1);
    let mut acc = [[_mm512_setzero_si512(); G]; R];
    for w in 0..words {
        // In bounds: the assert above.
        let bits: [__m512i; R] = std::array::from_fn(|r| _mm512_maskz_mov_epi8(*signs.get_unchecked(r * words + w), ones));
        let zp = zq.as_ptr().add((w * rank + c0) * 64);
        for g in 0..G {
            let zv = _mm512_loadu_si512(zp.add(g * 64) as *const _);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                acc_r[g] = _mm512_dpbusd_epi32(acc_r[g], bits[r], zv);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (g, a) in acc_r.iter().enumerate() {
            out[r * rank + c0 + g] = _mm512_reduce_add_epi32(*a);
        }
    }
    G
}
