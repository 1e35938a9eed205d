//! The CPU reference accelerator: fixed-shape int8 graphs executed with the CPU's int8 GEMM
//! kernels (`quant::w8a8`). It keeps the NPU's rules (static shapes, static per-tensor
//! activation scales, integer matmuls only) while running on the host cores. Its weight layout
//! is the CPU kernels' own, so it shares the int8 weights the CPU's decode work uses instead of
//! keeping a second copy.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Accelerator, CompileReport, CompiledGraph, GraphSpec};
use crate::error::Result;
use crate::kernels::int8_gemm::{best_kernel, Int8Kernel};
use crate::quant::w8a8;

pub struct CpuAccelerator {
    pub kernel: Int8Kernel,
    /// Graphs run one at a time (as on an NPU), so they are serialized here.
    busy: Arc<Mutex<()>>,
}

impl Default for CpuAccelerator {
    fn default() -> Self {
        CpuAccelerator { kernel: best_kernel(), busy: Arc::new(Mutex::new(())) }
    }
}

/// A compiled graph: its fixed-shape spec.
struct CpuGraph {
    spec: GraphSpec,
    kernel: Int8Kernel,
    busy: Arc<Mutex<()>>,
}

impl Accelerator for CpuAccelerator {
    fn name(&self) -> String {
        format!("CPU reference accelerator ({})", self.kernel.name())
    }

    fn runs_on_host_cores(&self) -> bool {
        true
    }

    /// 512, twice the paper's: every chunk streams all the int8 weights through the cores and
    /// pays its thread handoffs, and halving those per token measured faster on both kernels
    /// tried (README, "Chunks of 512 on the CPU by default": AMX +12-16% at 512 tokens, +5-12% at
    /// 2,048, +2-7% at 4,096; 512-bit VNNI +7-8% at 512, +1-3% at 2,048).
    fn default_chunk(&self) -> usize {
        2 * super::PAPER_CHUNK
    }

    fn compile(&self, spec: &GraphSpec) -> Result<(Box<dyn CompiledGraph>, CompileReport)> {
        let t0 = Instant::now();
        spec.validate()?;
        // Workspace this graph needs at run time: its packed int8 input (results go through the
        // GEMM's epilogue tile by tile, no int32 matrix).
        let memory_bytes = spec.rows * spec.in_features().next_multiple_of(4);
        let graph = CpuGraph { spec: spec.clone(), kernel: self.kernel, busy: self.busy.clone() };
        Ok((Box::new(graph), CompileReport { time: t0.elapsed(), from_cache: false, memory_bytes }))
    }
}

impl CompiledGraph for CpuGraph {
    fn execute(&self, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()> {
        let spec = &self.spec;
        spec.check_buffers(input, outputs)?;
        let _one_at_a_time = self.busy.lock().expect("accelerator lock poisoned");
        w8a8(self.kernel, input, spec.rows, spec.input_scale, &spec.linears, spec.residual, outputs);
        Ok(())
    }
}
