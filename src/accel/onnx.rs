//! Accelerators over ONNX Runtime, loaded at run time (the `ort` crate with `load-dynamic`: no
//! native build, nothing downloaded). Each graph is an ONNX graph with static shapes built in
//! memory with ONNX Runtime's Model Editor API, compiled into a session once and run many times:
//!
//! ```text
//! x_q (uint8 [rows, k], zero point 128) -> DequantizeLinear(input scale)
//! w_i (int8 [k, n_i]) -> DequantizeLinear(per-column scales, axis 1) -> MatMul -> + bias -> (+ residual) -> y_i
//! ```
//!
//! The input is quantized here with the same rounding as every int8 path of ours (round half to
//! even, clipped to -127..=127, stored +128): an int8 QuantizeLinear inside the graph would
//! produce -128 where ours clips at -127, and the uint8 form is what NPU execution providers take.
//! ONNX Runtime's CPU provider fuses the pattern into an integer matmul (MatMulIntegerToFloat),
//! as long as its MatMulAddFusion does not first turn MatMul + bias into a float Gemm: that
//! optimizer is disabled. The result equals the CPU reference accelerator's bit for bit.
//!
//! Finding the runtime: `ORT_DYLIB_PATH` names `libonnxruntime.so` (PyPI's `onnxruntime` wheel
//! ships it as `onnxruntime/capi/libonnxruntime.so.<version>`).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ort::editor::{Graph, Model, Node, Opset, ONNX_DOMAIN};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::operator::Attribute;
use ort::session::Session;
use ort::value::{Outlet, PrimitiveTensorElementType, Shape, SymbolicDimensions, Tensor, TensorElementType, TensorRef, ValueType};

use super::{Accelerator, CompileReport, CompiledGraph, GraphSpec};
use crate::error::{Error, Result};
use crate::kernels::quantize::quantize_row_offset;

const CPU_EP: &str = "CPUExecutionProvider";
/// The ONNX Runtime this code was written against (PyPI `onnxruntime`).
pub const TESTED_VERSION: &str = "1.32.0";
const INSTALL: &str = "python3 -m venv ~/.venv-ort && ~/.venv-ort/bin/pip install onnxruntime==1.32.0, then ORT_DYLIB_PATH=$(echo ~/.venv-ort/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)";

/// The path of the ONNX Runtime library, from `ORT_DYLIB_PATH`.
pub fn runtime_library() -> Result<PathBuf> {
    let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) else {
        return Err(Error::Runtime(format!("ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so (install: {INSTALL})")));
    };
    if !path.is_file() {
        return Err(Error::Runtime(format!("ORT_DYLIB_PATH={}: no such file (install: {INSTALL})", path.display())));
    }
    Ok(path)
}

/// The process's one ONNX Runtime environment (ONNX Runtime allows one), made on first use.
fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let lib = runtime_library().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&lib).map_err(|e| format!("loading ONNX Runtime from {}: {}", lib.display(), one_line(&e)))?;
        builder.with_name("llm-npu").with_telemetry(false).build().map_err(|e| format!("starting ONNX Runtime: {}", one_line(&e)))
    });
    env.as_ref().map_err(|e| Error::Runtime(e.clone()))
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Turns an ONNX Runtime error into ours, saying what was being done.
fn ort_err<T>(what: String) -> impl Fn(ort::Error<T>) -> Error {
    move |e| Error::Runtime(format!("ONNX Runtime: {what}: {}", one_line(&e)))
}

/// ONNX Runtime's CPU execution provider: a portable yardstick for our int8 kernels, and the same
/// graphs an NPU execution provider would take.
pub struct OrtCpu {
    env: &'static Environment,
}

impl OrtCpu {
    pub fn new() -> Result<Self> {
        Ok(OrtCpu { env: environment()? })
    }
}

struct OrtGraph {
    spec: GraphSpec,
    /// ONNX Runtime's `run` takes the session mutably; graphs run one at a time anyway.
    session: Mutex<Session>,
}

impl Accelerator for OrtCpu {
    fn name(&self) -> String {
        "ONNX Runtime, CPU execution provider".into()
    }

    fn compile(&self, spec: &GraphSpec) -> Result<(Box<dyn CompiledGraph>, CompileReport)> {
        let t0 = Instant::now();
        spec.validate()?;
        let model = linear_graph(spec).map_err(ort_err(format!("building graph {}", spec.name)))?;
        let devices: Vec<_> = self.env.devices().filter(|d| d.ep().is_ok_and(|e| e == CPU_EP)).collect();
        if devices.is_empty() {
            return Err(Error::Runtime(format!("ONNX Runtime offers no {CPU_EP} device")));
        }
        let threads = rayon::current_num_threads();
        let what = || format!("compiling graph {}", spec.name);
        let builder = Session::builder(self.env).map_err(ort_err(what()))?;
        let builder = builder.with_devices(devices, None).map_err(ort_err(what()))?;
        let builder = builder.with_intra_threads(threads).map_err(ort_err(what()))?;
        // Our own threads (attention, shadow work) share the cores: ONNX Runtime's workers must
        // sleep between graphs instead of spinning.
        let builder = builder.with_intra_op_spinning(false).map_err(ort_err(what()))?;
        // Keeps MatMul + bias apart, so the quantized MatMul becomes an integer matmul instead of
        // a float Gemm over weights dequantized on every run.
        let builder = builder.with_disabled_optimizers("MatMulAddFusion").map_err(ort_err(what()))?;
        let session = model.into_session(&builder).map_err(ort_err(what()))?;
        let memory_bytes = spec.rows * spec.in_features() + spec.linears.iter().map(|l| l.in_features() * l.out_features()).sum::<usize>();
        let graph = OrtGraph { spec: spec.clone(), session: Mutex::new(session) };
        Ok((Box::new(graph), CompileReport { time: t0.elapsed(), memory_bytes }))
    }
}

impl CompiledGraph for OrtGraph {
    fn execute(&self, input: &[f32], outputs: &mut [&mut [f32]]) -> Result<()> {
        let spec = &self.spec;
        spec.check_buffers(input, outputs)?;
        let (rows, k) = (spec.rows, spec.in_features());
        let mut xq = vec![0u8; rows * k];
        let inv = 1.0 / spec.input_scale;
        for (x, q) in input.chunks_exact(k).zip(xq.chunks_exact_mut(k)) {
            quantize_row_offset(x, inv, 128, q);
        }
        let run = |e: ort::Error| ort_err(format!("running graph {}", spec.name))(e);
        let mut session = self.session.lock().expect("graph lock poisoned");
        let x = TensorRef::from_array_view(([rows, k], &xq[..])).map_err(&run)?;
        let results = if spec.residual {
            let n = spec.linears[0].out_features();
            let residual = TensorRef::from_array_view(([rows, n], &*outputs[0])).map_err(&run)?;
            session.run(ort::inputs!["x_q" => x, "residual" => residual]).map_err(&run)?
        } else {
            session.run(ort::inputs!["x_q" => x]).map_err(&run)?
        };
        for (i, out) in outputs.iter_mut().enumerate() {
            let (_, y) = results[format!("y{i}").as_str()].try_extract_tensor::<f32>().map_err(&run)?;
            out.copy_from_slice(y);
        }
        Ok(())
    }
}

fn tensor_type(ty: TensorElementType, shape: &[usize]) -> ValueType {
    ValueType::Tensor { ty, shape: Shape::new(shape.iter().map(|&d| d as i64)), dimension_symbols: SymbolicDimensions::empty(shape.len()) }
}

/// An initializer owned by the graph (ONNX Runtime keeps its own copy of the data).
fn initializer<T: PrimitiveTensorElementType + Copy + std::fmt::Debug>(g: &mut Graph, name: &str, shape: &[usize], data: &[T]) -> ort::Result<()> {
    let mut t = Tensor::<T>::new(&Allocator::default(), shape.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
    t.extract_tensor_mut().1.copy_from_slice(data);
    g.add_initializer(name, t, false)
}

/// The ONNX graph of `spec` (see the module comment).
fn linear_graph(spec: &GraphSpec) -> ort::Result<Model> {
    let (rows, k) = (spec.rows, spec.in_features());
    let mut g = Graph::new()?;
    let mut inputs = vec![Outlet::new("x_q", tensor_type(TensorElementType::Uint8, &[rows, k]))];
    if spec.residual {
        inputs.push(Outlet::new("residual", tensor_type(TensorElementType::Float32, &[rows, spec.linears[0].out_features()])));
    }
    g.set_inputs(inputs)?;
    g.set_outputs(spec.linears.iter().enumerate().map(|(i, l)| Outlet::new(format!("y{i}"), tensor_type(TensorElementType::Float32, &[rows, l.out_features()]))))?;
    initializer(&mut g, "x_scale", &[], &[spec.input_scale])?;
    initializer(&mut g, "x_zp", &[], &[128u8])?;
    g.add_node(Node::new("DequantizeLinear", ONNX_DOMAIN, "dq_x", ["x_q", "x_scale", "x_zp"], ["x"], [])?)?;
    for (i, lin) in spec.linears.iter().enumerate() {
        let n = lin.out_features();
        let rows_nk = lin.int8_rows();
        let mut w_kn = vec![0i8; k * n];
        for (j, row) in rows_nk.chunks_exact(k).enumerate() {
            for (kk, &v) in row.iter().enumerate() {
                w_kn[kk * n + j] = v;
            }
        }
        let (w, ws, wz, wd, y) = (format!("w{i}"), format!("w{i}_scale"), format!("w{i}_zp"), format!("w{i}_dq"), format!("y{i}"));
        initializer(&mut g, &w, &[k, n], &w_kn)?;
        initializer(&mut g, &ws, &[n], &(0..n).map(|j| lin.scale(j)).collect::<Vec<f32>>())?;
        initializer(&mut g, &wz, &[n], &vec![0i8; n])?;
        g.add_node(Node::new("DequantizeLinear", ONNX_DOMAIN, format!("dq_w{i}"), [w.as_str(), ws.as_str(), wz.as_str()], [wd.as_str()], [Attribute::new("axis", 1i64)?])?)?;
        // MatMul, then the bias, then the residual, each to the next name; the last one is y_i.
        let mut steps: Vec<(&str, String)> = vec![("MatMul", wd.clone())];
        if let Some(b) = &lin.bias {
            let bn = format!("b{i}");
            initializer(&mut g, &bn, &[n], b)?;
            steps.push(("Add", bn));
        }
        if spec.residual {
            steps.push(("Add", "residual".into()));
        }
        let mut current = "x".to_string();
        for (s, (op, operand)) in steps.iter().enumerate() {
            let out = if s + 1 == steps.len() { y.clone() } else { format!("t{i}_{s}") };
            g.add_node(Node::new(*op, ONNX_DOMAIN, format!("{op}{i}_{s}"), [current.as_str(), operand.as_str()], [out.as_str()], [])?)?;
            current = out;
        }
    }
    let mut model = Model::new([Opset::new(ONNX_DOMAIN, 21)?])?;
    model.set_graph(g)?;
    Ok(model)
}
