//! Pure math kernels with no model knowledge. Each SIMD kernel has a portable twin in the same
//! module that tests compare it against; `simd_level()` picks the best one at run time.

pub mod attention;
pub mod bf16_split;
pub mod disjoint;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod gemm_split;
pub mod aligned;
pub mod amx;
pub mod int8_gemm;
pub mod matvec;
pub mod ops;
pub mod qdot;
pub mod quantize;
pub mod sign_blocks;

#[cfg(test)]
mod properties;

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::tensor::Encoded;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Portable,
    Avx512,
}

/// The best instruction set this CPU offers for the float kernels (detected once).
/// `LLM_NPU_SIMD=portable` forces the portable kernels, for testing and comparison.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::env::var("LLM_NPU_SIMD").is_ok_and(|v| v == "portable") {
            return SimdLevel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        SimdLevel::Portable
    })
}

/// y[m, n] = sum_k x[m, k] * w[n, k]: a linear layer with weights in the PyTorch [out, in] layout.
/// One row goes through the matrix-vector kernel, a few rows through its multi-row form (the
/// weights are read once either way), more through the blocked GEMM.
pub fn linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    linear_into(x, m, k, w, n, y, false)
}

/// y[m, n] += x . w^T: a linear layer whose output is added to the residual stream in place.
pub fn linear_accumulate(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    linear_into(x, m, k, w, n, y, true)
}

fn linear_into(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), m * n);
    match m {
        1 => matvec::matvec(w, n, k, x, y, accumulate),
        2..SMALL_BATCH => matvec::matmul_few_rows(matvec::WeightRows::F32(w), n, k, x, m, y, accumulate),
        _ => gemm::gemm_nt(x, m, k, w, n, y, accumulate),
    }
}

/// y[m, n] = x[m, k] . W^T (or y += that) for weights kept encoded (F16, BF16, ggml blocks):
/// decode reads ggml blocks through the integer dot products of `qdot` (activations quantized
/// once per token) and F16 / BF16 rows decoded into the float matrix-vector kernel; larger
/// batches decode panels of `PANEL` rows into f32 and multiply them with the GEMM, so no f32
/// copy of the whole matrix is ever made.
pub fn linear_encoded(x: &[f32], m: usize, w: Encoded, y: &mut [f32], accumulate: bool) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k);
    assert_eq!(y.len(), m * n);
    if w.dtype.is_quantized() && quantized_products_for(m) {
        return qdot::matmul(w, x, m, y, accumulate);
    }
    if m < SMALL_BATCH {
        return matvec::matmul_few_rows(matvec::WeightRows::Encoded(w), n, k, x, m, y, accumulate);
    }
    linear_by_panels(x, m, k, n, y, accumulate, |r0, panel| panel.par_chunks_mut(k).enumerate().for_each(|(i, row)| w.decode_rows(r0 + i, row)));
}

/// y[m, n] = x[m, k] . W^T (or y += that) for a weight that is not stored as f32: `fill_panel(r0,
/// panel)` writes rows r0.. of W into a zeroed panel of up to `PANEL` rows, which the GEMM then
/// multiplies with every token, so no f32 copy of the whole matrix is ever made.
pub fn linear_by_panels(x: &[f32], m: usize, k: usize, n: usize, y: &mut [f32], accumulate: bool, fill_panel: impl Fn(usize, &mut [f32])) {
    const PANEL: usize = 256;
    let mut panel = vec![0f32; PANEL.min(n) * k];
    let mut part = vec![0f32; m * PANEL.min(n)];
    // The activations packed once for all the panels.
    let packed = gemm::PackedF32Acts::new(x, m, k);
    for r0 in (0..n).step_by(PANEL) {
        let rows = PANEL.min(n - r0);
        let panel = &mut panel[..rows * k];
        panel.fill(0.0);
        fill_panel(r0, panel);
        let part = &mut part[..m * rows];
        gemm::gemm_packed(&packed, panel, rows, part, false);
        for (yr, pr) in y.chunks_exact_mut(n).zip(part.chunks_exact(rows)) {
            let out = &mut yr[r0..r0 + rows];
            if accumulate {
                out.iter_mut().zip(pr).for_each(|(o, &p)| *o += p);
            } else {
                out.copy_from_slice(pr);
            }
        }
    }
}

/// Whether ggml blocks times m token rows go through the integer products of `qdot` (activations
/// quantized to int8, as llama.cpp does): always for a few tokens, and for many when the integer
/// GEMM exists here; otherwise panels are decoded to f32 for the float GEMM.
pub fn quantized_products_for(m: usize) -> bool {
    m < SMALL_BATCH || qdot::has_gemm()
}

/// Several linear layers reading the same input (q/k/v, gate/up): the activations are packed for
/// the GEMM once instead of once per weight. `outs[i]` receives x . ws[i].0^T ([m, ws[i].1]).
pub fn linear_many(x: &[f32], m: usize, k: usize, ws: &[(&[f32], usize)], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len());
    if m < SMALL_BATCH {
        for ((w, n), y) in ws.iter().zip(outs.iter_mut()) {
            linear(x, m, k, w, *n, y);
        }
        return;
    }
    gemm::gemm_packed_many(&gemm::PackedF32Acts::new(x, m, k), ws, outs);
}

/// Below this many rows the GEMM's 32-token panels would be mostly padding.
pub const SMALL_BATCH: usize = 8;
