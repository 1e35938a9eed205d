//! The CPU reference accelerator: fixed-shape int8 graphs executed with the int8 GEMM kernels.
//! It keeps the NPU's rules (static shapes, static per-tensor activation scales, integer
//! matmuls only) while running on the host cores.

use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use super::{Accelerator, CompileReport, LinearGraphSpec};
use crate::error::{Error, Result};
use crate::kernels::int8_gemm::{best_kernel, gemm_i8, Int8Kernel};
use crate::quant;

pub struct CpuAccelerator {
    pub kernel: Int8Kernel,
    /// The accelerator runs one graph at a time, so one workspace (quantized input, int32
    /// accumulators) serves every graph: it grows to the largest graph's needs.
    workspace: Mutex<(Vec<i8>, Vec<i32>)>,
}

impl Default for CpuAccelerator {
    fn default() -> Self {
        CpuAccelerator { kernel: best_kernel(), workspace: Mutex::new((Vec::new(), Vec::new())) }
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
        // Workspace this graph needs: its quantized input and its widest int32 output.
        let widest = spec.linears.iter().map(|l| l.out_features()).max().unwrap_or(0);
        let memory_bytes = spec.rows * spec.in_features() + spec.rows * widest * 4;
        let mut ws = self.workspace.lock().expect("workspace poisoned");
        ws.0.reserve(spec.rows * spec.in_features());
        ws.1.reserve(spec.rows * widest);
        drop(ws);
        Ok((CpuGraph { spec }, CompileReport { time: t0.elapsed(), memory_bytes }))
    }

    fn execute(&self, graph: &CpuGraph, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()> {
        let spec = &graph.spec;
        let (rows, k) = (spec.rows, spec.in_features());
        if input.len() != rows * k || outputs.len() != spec.linears.len() {
            return Err(Error::Input(format!("graph {}: input of {} values for a [{rows}, {k}] graph", spec.name, input.len())));
        }
        let mut guard = self.workspace.lock().expect("workspace poisoned");
        let (xq, acc) = &mut *guard;
        run_w8a8(self.kernel, input, rows, spec.input_scale, &spec.linears, spec.residual, xq, acc, outputs);
        Ok(())
    }
}

/// The W8A8 linear op: quantize `input` ([rows, k]) with the static scale, int8 GEMM with each
/// weight, dequantize (+ bias, + residual). Shared by the accelerator's graphs and the CPU decode
/// path, so both compute exactly the same numbers from the same int8 weights.
#[allow(clippy::too_many_arguments)]
pub fn run_w8a8(
    kernel: Int8Kernel,
    input: &[f32],
    rows: usize,
    input_scale: f32,
    linears: &[std::sync::Arc<quant::QuantLinear>],
    residual: bool,
    xq: &mut Vec<i8>,
    acc: &mut Vec<i32>,
    outputs: &mut [&mut [f32]],
) {
    xq.resize(input.len(), 0);
    quant::quantize(input, input_scale, xq);
    for (lin, out) in linears.iter().zip(outputs.iter_mut()) {
        let n = lin.out_features();
        acc.resize(rows * n, 0);
        gemm_i8(kernel, xq, rows, &lin.weights, &mut acc[..rows * n]);
        dequantize(&acc[..rows * n], lin, input_scale, residual, out);
    }
}

/// out = acc * (input_scale * weight_scale) + bias, or out += that for a residual graph.
fn dequantize(acc: &[i32], lin: &quant::QuantLinear, input_scale: f32, residual: bool, out: &mut [f32]) {
    let n = lin.out_features();
    let scales: Vec<f32> = (0..n).map(|j| input_scale * lin.scale(j)).collect();
    let zeros;
    let bias = match &lin.bias {
        Some(b) => b.as_slice(),
        None => {
            zeros = vec![0f32; n];
            &zeros
        }
    };
    out.par_chunks_mut(n).zip(acc.par_chunks(n)).for_each(|(o, a)| {
        for j in 0..n {
            let v = a[j] as f32 * scales[j] + bias[j];
            if residual {
                o[j] += v;
            } else {
                o[j] = v;
            }
        }
    });
}
