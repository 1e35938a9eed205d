//! int8 quantization for the integer path: symmetric int8 weights (`Int8Linear`), static
//! activation scales from calibration (`calibration`, built on the activation statistics of
//! `stats`), and the W8A8 linear op as the CPU runs it (`w8a8`), shared by decode, the LM head
//! and the CPU reference accelerator so that all compute the same numbers from the same weights.
//! The rounding itself is `kernels::quantize`.

pub mod calibration;
pub mod stats;
pub mod weight_cache;

use std::sync::Arc;

use rayon::prelude::*;

use crate::kernels::matvec::WeightRows;
use crate::kernels::ops::max_abs;
use crate::kernels::int8_gemm::{gemm_i8, gemm_packed_group, Epilogue, Int8Kernel, PackedI8Acts, PackedI8Weights};
use crate::kernels::quantize::{quantize, quantize_row, scale_for};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightGranularity {
    PerTensor,
    PerChannel,
}

/// A linear layer quantized to int8: symmetric weights with one scale per tensor or per output
/// row, and its float bias. This is what crosses the accelerator boundary: an accelerator reads
/// the plain weights (`int8_rows`) and lays them out for itself; the CPU's own int8 work (decode,
/// the LM head, the CPU reference accelerator) uses the copy packed for the CPU kernels, the only
/// copy kept in memory.
pub struct Int8Linear {
    /// Packed for the CPU int8 kernels.
    pub weights: PackedI8Weights,
    /// One scale (per tensor) or one per output row.
    pub scales: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Int8Linear {
    /// Quantizes f32 weights [n, k] (PyTorch layout).
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, granularity: WeightGranularity) -> Self {
        Self::from_rows(WeightRows::F32(w), n, k, bias, granularity)
    }

    /// Quantizes a weight tensor [n, k] as stored: an encoded one (F16, BF16, ggml blocks) is
    /// decoded row by row, never whole.
    pub fn from_tensor(w: &Tensor, bias: Option<&[f32]>, granularity: WeightGranularity) -> Self {
        let rows = match w.encoded() {
            Some(e) => WeightRows::Encoded(e),
            None => WeightRows::F32(w.data()),
        };
        Self::from_rows(rows, w.shape()[0], w.shape()[1], bias, granularity)
    }

    /// Quantizes the rows in parallel as they are packed, each read once per channel scale (an
    /// encoded row decoded into one buffer per task); a tensor scale first needs every row's
    /// maximum.
    fn from_rows(w: WeightRows, n: usize, k: usize, bias: Option<&[f32]>, granularity: WeightGranularity) -> Self {
        let tensor_scale = match granularity {
            WeightGranularity::PerTensor => Some(scale_for((0..n).into_par_iter().map_init(Vec::new, |buf, r| max_abs(w.row(r, k, buf))).reduce(|| 0.0, f32::max))),
            WeightGranularity::PerChannel => None,
        };
        let (weights, row_scales) = PackedI8Weights::from_rows(n, k, Vec::new, |buf, r, out| {
            let row = w.row(r, k, buf);
            let scale = tensor_scale.unwrap_or_else(|| scale_for(max_abs(row)));
            quantize_row(row, 1.0 / scale, out);
            scale
        });
        let scales = match tensor_scale {
            Some(s) => vec![s],
            None => row_scales,
        };
        Int8Linear { weights, scales, bias: bias.map(|b| b.to_vec()) }
    }

    pub fn out_features(&self) -> usize {
        self.weights.n
    }

    pub fn in_features(&self) -> usize {
        self.weights.k
    }

    /// The int8 weights as plain rows, [out_features][in_features] (unpacked from the CPU layout).
    pub fn int8_rows(&self) -> Vec<i8> {
        self.weights.unpack()
    }

    /// Scale of output column `j`.
    #[inline(always)]
    pub fn scale(&self, j: usize) -> f32 {
        self.scales[if self.scales.len() == 1 { 0 } else { j }]
    }
}


/// The W8A8 linear op on the CPU: quantize `input` ([rows, k]) with the static scale, int8 GEMM
/// with each weight, dequantize (+ bias, + residual) in the GEMM's epilogue. The input is
/// quantized while it is packed, once for all the linears it feeds. `outputs[i]` receives linear
/// i; with `residual` the single output is added to (x += W x_q).
pub fn w8a8(kernel: Int8Kernel, input: &[f32], rows: usize, input_scale: f32, linears: &[Arc<Int8Linear>], residual: bool, outputs: &mut [&mut [f32]]) {
    let xp = PackedI8Acts::quantized(input, rows, linears[0].in_features(), input_scale, kernel);
    assert_eq!(linears.len(), outputs.len());
    let scales: Vec<Vec<f32>> = linears.iter().map(|lin| (0..lin.out_features()).map(|j| input_scale * lin.scale(j)).collect()).collect();
    let epilogues: Vec<Dequantize> = linears
        .iter()
        .zip(outputs.iter_mut())
        .zip(&scales)
        .map(|((lin, out), scales)| {
            let n = lin.out_features();
            assert_eq!(out.len(), rows * n);
            Dequantize { out: out.as_mut_ptr(), ld: n, scales, bias: lin.bias.as_deref(), residual }
        })
        .collect();
    let jobs: Vec<(&PackedI8Weights, &dyn Epilogue)> = linears.iter().zip(&epilogues).map(|(lin, e)| (&lin.weights, e as &dyn Epilogue)).collect();
    gemm_packed_group(&xp, &jobs);
}

/// W8A8 with a dynamic activation scale per row (each row's own max |x|), for the LM head: it
/// runs once per prompt or token, so there is no static scale to keep. Returns [rows][n].
pub fn w8a8_dynamic(kernel: Int8Kernel, x: &[f32], rows: usize, lin: &Int8Linear) -> Vec<f32> {
    let (k, n) = (lin.in_features(), lin.out_features());
    let mut xq = vec![0i8; x.len()];
    let mut row_scales = Vec::with_capacity(rows);
    for (r, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(k)) {
        let s = scale_for(max_abs(r));
        quantize(r, s, q);
        row_scales.push(s);
    }
    let mut acc = vec![0i32; rows * n];
    gemm_i8(kernel, &xq, rows, &lin.weights, &mut acc);
    let mut y = vec![0f32; rows * n];
    for ((out, a), s) in y.chunks_exact_mut(n).zip(acc.chunks_exact(n)).zip(&row_scales) {
        for (j, (o, &v)) in out.iter_mut().zip(a).enumerate() {
            *o = v as f32 * (s * lin.scale(j));
        }
    }
    y
}

/// out = acc * (input_scale * weight_scale) + bias, or out += that for a residual graph.
struct Dequantize<'a> {
    out: *mut f32,
    ld: usize,
    scales: &'a [f32],
    bias: Option<&'a [f32]>,
    residual: bool,
}
// SAFETY: tiles are disjoint (Epilogue contract).
unsafe impl Sync for Dequantize<'_> {}

impl Epilogue for Dequantize<'_> {
    unsafe fn tile(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32], ld: usize) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd_level() == crate::kernels::SimdLevel::Avx512 {
            return self.tile_avx512(row0, col0, tokens, cols, acc, ld);
        }
        self.tile_portable(row0, col0, tokens, cols, acc, ld)
    }
}

impl Dequantize<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_avx512(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32], ld: usize) {
        self.tile_portable(row0, col0, tokens, cols, acc, ld)
    }

    #[inline(always)]
    unsafe fn tile_portable(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32], ld: usize) {
        let scales = &self.scales[col0..col0 + cols];
        for t in 0..tokens {
            let o = std::slice::from_raw_parts_mut(self.out.add((row0 + t) * self.ld + col0), cols);
            let a = &acc[t * ld..t * ld + cols];
            match (self.bias, self.residual) {
                (None, false) => o.iter_mut().zip(a).zip(scales).for_each(|((o, &a), &s)| *o = a as f32 * s),
                (None, true) => o.iter_mut().zip(a).zip(scales).for_each(|((o, &a), &s)| *o += a as f32 * s),
                (Some(b), res) => {
                    let b = &b[col0..col0 + cols];
                    for j in 0..cols {
                        let v = a[j] as f32 * scales[j] + b[j];
                        o[j] = if res { o[j] + v } else { v };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quantize::quantize_value;

    #[test]
    fn weights_quantize_as_defined_per_channel_and_per_tensor() {
        // Rows of odd lengths and past one panel, a zero row (scale 1) and a row with an outlier.
        for (n, k) in [(1, 1), (33, 7), (70, 130)] {
            let mut w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 3) as f32).collect();
            w[..k].fill(0.0);
            if n > 1 {
                w[k + k / 2] = 40.0;
            }
            for granularity in [WeightGranularity::PerChannel, WeightGranularity::PerTensor] {
                let lin = Int8Linear::new(&w, n, k, None, granularity);
                let row_max = |r: usize| w[r * k..(r + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
                let want_scales: Vec<f32> = match granularity {
                    WeightGranularity::PerChannel => (0..n).map(|r| scale_for(row_max(r))).collect(),
                    WeightGranularity::PerTensor => vec![scale_for((0..n).map(row_max).fold(0f32, f32::max))],
                };
                assert_eq!(lin.scales, want_scales, "{n}x{k} {granularity:?}");
                let want: Vec<i8> = (0..n * k).map(|i| quantize_value(w[i], 1.0 / lin.scale(i / k))).collect();
                assert_eq!(lin.int8_rows(), want, "{n}x{k} {granularity:?}");
            }
        }
    }
}
