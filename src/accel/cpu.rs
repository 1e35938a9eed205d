//! The CPU reference accelerator: fixed-shape int8 graphs executed with the int8 GEMM kernels.
//! It keeps the NPU's rules (static shapes, static per-tensor activation scales, integer
//! matmuls only) while running on the host cores.

use std::sync::Mutex;
use std::time::Instant;


use super::{Accelerator, CompileReport, LinearGraphSpec};
use crate::error::{Error, Result};
use crate::kernels::int8_gemm::{best_kernel, gemm_packed_with, Epilogue, Int8Kernel, PackedActs, NR};
use crate::quant;

pub struct CpuAccelerator {
    pub kernel: Int8Kernel,
    /// Graphs run one at a time (as on an NPU), so they are serialized here.
    busy: Mutex<()>,
}

impl Default for CpuAccelerator {
    fn default() -> Self {
        CpuAccelerator { kernel: best_kernel(), busy: Mutex::new(()) }
    }
}

/// A compiled graph: its fixed-shape spec.
pub struct CpuGraph {
    pub spec: LinearGraphSpec,
}

impl Accelerator for CpuAccelerator {
    type Graph = CpuGraph;

    fn name(&self) -> String {
        format!("CPU reference accelerator ({})", self.kernel.name())
    }

    fn compile(&self, spec: LinearGraphSpec) -> Result<(CpuGraph, CompileReport)> {
        let t0 = Instant::now();
        if spec.linears.is_empty() || spec.linears.iter().any(|l| l.in_features() != spec.in_features()) {
            return Err(Error::Input(format!("graph {}: linears must share one input width", spec.name)));
        }
        if spec.residual && spec.linears.len() != 1 {
            return Err(Error::Input(format!("graph {}: a residual graph has one output", spec.name)));
        }
        // Workspace this graph needs at run time: its packed int8 input (results go through the
        // GEMM's epilogue tile by tile, no int32 matrix).
        let memory_bytes = spec.rows * spec.in_features().next_multiple_of(4);
        Ok((CpuGraph { spec }, CompileReport { time: t0.elapsed(), memory_bytes }))
    }

    fn execute(&self, graph: &CpuGraph, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()> {
        let spec = &graph.spec;
        let (rows, k) = (spec.rows, spec.in_features());
        if input.len() != rows * k || outputs.len() != spec.linears.len() {
            return Err(Error::Input(format!("graph {}: input of {} values for a [{rows}, {k}] graph", spec.name, input.len())));
        }
        let _one_at_a_time = self.busy.lock().expect("accelerator lock poisoned");
        run_w8a8(self.kernel, input, rows, spec.input_scale, &spec.linears, spec.residual, outputs);
        Ok(())
    }
}

/// The W8A8 linear op: quantize `input` ([rows, k]) with the static scale, int8 GEMM with each
/// weight, dequantize (+ bias, + residual) in the GEMM's epilogue. Shared by the accelerator's
/// graphs and the CPU decode path, so both compute exactly the same numbers from the same int8
/// weights. The input is quantized while it is packed, once for all the linears it feeds.
pub fn run_w8a8(kernel: Int8Kernel, input: &[f32], rows: usize, input_scale: f32, linears: &[std::sync::Arc<quant::QuantLinear>], residual: bool, outputs: &mut [&mut [f32]]) {
    let xp = PackedActs::quantized(input, rows, linears[0].in_features(), input_scale, kernel);
    for (lin, out) in linears.iter().zip(outputs.iter_mut()) {
        let n = lin.out_features();
        assert_eq!(out.len(), rows * n);
        let scales: Vec<f32> = (0..n).map(|j| input_scale * lin.scale(j)).collect();
        let epilogue = Dequantize { out: out.as_mut_ptr(), ld: n, scales: &scales, bias: lin.bias.as_deref(), residual };
        gemm_packed_with(&xp, &lin.weights, &epilogue);
    }
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
    unsafe fn tile(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd_level() == crate::kernels::SimdLevel::Avx512 {
            return self.tile_avx512(row0, col0, tokens, cols, acc);
        }
        self.tile_portable(row0, col0, tokens, cols, acc)
    }
}

impl Dequantize<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_avx512(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32]) {
        self.tile_portable(row0, col0, tokens, cols, acc)
    }

    #[inline(always)]
    unsafe fn tile_portable(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32]) {
        let scales = &self.scales[col0..col0 + cols];
        for t in 0..tokens {
            let o = std::slice::from_raw_parts_mut(self.out.add((row0 + t) * self.ld + col0), cols);
            let a = &acc[t * NR..t * NR + cols];
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
