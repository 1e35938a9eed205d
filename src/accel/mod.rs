//! The accelerator boundary, shaped like real NPU SDKs (QNN, OpenVINO NPU, Core ML, ONNX Runtime
//! execution providers): a static graph of fixed shapes is compiled once, then executed many
//! times with new inputs. The op set is what an NPU runs well and nothing else: quantize (static
//! per-tensor scale), W8A8 int8 linear with int32 accumulation, dequantize with fused bias and
//! residual. There is no float matmul.
//!
//! An accelerator receives plain int8 weights with their scales (`Int8Linear::int8_rows`,
//! `scales`, `bias`) and a description of the graph (`GraphSpec`), and lays out or compiles them
//! itself. The npu engine holds any accelerator as a trait object (`Box<dyn Accelerator>`): which
//! one runs is a run-time choice, and one virtual call per graph execution (milliseconds of work)
//! costs nothing. A new accelerator is one module here plus a line in `ACCELERATORS`.

pub mod cpu;
pub mod onnx;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::LinearGroup;
use crate::quant::Int8Linear;

/// One fixed-shape graph: quantize the [rows, k] input with `input_scale`, run every linear in
/// `linears` on it (they share the input), dequantize each output with its bias; with `residual`
/// the single output is added into the output buffer (x += W x_q) instead of overwriting it.
#[derive(Clone)]
pub struct GraphSpec {
    /// Where the graph comes from (e.g. "layer3.qkv.rows256"): for messages and cache files.
    pub name: String,
    pub layer: usize,
    pub group: LinearGroup,
    pub rows: usize,
    pub input_scale: f32,
    pub linears: Vec<Arc<Int8Linear>>,
    pub residual: bool,
    /// Per linear and output channel, the largest |W x| seen in calibration, for accelerators
    /// whose graphs emit 8-bit outputs; None when the calibration has no output ranges (files
    /// written before they were recorded).
    pub output_ranges: Option<Arc<Vec<Vec<f32>>>>,
}

impl GraphSpec {
    pub fn in_features(&self) -> usize {
        self.linears[0].in_features()
    }

    /// The shape rules every accelerator enforces: linears that share one input width, and one
    /// output for a residual graph.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.linears.is_empty() || self.linears.iter().any(|l| l.in_features() != self.in_features()) {
            return Err(Error::Input(format!("graph {}: needs rows and linears that share one input width", self.name)));
        }
        if self.residual && self.linears.len() != 1 {
            return Err(Error::Input(format!("graph {}: a residual graph has one output", self.name)));
        }
        Ok(())
    }

    /// Checks the buffers of one execution against the graph's shape.
    pub fn check_buffers(&self, input: &[f32], outputs: &[&mut [f32]]) -> Result<()> {
        let (rows, k) = (self.rows, self.in_features());
        let outputs_fit = outputs.len() == self.linears.len() && outputs.iter().zip(&self.linears).all(|(o, l)| o.len() == rows * l.out_features());
        if input.len() != rows * k || !outputs_fit {
            return Err(Error::Input(format!("graph {}: buffers do not fit a [{rows}, {k}] graph with {} outputs", self.name, self.linears.len())));
        }
        Ok(())
    }
}

/// What compiling a graph cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileReport {
    pub time: Duration,
    /// The graph was loaded from a cache of compiled graphs instead of compiled.
    pub from_cache: bool,
    /// Bytes of workspace the graph needs at run time (weights are shared, not counted; the CPU
    /// reference accelerator shares one workspace between graphs).
    pub memory_bytes: usize,
}

/// A compiled graph, ready to run many times.
pub trait CompiledGraph: Send + Sync {
    /// Runs the graph on `input` ([rows, k] f32). `outputs[i]` receives linear i ([rows, n_i]);
    /// with a residual graph, `outputs[0]` holds the residual and the result is added to it.
    fn execute(&self, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()>;
}

pub trait Accelerator: Send + Sync {
    /// A human-readable name that says what runs the graphs, e.g. "CPU reference accelerator
    /// (avx512-vnni)".
    fn name(&self) -> String;

    fn compile(&self, spec: &GraphSpec) -> Result<(Box<dyn CompiledGraph>, CompileReport)>;

    /// Whether its graphs run on the host CPU's own cores (a CPU runtime, not a separate
    /// device). Then the shadow work cannot overlap a graph for free: it competes for the same
    /// cores, and adding it straight into the finished outputs saves a buffer pass.
    fn runs_on_host_cores(&self) -> bool {
        false
    }

    /// Whether its graphs need `GraphSpec::output_ranges` (8-bit graph outputs).
    fn needs_output_ranges(&self) -> bool {
        false
    }

    /// The prefill chunk size its graphs are compiled for when the user names none: the
    /// paper's, unless this accelerator was measured faster with another.
    fn default_chunk(&self) -> usize {
        PAPER_CHUNK
    }
}

/// llm.npu's chunk size (tokens per graph call).
pub const PAPER_CHUNK: usize = 256;

/// What an accelerator may need from its engine.
#[derive(Debug, Clone, Default)]
pub struct AccelContext {
    /// A folder of its own beside the model, for compiled graphs kept between runs.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// Makes an accelerator (it may fail: a runtime library or device that is not there).
pub type Maker = fn(&AccelContext) -> Result<Box<dyn Accelerator>>;

/// The accelerators this build knows, by the name `--accelerator` takes. A new accelerator is a
/// module here and a line in this table.
pub static ACCELERATORS: &[(&str, Maker)] = &[
    ("ref", |_| Ok(Box::new(cpu::CpuAccelerator::default()))),
    ("ort-cpu", |_| Ok(Box::new(onnx::OrtAccelerator::cpu()?))),
    ("qnn", |cx| Ok(Box::new(onnx::OrtAccelerator::qnn(cx)?))),
    ("openvino", |_| Ok(Box::new(onnx::OrtAccelerator::openvino()?))),
];

/// The accelerator called `name` (see `ACCELERATORS`).
pub fn by_name(name: &str, cx: &AccelContext) -> Result<Box<dyn Accelerator>> {
    let Some((_, make)) = ACCELERATORS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = ACCELERATORS.iter().map(|(n, _)| *n).collect();
        return Err(Error::Input(format!("unknown accelerator '{name}' (known: {})", known.join(", "))));
    };
    make(cx)
}
