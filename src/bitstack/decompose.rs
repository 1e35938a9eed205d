//! BitStack's decomposition of one weight matrix (Wang et al., ICLR 2025, section 2.1):
//!
//! 1. Activation-aware scaling: W' = W diag(s), s_j the root mean square of input channel j
//!    over the calibration tokens (the paper's per-channel activation norm), so the error the
//!    decomposition leaves is weighed by how strongly each input is driven. At run time the
//!    input is divided by s instead.
//! 2. Absolute-value decomposition, repeated on the residual: R_0 = W'; each step stores the
//!    sign of R (1 bit per weight) and a rank-r approximation U V of |R|, and subtracts
//!    S * (U V). Each step's block costs about one bit per weight, and the stack of them
//!    approaches W' as blocks are added: a prefix of any length is a model.
//!
//! The factors are stored as f16 (as the paper's); the residual is computed from the rounded
//! factors, so the next block corrects their rounding too.

use half::f16;
use rayon::prelude::*;

use super::low_rank;
use crate::kernels::sign_blocks::SignBlock;
use crate::model::{ActivationObserver, LinearGroup};

/// One residual block: sign bits row by row (`SignBlock`'s layout) and the magnitude factors.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub signs: Vec<u64>,
    /// [rows][rank]
    pub u: Vec<f16>,
    /// [rank][cols]
    pub v: Vec<f16>,
}

/// The factors of a block in f32, as the kernels take them.
pub struct BlockF32 {
    pub u: Vec<f32>,
    pub v: Vec<f32>,
}

impl Block {
    /// Bytes a block of this shape takes, in memory and in the file.
    pub fn bytes_for(rows: usize, cols: usize, rank: usize) -> usize {
        rows * SignBlock::words_per_row(cols) * 8 + 2 * rank * (rows + cols)
    }

    pub fn to_f32(&self) -> BlockF32 {
        BlockF32 { u: self.u.iter().map(|x| x.to_f32()).collect(), v: self.v.iter().map(|x| x.to_f32()).collect() }
    }
}

impl BlockF32 {
    pub fn view<'a>(&'a self, b: &'a Block, rows: usize, cols: usize, rank: usize) -> SignBlock<'a> {
        SignBlock { rows, cols, rank, signs: &b.signs, u: &self.u, v: &self.v }
    }
}

/// A matrix decomposed: its input scale and its blocks, most significant first.
pub struct MatrixStack {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// s: the scaled weight is W diag(s)
    pub scale: Vec<f32>,
    pub blocks: Vec<Block>,
    /// ||R_k||^2 / ||W'||^2 after k + 1 blocks (the scaled residual's share left)
    pub residual: Vec<f64>,
}

/// Rank 4 (the paper uses 16): measured on the synth TinyLlama with 8 blocks per matrix, rank 4
/// gave a lower KL at every size from 2 to 9 bits per weight (0.33 against 0.91 at 4.75 bits)
/// and decodes 2.6x faster (README "BitStack"); random weights have nearly flat magnitudes,
/// so trained ones may want more (`--rank`). Lowered further for small matrices, so that the
/// factors cost at most a quarter of the sign bits: 16 r (rows + cols) <= rows cols / 4 (a
/// 64 x 64 matrix gets rank 1).
pub fn default_rank(rows: usize, cols: usize) -> usize {
    (rows * cols / (64 * (rows + cols))).clamp(1, 4)
}

/// Decomposes `w` ([rows][cols]) scaled by `scale` into `iterations` blocks of rank `rank`.
pub fn decompose_matrix(w: &[f32], rows: usize, cols: usize, scale: &[f32], rank: usize, iterations: usize, seed: u64) -> MatrixStack {
    assert!(w.len() == rows * cols && scale.len() == cols && rows > 0 && cols > 0);
    let rank = rank.clamp(1, rows.min(cols));
    let words = SignBlock::words_per_row(cols);
    // Every pass over the matrix is split over rows: the decomposition is mostly these passes
    // and the GEMMs of the low-rank step.
    let mut r = vec![0f32; w.len()];
    r.par_chunks_mut(cols).zip(w.par_chunks(cols)).for_each(|(r, w)| r.iter_mut().zip(w.iter().zip(scale)).for_each(|(r, (&x, &s))| *r = x * s));
    let energy = |r: &[f32]| r.par_chunks(cols).map(|row| row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>()).sum::<f64>();
    let total = energy(&r).max(f64::MIN_POSITIVE);
    let mut blocks = Vec::with_capacity(iterations);
    let mut residual = Vec::with_capacity(iterations);
    let mut magnitude = vec![0f32; r.len()];
    for k in 0..iterations {
        let mut signs = vec![0u64; rows * words];
        signs.par_chunks_mut(words).zip(r.par_chunks(cols)).zip(magnitude.par_chunks_mut(cols)).for_each(|((bits, row), m)| {
            for (j, (&x, m)) in row.iter().zip(m.iter_mut()).enumerate() {
                // The paper's sign(0) = +1.
                bits[j / 64] |= u64::from(x >= 0.0) << (j % 64);
                *m = x.abs();
            }
        });
        let lr = low_rank::approximate(&magnitude, rows, cols, rank, seed.wrapping_add(k as u64));
        let block = Block { signs, u: lr.u.iter().map(|&x| f16::from_f32(x)).collect(), v: lr.v.iter().map(|&x| f16::from_f32(x)).collect() };
        // R -= S * (U V), from the stored (rounded) factors: -block added to the residual.
        let f = block.to_f32();
        let negated = BlockF32 { u: f.u.iter().map(|x| -x).collect(), v: f.v };
        negated.view(&block, rows, cols, rank).add_dense_rows(0, &mut r);
        residual.push(energy(&r) / total);
        blocks.push(block);
    }
    MatrixStack { rows, cols, rank, scale: scale.to_vec(), blocks, residual }
}

/// The scales s of every linear input: root mean square of each channel over the tokens seen
/// (as the paper's activation norm, up to a constant), floored so that no scale is 0.
#[derive(Default)]
pub struct ChannelScales {
    sums: std::collections::HashMap<(usize, LinearGroup), (Vec<f64>, usize)>,
}

impl ActivationObserver for ChannelScales {
    fn observe(&mut self, layer: usize, group: LinearGroup, x: &mut [f32], cols: usize) {
        let (sum, rows) = self.sums.entry((layer, group)).or_insert_with(|| (vec![0.0; cols], 0));
        for row in x.chunks_exact(cols) {
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64 * v as f64);
            *rows += 1;
        }
    }
}

impl ChannelScales {
    /// s for the input of `group` in `layer` (None if it was never seen).
    pub fn scale(&self, layer: usize, group: LinearGroup) -> Option<Vec<f32>> {
        let (sum, rows) = self.sums.get(&(layer, group))?;
        let rms: Vec<f64> = sum.iter().map(|s| (s / (*rows).max(1) as f64).sqrt()).collect();
        // A channel that never fired still gets some weight: 1e-3 of the mean channel's.
        let floor = 1e-3 * rms.iter().sum::<f64>() / rms.len().max(1) as f64;
        Some(rms.iter().map(|&x| x.max(floor).max(1e-12) as f32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    #[test]
    fn each_block_shrinks_the_scaled_residual_and_the_stack_rebuilds_the_weight() {
        let (rows, cols) = (48, 80);
        let mut rng = Rng::new(5);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let scale: Vec<f32> = (0..cols).map(|j| 0.5 + (j % 7) as f32).collect();
        let st = decompose_matrix(&w, rows, cols, &scale, 4, 12, 1);
        assert_eq!(st.blocks.len(), 12);
        for k in 1..st.residual.len() {
            assert!(st.residual[k] < st.residual[k - 1], "block {k} did not reduce the residual: {:?}", st.residual);
        }
        // One block already carries the signs: about 1 - 2/pi of uniform weights' energy is left
        // by sign times a good magnitude; 12 blocks leave far less.
        assert!(st.residual[0] < 0.5 && st.residual[11] < 0.02, "{:?}", st.residual);
        // The sum of the blocks, divided by the scale, is the weight within what is left.
        let mut rebuilt = vec![0f32; rows * cols];
        for b in &st.blocks {
            let f = b.to_f32();
            f.view(b, rows, cols, st.rank).add_dense_rows(0, &mut rebuilt);
        }
        let err: f64 = rebuilt.iter().enumerate().map(|(k, &x)| ((x / scale[k % cols] - w[k]) * scale[k % cols]) as f64).map(|e| e * e).sum::<f64>();
        let total: f64 = w.iter().enumerate().map(|(k, &x)| ((x * scale[k % cols]) as f64).powi(2)).sum();
        assert!((err / total - st.residual[11]).abs() < 1e-4, "{} vs {}", err / total, st.residual[11]);
    }

    #[test]
    fn ranks_are_four_and_shrink_for_small_matrices() {
        assert_eq!(default_rank(2048, 2048), 4);
        assert_eq!(default_rank(5632, 2048), 4);
        assert_eq!(default_rank(64, 64), 1);
        assert_eq!(default_rank(256, 512), 2);
    }
}
