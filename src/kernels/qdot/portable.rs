//! The portable dot products, for every block type: each block is unpacked to integers (the
//! same unpacking the dequantizers use) and dotted with the int8 activation. The SIMD kernels
//! must give exactly these results.

use super::{Lanes, QuantizedActs};
use crate::tensor::dtype::{f16_at, unpack_k, unpack_legacy, DType, KBlock, QK, QK_K};

/// dot(weight row, activation): the sum of `block_dot_portable` over the row's blocks.
#[inline(always)]
pub fn row_dot_portable(dtype: DType, row: &[u8], a: &QuantizedActs) -> f32 {
    let size = dtype.block().1;
    let mut lanes = Lanes::default();
    for (u, b) in row.chunks_exact(size).enumerate() {
        lanes.add(u, block_dot_portable(dtype, b, a, u));
    }
    lanes.sum()
}

/// The float contribution of block `u` of a row (stored bytes `b`). The float expression is
/// the one every kernel uses:
/// - legacy types: isum * (d_w * d_a) [+ min_w * (d_a * sum_a)];
/// - K-quants: (d_a * d_w) * isum - (d_a * dmin_w) * imin, where isum = sum over groups of
///   scale * (q . a) and imin = sum over groups of min * (sum of a).
#[inline(always)]
pub fn block_dot_portable(dtype: DType, b: &[u8], a: &QuantizedActs, u: usize) -> f32 {
    let da = a.d[u];
    if dtype.block().0 == QK {
        let w = unpack_legacy(dtype, b, &f16_at);
        let qa = &a.qs[QK * u..QK * (u + 1)];
        let off = dtype.offset();
        let isum: i32 = w.q.iter().zip(qa).map(|(&q, &x)| (q as i32 - off) * x as i32).sum();
        let c = isum as f32 * (w.d * da);
        match w.min {
            None => c,
            Some(m) => c + m * (da * a.block_sum(u) as f32),
        }
    } else {
        let mut w = KBlock::default();
        unpack_k(dtype, b, &f16_at, &mut w);
        let qa = &a.qs[QK_K * u..QK_K * (u + 1)];
        let sums = &a.sums[16 * u..16 * (u + 1)];
        let (mut isum, mut imin) = (0i32, 0i32);
        let off = dtype.offset();
        for (g, (q, x)) in w.q.chunks_exact(16).zip(qa.chunks_exact(16)).enumerate() {
            let dot: i32 = q.iter().zip(x).map(|(&q, &x)| (q as i32 - off) * x as i32).sum();
            isum += w.scales[g] * dot;
            imin += w.mins[g] * sums[g] as i32;
        }
        (da * w.d) * isum as f32 - (da * w.dmin) * imin as f32
    }
}
