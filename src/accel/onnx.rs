//! Accelerators over ONNX Runtime, loaded at run time (the `ort` crate with `load-dynamic`: no
//! native build, nothing downloaded). Each graph is an ONNX graph with static shapes built in
//! memory with ONNX Runtime's Model Editor API, compiled into a session once and run many times:
//!
//! ```text
//! x_q (uint8 [rows, k], zero point 128) -> DequantizeLinear(input scale)
//! w_i (int8 [k, n_i]) -> DequantizeLinear(per-column scales, axis 1) -> MatMul
//!     [qnn: -> QuantizeLinear / DequantizeLinear (uint8) -> x output ranges] -> + bias -> (+ residual) -> y_i
//! ```
//!
//! The input is quantized here with the rounding of every int8 path of ours (round half to even,
//! clipped to -127..=127, stored +128): an int8 QuantizeLinear inside the graph would produce
//! -128 where ours clips at -127, and QNN's HTP does not round exactly like that.
//!
//! - `ort-cpu`, ONNX Runtime's CPU execution provider: it fuses the pattern into an integer matmul
//!   (MatMulIntegerToFloat), as long as its MatMulAddFusion does not first turn MatMul + bias
//!   into a float Gemm; that optimizer is disabled. The result equals the CPU reference
//!   accelerator's bit for bit.
//! - `qnn`, Qualcomm's QNN execution provider with its HTP (Hexagon NPU) backend, CPU fallback
//!   disabled so nothing silently runs elsewhere. HTP takes a quantized matmul only with a
//!   quantized output, so each linear's output W x is requantized to uint8, per output channel
//!   in effect: channel j is computed divided by its calibrated range (folded into the weight
//!   scales) and multiplied back after the output's DequantizeLinear. On x86-64 the HTP
//!   backend is Qualcomm's emulation: real numerics, meaningless timings. Compiled graphs are
//!   kept as EP-context files in a folder beside the model and loaded instead of compiled on the
//!   next run (the paper's "build once": 450 ms + 3.3 s per graph on a phone).
//! - `openvino`, Intel's OpenVINO execution provider, built into PyPI's `onnxruntime-openvino`
//!   (point `ORT_DYLIB_PATH` at its library), on `LLM_NPU_OPENVINO_DEVICE` (default NPU, Intel's
//!   NPU; CPU and GPU work too). CPU fallback disabled as for QNN.
//!
//! Finding the runtime: `ORT_DYLIB_PATH` names `libonnxruntime.so` (PyPI's `onnxruntime` wheel
//! ships it as `onnxruntime/capi/libonnxruntime.so.<version>`); QNN's libraries are looked for in
//! `LLM_NPU_QNN_DIR`, else in the `onnxruntime_qnn` package beside that `onnxruntime`.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ort::editor::{Graph, Model, Node, Opset, ONNX_DOMAIN};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::operator::Attribute;
use ort::session::Session;
use ort::value::{Outlet, PrimitiveTensorElementType, Shape, SymbolicDimensions, Tensor, TensorElementType, TensorRef, ValueType};

use super::{AccelContext, Accelerator, CompileReport, CompiledGraph, GraphSpec};
use crate::error::{Error, Result};
use crate::kernels::quantize::quantize_row_offset;

const CPU_EP: &str = "CPUExecutionProvider";
const QNN_EP: &str = "QNNExecutionProvider";
/// 8-bit graph outputs span this many times each channel's calibrated range: new text goes
/// beyond a range seen in calibration, and a clipped output costs more than a coarser step.
/// Measured on the three fixtures and stories260K (KL to the reference accelerator, summed):
/// 1: 0.0336, 1.25: 0.0230, 1.5: 0.0231, 2: 0.0296 (README, "ONNX Runtime").
const OUTPUT_HEADROOM: f32 = 1.5;
const INSTALL: &str = "python3 -m venv ~/.venv-ort && ~/.venv-ort/bin/pip install onnxruntime==1.32.0 onnxruntime-qnn==2.7.0, then ORT_DYLIB_PATH=$(echo ~/.venv-ort/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)";

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

/// Error lines from ONNX Runtime's log since the last `take_log`: a refused graph's status only
/// says that nodes would fall back to the CPU; the reason is in the log.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn take_log() -> String {
    let lines = std::mem::take(&mut *LOG.lock().unwrap());
    if lines.is_empty() {
        String::new()
    } else {
        format!(" [{}]", lines.join(" | "))
    }
}

/// The process's one ONNX Runtime environment (ONNX Runtime allows one), made on first use.
fn environment() -> Result<&'static Environment> {
    use ort::logging::LogLevel;
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let lib = runtime_library().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&lib).map_err(|e| format!("loading ONNX Runtime from {}: {}", lib.display(), one_line(&e)))?;
        let logger: ort::logging::LoggerFunction = std::sync::Arc::new(|level: LogLevel, _category: &str, _id: &str, _location: &str, msg: &str| {
            let keep = if matches!(level, LogLevel::Error | LogLevel::Fatal) {
                Some(msg)
            } else {
                // QNN's reasons for refusing a node, and its backend's errors, come at lower levels.
                msg.find("REASON :").or_else(|| msg.find("<E> ")).map(|at| &msg[at..])
            };
            if let Some(line) = keep {
                let line = one_line(&line.lines().next().unwrap_or_default());
                let mut log = LOG.lock().unwrap();
                if log.len() < 8 && !log.contains(&line) {
                    log.push(line);
                }
            }
        });
        builder.with_name("llm-npu").with_telemetry(false).with_logger(logger).build().map_err(|e| format!("starting ONNX Runtime: {}", one_line(&e)))
    });
    env.as_ref().map_err(|e| Error::Runtime(e.clone()))
}

/// Runs `f` with the process's stdout pointed at stderr. QNN's HTP library prints a banner
/// ("# LIBNATIVE: ...") on stdout when it loads; stdout carries the generated text. C's buffered
/// output is flushed before stdout is restored, so the banner cannot leak out later.
fn stdout_to_stderr<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain calls on file descriptors 1 and 2 and one duplicate, closed again. A panic
    // inside `f` would leave stdout on stderr, which loses nothing.
    unsafe {
        let saved = libc::dup(1);
        if saved < 0 {
            return f();
        }
        libc::dup2(2, 1);
        let out = f();
        libc::fflush(std::ptr::null_mut());
        libc::dup2(saved, 1);
        libc::close(saved);
        out
    }
}

/// QNN's libraries: the execution provider plugin and the HTP backend.
struct QnnLibraries {
    plugin: PathBuf,
    htp: PathBuf,
}

fn qnn_libraries() -> Result<QnnLibraries> {
    let dir = match std::env::var_os("LLM_NPU_QNN_DIR") {
        Some(d) => PathBuf::from(d),
        // <site-packages>/onnxruntime/capi/libonnxruntime.so -> <site-packages>/onnxruntime_qnn
        None => runtime_library()?.ancestors().nth(3).map(|sp| sp.join("onnxruntime_qnn")).unwrap_or_default(),
    };
    let libs = QnnLibraries { plugin: dir.join("libonnxruntime_providers_qnn.so"), htp: dir.join("libQnnHtp.so") };
    if !libs.plugin.is_file() || !libs.htp.is_file() {
        return Err(Error::Runtime(format!(
            "QNN execution provider not found in {} (libonnxruntime_providers_qnn.so, libQnnHtp.so): pip install onnxruntime-qnn==2.7.0 beside onnxruntime, or set LLM_NPU_QNN_DIR",
            dir.display()
        )));
    }
    Ok(libs)
}

/// Registers QNN's execution provider with the environment (once) and returns the HTP backend.
fn register_qnn(env: &'static Environment) -> Result<PathBuf> {
    static QNN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let htp = QNN.get_or_init(|| {
        let libs = qnn_libraries().map_err(|e| e.to_string())?;
        stdout_to_stderr(|| env.register_ep_library(QNN_EP, &libs.plugin)).map_err(|e| format!("loading {}: {}{}", libs.plugin.display(), one_line(&e), take_log()))?;
        Ok(libs.htp)
    });
    htp.clone().map_err(Error::Runtime)
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Turns an ONNX Runtime error into ours, saying what was being done.
fn ort_err<T>(what: String) -> impl Fn(ort::Error<T>) -> Error {
    move |e| Error::Runtime(format!("ONNX Runtime: {what}: {}{}", one_line(&e), take_log()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Provider {
    Cpu,
    /// QNN with its HTP backend library.
    QnnHtp(PathBuf),
    /// OpenVINO on a device ("NPU", "CPU", "GPU").
    OpenVino(String),
}

/// An accelerator on one of ONNX Runtime's execution providers.
pub struct OrtAccelerator {
    env: &'static Environment,
    provider: Provider,
    /// QNN: where compiled graphs are kept (EP-context files).
    cache_dir: Option<PathBuf>,
}

struct OrtGraph {
    spec: GraphSpec,
    /// ONNX Runtime's `run` takes the session mutably; graphs run one at a time anyway.
    session: Mutex<Session>,
}

impl OrtAccelerator {
    /// ONNX Runtime's CPU execution provider: a portable yardstick for our int8 kernels, on the
    /// same graphs an NPU execution provider takes.
    pub fn cpu() -> Result<Self> {
        Ok(OrtAccelerator { env: environment()?, provider: Provider::Cpu, cache_dir: None })
    }

    /// Qualcomm's QNN execution provider on its HTP backend (emulated on x86-64).
    pub fn qnn(cx: &AccelContext) -> Result<Self> {
        let env = environment()?;
        let htp = register_qnn(env)?;
        if !env.devices().any(|d| d.ep().is_ok_and(|e| e == QNN_EP)) {
            return Err(Error::Runtime(format!("the QNN execution provider offers no device{}", take_log())));
        }
        Ok(OrtAccelerator { env, provider: Provider::QnnHtp(htp), cache_dir: cx.cache_dir.clone() })
    }

    /// Intel's OpenVINO execution provider (the ONNX Runtime of PyPI's `onnxruntime-openvino`) on
    /// the device `LLM_NPU_OPENVINO_DEVICE` names [default: NPU, Intel's NPU].
    pub fn openvino() -> Result<Self> {
        let device = std::env::var("LLM_NPU_OPENVINO_DEVICE").unwrap_or_else(|_| "NPU".into());
        Ok(OrtAccelerator { env: environment()?, provider: Provider::OpenVino(device), cache_dir: None })
    }

    fn session_builder(&self, what: &dyn Fn() -> String) -> Result<ort::session::builder::SessionBuilder> {
        let builder = Session::builder(self.env).map_err(ort_err(what()))?;
        match &self.provider {
            Provider::Cpu => {
                let builder = builder.with_devices(self.devices(CPU_EP)?, None).map_err(ort_err(what()))?;
                let builder = builder.with_intra_threads(rayon::current_num_threads()).map_err(ort_err(what()))?;
                // Our own threads (attention, shadow work) share the cores: ONNX Runtime's workers
                // must sleep between graphs instead of spinning.
                let builder = builder.with_intra_op_spinning(false).map_err(ort_err(what()))?;
                // Keeps MatMul + bias apart, so the quantized MatMul becomes an integer matmul
                // instead of a float Gemm over weights dequantized on every run.
                builder.with_disabled_optimizers("MatMulAddFusion").map_err(ort_err(what()))
            }
            Provider::QnnHtp(htp) => {
                // Nothing may silently run on the CPU: a node HTP refuses is an error.
                let builder = builder.with_config_entry("session.disable_cpu_ep_fallback", "1").map_err(ort_err(what()))?;
                let options = vec![(format!("{QNN_EP}.backend_path"), htp.to_string_lossy().into_owned())];
                builder.with_devices(self.devices(QNN_EP)?, Some(&options)).map_err(ort_err(what()))
            }
            Provider::OpenVino(device) => {
                // Built into this ONNX Runtime (a provider, not a plugin with devices): by name.
                let builder = builder.with_config_entry("session.disable_cpu_ep_fallback", "1").map_err(ort_err(what()))?;
                let mut ep = ort::ep::OpenVINO::default().with_device_type(device);
                if device == "CPU" {
                    // Otherwise OpenVINO's CPU plugin computes in bf16 where the CPU has it
                    // (measured here: top-1 0.907 against the reference; with ACCURACY, 1e-6).
                    ep = ep.with_precision("ACCURACY");
                }
                builder.with_execution_providers([ep.build().error_on_failure()]).map_err(ort_err(what()))
            }
        }
    }

    /// The devices a plugin-style execution provider offers.
    fn devices(&self, ep: &str) -> Result<Vec<ort::device::Device<'static>>> {
        let devices: Vec<_> = self.env.devices().filter(|d| d.ep().is_ok_and(|e| e == ep)).collect();
        if devices.is_empty() {
            return Err(Error::Runtime(format!("ONNX Runtime offers no {ep} device{}", take_log())));
        }
        Ok(devices)
    }

    /// The EP-context file of a graph: named by its place and a hash of everything in it, so a
    /// new calibration or quantization never loads a stale graph.
    fn cache_file(&self, spec: &GraphSpec) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (spec.rows, spec.input_scale.to_bits(), spec.residual).hash(&mut h);
        spec.output_ranges.as_ref().map(|r| r.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>()).hash(&mut h);
        for l in &spec.linears {
            l.int8_rows().hash(&mut h);
            (0..l.out_features()).map(|j| l.scale(j).to_bits()).collect::<Vec<_>>().hash(&mut h);
            l.bias.as_ref().map(|b| b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).hash(&mut h);
        }
        Some(dir.join(format!("{}-{:016x}_ctx.onnx", spec.name, h.finish())))
    }
}

impl Accelerator for OrtAccelerator {
    fn name(&self) -> String {
        match &self.provider {
            Provider::Cpu => "ONNX Runtime, CPU execution provider".into(),
            Provider::QnnHtp(_) => "ONNX Runtime, QNN execution provider, HTP backend (Qualcomm's x86-64 emulation here: real numerics, meaningless timings)".into(),
            Provider::OpenVino(device) => format!("ONNX Runtime, OpenVINO execution provider on {device}"),
        }
    }

    fn runs_on_host_cores(&self) -> bool {
        // QNN's emulation here also runs on the CPU, but it stands in for a separate NPU.
        match &self.provider {
            Provider::Cpu => true,
            Provider::QnnHtp(_) => false,
            Provider::OpenVino(device) => device.eq_ignore_ascii_case("CPU"),
        }
    }

    fn needs_output_ranges(&self) -> bool {
        matches!(self.provider, Provider::QnnHtp(_))
    }

    fn compile(&self, spec: &GraphSpec) -> Result<(Box<dyn CompiledGraph>, CompileReport)> {
        let t0 = Instant::now();
        spec.validate()?;
        let quantized_output = matches!(self.provider, Provider::QnnHtp(_));
        if quantized_output && spec.output_ranges.is_none() {
            return Err(Error::Runtime(format!(
                "graph {}: QNN needs the output ranges of the linears, which this calibration lacks: run `llm-npu calibrate` again",
                spec.name
            )));
        }
        let what = || format!("compiling graph {}", spec.name);
        let mut builder = self.session_builder(&what)?;
        // Kept graphs are an optimization: an unwritable folder (a read-only model store) only
        // means compiling every time.
        let cache = self.cache_file(spec).filter(|file| file.is_file() || file.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()));
        if let Some(file) = cache.as_ref().filter(|f| f.is_file()) {
            match stdout_to_stderr(|| builder.commit_from_file(file)) {
                Ok(session) => return Ok(self.ready(spec, session, t0, true)),
                // A kept graph that no longer loads (cut short, another QNN version) is compiled
                // again and replaced.
                Err(_) => {
                    let _ = take_log();
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        if let Some(file) = &cache {
            builder = builder.with_config_entry("ep.context_enable", "1").map_err(ort_err(what()))?;
            builder = builder.with_config_entry("ep.context_embed_mode", "0").map_err(ort_err(what()))?;
            builder = builder.with_config_entry("ep.context_file_path", file.to_string_lossy()).map_err(ort_err(what()))?;
        }
        let model = linear_graph(spec, quantized_output).map_err(ort_err(format!("building graph {}", spec.name)))?;
        let session = stdout_to_stderr(|| model.into_session(&builder)).map_err(ort_err(what()))?;
        Ok(self.ready(spec, session, t0, false))
    }
}

impl OrtAccelerator {
    fn ready(&self, spec: &GraphSpec, session: Session, t0: Instant, from_cache: bool) -> (Box<dyn CompiledGraph>, CompileReport) {
        let memory_bytes = spec.rows * spec.in_features() + spec.linears.iter().map(|l| l.in_features() * l.out_features()).sum::<usize>();
        let graph = OrtGraph { spec: spec.clone(), session: Mutex::new(session) };
        (Box::new(graph), CompileReport { time: t0.elapsed(), from_cache, memory_bytes })
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

/// The ONNX graph of `spec` (see the module comment); with `quantized_output` each W x is
/// requantized to uint8 with its static output scale.
fn linear_graph(spec: &GraphSpec, quantized_output: bool) -> ort::Result<Model> {
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
        // With an 8-bit output, each output channel j is computed divided by its calibrated range
        // r_j (folded into its weight scale), so that every channel spans the output's 256 levels,
        // and multiplied back by r_j after the output's DequantizeLinear: per-channel output
        // quantization in the form QNN takes (it refuses per-channel scales on an activation).
        let range: Vec<f32> = match (quantized_output, &spec.output_ranges) {
            (true, Some(r)) => r[i].iter().map(|&m| m * OUTPUT_HEADROOM).map(|m| if m > 0.0 && m.is_finite() { m } else { 1.0 }).collect(),
            _ => vec![1.0; n],
        };
        let (w, ws, wz, wd, y) = (format!("w{i}"), format!("w{i}_scale"), format!("w{i}_zp"), format!("w{i}_dq"), format!("y{i}"));
        initializer(&mut g, &w, &[k, n], &w_kn)?;
        initializer(&mut g, &ws, &[n], &(0..n).map(|j| lin.scale(j) / range[j]).collect::<Vec<f32>>())?;
        initializer(&mut g, &wz, &[n], &vec![0i8; n])?;
        g.add_node(Node::new("DequantizeLinear", ONNX_DOMAIN, format!("dq_w{i}"), [w.as_str(), ws.as_str(), wz.as_str()], [wd.as_str()], [Attribute::new("axis", 1i64)?])?)?;
        // MatMul, [the output's Q/DQ,] the bias, the residual, each to the next name; the last
        // one is y_i.
        let mut steps: Vec<(&str, String)> = vec![("MatMul", wd.clone())];
        if quantized_output {
            let (os, oz, or) = (format!("y{i}_scale"), format!("y{i}_zp"), format!("y{i}_range"));
            initializer(&mut g, &os, &[], &[1.0f32 / 127.0])?;
            initializer(&mut g, &oz, &[], &[128u8])?;
            initializer(&mut g, &or, &[n], &range)?;
            steps.push(("QuantizeLinear", format!("{os},{oz}")));
            steps.push(("DequantizeLinear", format!("{os},{oz}")));
            steps.push(("Mul", or));
        }
        if let Some(b) = &lin.bias {
            let bn = format!("b{i}");
            initializer(&mut g, &bn, &[n], b)?;
            steps.push(("Add", bn));
        }
        if spec.residual {
            steps.push(("Add", "residual".into()));
        }
        let mut current = "x".to_string();
        for (s, (op, operands)) in steps.iter().enumerate() {
            let out = if s + 1 == steps.len() { y.clone() } else { format!("t{i}_{s}") };
            let inputs: Vec<&str> = std::iter::once(current.as_str()).chain(operands.split(',')).collect();
            g.add_node(Node::new(*op, ONNX_DOMAIN, format!("{op}{i}_{s}"), inputs, [out.as_str()], [])?)?;
            current = out;
        }
    }
    let mut model = Model::new([Opset::new(ONNX_DOMAIN, 21)?])?;
    model.set_graph(g)?;
    Ok(model)
}
