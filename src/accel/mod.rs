//! The accelerator boundary, shaped like real NPU SDKs (QNN, OpenVINO NPU, Core ML): a static
//! graph of fixed shapes is compiled once, then executed many times with new inputs. The op set
//! is what an NPU runs well and nothing else: quantize (static per-tensor scale), W8A8 per-tensor
//! int8 linear with int32 accumulation, dequantize with fused bias and residual. There is no
//! float matmul. `cpu::CpuAccelerator` is the reference implementation on this machine's cores;
//! a real NPU backend plugs in behind the same trait.

pub mod cpu;

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::quant::QuantLinear;

/// One fixed-shape graph: quantize the [rows, k] input with `input_scale`, run every linear in
/// `linears` on it (they share the input), dequantize each output with its bias; with `residual`
/// the single output is added into the output buffer (x += W x_q) instead of overwriting it.
#[derive(Clone)]
pub struct LinearGraphSpec {
    pub name: String,
    pub rows: usize,
    pub input_scale: f32,
    pub linears: Vec<Arc<QuantLinear>>,
    pub residual: bool,
}

impl LinearGraphSpec {
    pub fn in_features(&self) -> usize {
        self.linears[0].in_features()
    }
}

/// What compiling a graph cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileReport {
    pub time: Duration,
    /// Bytes of workspace the graph needs at run time (weights are shared, not counted; the CPU
    /// reference accelerator shares one workspace between graphs).
    pub memory_bytes: usize,
}

pub trait Accelerator: Send + Sync {
    type Graph: Send + Sync;

    /// A human-readable name, e.g. "CPU reference accelerator (avx512-vnni)".
    fn name(&self) -> String;

    fn compile(&self, spec: LinearGraphSpec) -> Result<(Self::Graph, CompileReport)>;

    /// Runs `graph` on `input` ([rows, k] f32). `outputs[i]` receives linear i ([rows, n_i]); with
    /// a residual graph, `outputs[0]` holds the residual and the result is added to it.
    fn execute(&self, graph: &Self::Graph, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()>;
}
