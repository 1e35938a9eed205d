//! How the CLI shows things: progress bars on stderr, tables, one-line reports of what an engine
//! does, the shadow plan, pictures of schedules.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::engine::{self, Engine, NpuEngine};
use llm_npu::kernels::attention::Precision;
use llm_npu::model::LoadedModel;
use llm_npu::prefill::dag::Dag;
use llm_npu::prefill::schedule::Schedule;
use llm_npu::quant::calibration::Calibration;
use llm_npu::quant::WeightGranularity;
use llm_npu::shadow::{ScaleRule, ShadowPlan, ShadowWork};
use llm_npu::util::Progress;

use super::args::{BackendArg, ModelArgs, NpuArgs};

/// Progress bars on stderr (drawn only on a terminal), one task at a time; notes go to stderr.
#[derive(Default)]
pub struct Bar(Mutex<Option<indicatif::ProgressBar>>);

impl Bar {
    fn with(&self, f: impl FnOnce(&indicatif::ProgressBar)) {
        if let Some(b) = self.0.lock().unwrap().as_ref() {
            f(b);
        }
    }
}

impl Progress for Bar {
    fn start(&self, task: &str, unit: &str, total: u64) {
        let template = match unit {
            "bytes" => format!("{task} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}"),
            "runs" => format!("{task} {{bar:20}} {{pos}}/{{len}} {{msg}}"),
            _ => format!("{task} {{bar:30}} {{pos}}/{{len}} {unit} {{elapsed}}"),
        };
        let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
        bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        if let Some(old) = self.0.lock().unwrap().replace(bar) {
            old.finish_and_clear();
        }
    }
    fn set(&self, done: u64, total: u64) {
        self.with(|b| {
            b.set_length(total);
            b.set_position(done);
        });
    }
    fn step(&self) {
        self.with(|b| b.inc(1));
    }
    fn status(&self, text: &str) {
        let text = text.to_string();
        self.with(|b| b.set_message(text));
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// 1234 -> "1.2K", 1_100_048_384 -> "1.10B".
pub fn human_count(n: usize) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// "llama 1.1B F32"-style label.
pub fn model_description(loaded: &LoadedModel) -> String {
    let dtypes = loaded.weights.dtype_summary();
    let main_dtype = dtypes.split(' ').next().unwrap_or("?");
    format!("{} {} {}", loaded.model.config.family, human_count(loaded.model.num_parameters()), main_dtype)
}

/// Loads the model named by the flags, with a progress bar and a one-line summary.
pub fn load_model(args: &ModelArgs) -> Result<Arc<LoadedModel>> {
    let t0 = Instant::now();
    // Library errors already name the file and field.
    let loaded = engine::load_model(&args.model_options(), &Bar::default())?;
    eprintln!(
        "loaded {} ({}, {} family, {} parameters, {:.2} GiB of weights as stored) in {:.2} s",
        args.model.display(),
        loaded.format,
        loaded.model.config.family,
        human_count(loaded.model.num_parameters()),
        loaded.model.weight_memory_bytes() as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

/// Builds the engine the flags ask for (with `backend`), saying what an npu engine is made of.
pub fn build_engine(loaded: &Arc<LoadedModel>, args: &ModelArgs, backend: BackendArg) -> Result<Box<dyn Engine>> {
    let engine = engine::build(loaded, &args.engine_options_for(backend)?, &Bar::default())?;
    if let Some(npu) = engine.as_npu() {
        if args.verbose {
            eprintln!("npu: calibration {}", npu.calibration);
        }
        eprintln!(
            "npu: {} int8 weights ({:.2} GiB, {}) {} in {:.2} s; {}",
            if npu.weights == WeightGranularity::PerTensor { "per-tensor" } else { "per-channel" },
            npu.weight_bytes as f64 / (1u64 << 30) as f64,
            npu.accel.name(),
            npu.weights_from,
            npu.quantize_time.as_secs_f64(),
            attention_summary(npu.attention_precision(), loaded.model.config.head_dim)
        );
        eprintln!("npu: {}", shadow_summary(npu));
    }
    if let Some(stack) = engine.bitstack() {
        eprintln!("bitstack: {}", stack_summary(stack));
    }
    Ok(engine)
}

/// The precision the engine's prefill attention multiplies in on this CPU (f32 for the f32
/// backend, and where --bf16-attention cannot run).
pub fn attention_in_use(engine: &dyn Engine, head_dim: usize) -> Precision {
    engine.as_npu().map_or(Precision::F32, |npu| npu.attention_precision().on_this_cpu(head_dim))
}

/// Where the npu engine's float work runs, and in what precision attention multiplies.
fn attention_summary(asked: Precision, head_dim: usize) -> String {
    let attention = match (asked, asked.on_this_cpu(head_dim)) {
        (_, Precision::Int8) => "prefill attention in int8 (decode in f32)".to_string(),
        (_, Precision::Bf16) => "prefill attention in bf16 on AMX tiles (decode in f32)".to_string(),
        // Say why --bf16-attention is not running, so the user can tell what would change it.
        (Precision::Bf16, _) if head_dim % 32 != 0 => format!("attention in f32 (--bf16-attention: the AMX tiles take head sizes that are multiples of 32, this model's is {head_dim})"),
        (Precision::Bf16, _) => "attention in f32 (--bf16-attention: no AMX-BF16 in use here: the CPU lacks it, or LLM_NPU_INT8 chose a kernel other than amx)".to_string(),
        // Split into bf16 parts on the tiles where bf16 attention could run: f32-accurate.
        _ if llm_npu::kernels::attention::bf16_runs(head_dim) => "attention in f32 (prefill on AMX-BF16 tiles, operands in three bf16 parts)".to_string(),
        _ => "attention in f32".to_string(),
    };
    format!("{attention}, norms in f32 on the CPU, the LM head in int8")
}

/// Bytes of all weights as the engine holds them, and bits per weight of the layers' linears.
pub fn weight_size(engine: &dyn Engine) -> (u64, f64) {
    match engine.bitstack() {
        Some(stack) => {
            let s = stack.size();
            (s.stack_bytes + s.other_bytes, s.bits_per_weight)
        }
        None => {
            let m = engine.model();
            let (bytes, weights) = m.linear_weight_size();
            (m.weight_memory_bytes() as u64, 8.0 * bytes as f64 / weights as f64)
        }
    }
}

/// What a BitStack holds: blocks, megabytes and bits per weight.
pub fn stack_summary(stack: &llm_npu::bitstack::BitStack) -> String {
    let s = stack.size();
    format!(
        "{}: {} of {} blocks, {:.1} MB ({:.2} bits per linear weight) + {:.1} MB of embeddings, norms and LM head = {:.1} MB",
        stack.path().display(),
        s.blocks,
        s.total_blocks,
        s.stack_bytes as f64 / 1e6,
        s.bits_per_weight,
        s.other_bytes as f64 / 1e6,
        (s.stack_bytes + s.other_bytes) as f64 / 1e6
    )
}

/// With -v: how the npu graphs were compiled and shared, and the shadow work done.
pub fn engine_report(engine: &dyn Engine, verbose: bool) {
    let (true, Some(n)) = (verbose, engine.as_npu()) else { return };
    let s = n.graph_stats();
    let cached = if s.from_cache > 0 { format!(", {} of them loaded from kept compiled graphs", s.from_cache) } else { String::new() };
    eprintln!(
        "npu: {} graphs compiled ({:.1} ms{cached}; largest workspace {:.1} MiB, shared), reused {} times; chunk sizes {:?}",
        s.compiled,
        s.compile_time.as_secs_f64() * 1e3,
        s.max_workspace_bytes as f64 / (1 << 20) as f64,
        s.reused,
        n.chunk_sizes
    );
    let ms = |d: Option<std::time::Duration>| d.map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    let shapes: Vec<String> = s.per_shape.iter().map(|((group, rows), (compiled, loaded))| format!("{} {rows} rows {} / {}", group.name(), ms(*compiled), ms(*loaded))).collect();
    eprintln!("npu: per graph shape, first compile / first load of a kept graph: {}", shapes.join(", "));
    let work = n.shadow_work();
    let total = work.iter().fold(ShadowWork::default(), |mut a, &w| {
        a += w;
        a
    });
    eprintln!(
        "npu: shadow work: {} outliers computed in float ({} from cold channels read on demand, {} clipped by --shadow-hot-only) in {} graph runs; per layer: [{}]",
        total.outliers,
        total.cold,
        total.dropped,
        total.calls,
        work.iter().map(|w| w.outliers.to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// One line: which inputs run shadow work and what the hot columns cost.
fn shadow_summary(npu: &NpuEngine) -> String {
    let plan = &npu.shadow_plan;
    if !plan.options.enabled {
        return "shadow outlier execution off (--no-shadow): every input quantized with its max scale".into();
    }
    let inputs = plan.shadow_points().count();
    let layers = plan.layers.iter().filter(|l| l.kept).count();
    let (resident, all) = npu.shadow_memory();
    format!(
        "shadow outlier execution on {inputs} of {} linear inputs in {layers} of {} layers (--shadow-keep {}, --shadow-ratio {}{}); hot weight columns resident: {:.2} MiB (all columns of those inputs: {:.1} MiB)",
        4 * plan.layers.len(),
        plan.layers.len(),
        plan.options.keep,
        plan.options.min_ratio,
        if plan.options.hot_only { ", hot channels only" } else { "" },
        resident as f64 / (1 << 20) as f64,
        all as f64 / (1 << 20) as f64
    )
}

/// `inspect --calibration`: per layer, what the npu backend makes of the calibration file.
pub fn print_shadow_plan(loaded: &LoadedModel, path: &Path, npu: &NpuArgs) -> Result<()> {
    let cal = Calibration::load(path)?;
    cal.check_against(&loaded.model, path)?;
    let plan = ShadowPlan::new(&cal, &loaded.model.config, npu.shadow()?)?;
    let o = &plan.options;
    println!("\nnpu plan from {} ({}, {} tokens)", path.display(), cal.source, cal.tokens);
    println!(
        "rules: shadow {}; --shadow-keep {} of the layers, ranked by importance (largest max|x|/p99.9 of their inputs); an input is shadowed when max|x| > {} x p99.9;",
        if o.enabled { "on" } else { "off" },
        o.keep,
        o.min_ratio
    );
    println!(
        "       its clip point is the p99.9, raised where needed so that every channel beyond it in calibration is hot (at most {:.0}% of the channels, or {} KiB of columns)",
        o.hot_fraction * 100.0,
        o.hot_min_bytes >> 10
    );
    println!(
        "{:>5}  {:>10}  {:4}  {:8}  {:9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>7}  hot set: channels, share of calibration elements beyond p99.9, largest first",
        "layer", "importance", "kept", "input", "rule", "max", "p99.9", "clip", "max/p999", "outl.ch"
    );
    for (l, lp) in plan.layers.iter().enumerate() {
        for p in &lp.points {
            let (rule, hot) = match p.rule {
                ScaleRule::P999Shadow => {
                    let shown: Vec<String> = p.hot.iter().take(8).map(|c| c.to_string()).collect();
                    let more = if p.hot.len() > 8 { format!(", ... +{}", p.hot.len() - 8) } else { String::new() };
                    ("shadow", format!("{} {:.0}% [{}{more}]", p.hot.len(), p.hot_share * 100.0, shown.join(", ")))
                }
                ScaleRule::Max => ("max", "-".to_string()),
            };
            println!(
                "{l:>5}  {:>10.1}  {:4}  {:8}  {rule:9}  {:>9.3}  {:>9.3}  {:>9.3}  {:>8.1}  {:>7}  {hot}",
                lp.importance,
                if lp.kept { "yes" } else { "no" },
                p.group.input_name(),
                p.max_abs,
                p.p999,
                p.clip,
                p.max_abs / p.p999.max(1e-30),
                p.outlier_channels
            );
        }
    }
    Ok(())
}

/// Pictures of a prefill schedule.
#[derive(Args)]
pub struct ScheduleOutputs {
    /// Write the prefill's subgraph schedule as a Chrome trace (open in Perfetto or
    /// chrome://tracing); run and bench need --backend npu --scheduler
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    /// Draw the prefill's subgraph schedule as an SVG timeline (one lane per executor)
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
}

impl ScheduleOutputs {
    fn wanted(&self) -> bool {
        self.trace.is_some() || self.timeline.is_some()
    }

    pub fn write(&self, dag: &Dag, title: &str, schedules: &[(&str, &Schedule)]) -> Result<()> {
        if let Some(path) = &self.trace {
            std::fs::write(path, llm_npu::prefill::trace::chrome_trace(dag, schedules)).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} (Chrome trace: open in Perfetto or chrome://tracing)", path.display());
        }
        if let Some(path) = &self.timeline {
            std::fs::write(path, llm_npu::prefill::trace::timeline_svg(dag, title, schedules)).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    /// Before a run: the pictures need the npu backend with a scheduler.
    pub fn check(&self, model: &ModelArgs) -> Result<()> {
        if self.wanted() && (model.backend != BackendArg::Npu || model.npu.scheduler.is_none()) {
            bail!("--trace and --timeline draw the npu prefill's subgraph schedule: add --backend npu --scheduler ooo (or in-order)");
        }
        Ok(())
    }

    /// Writes the last scheduled prefill of an npu engine.
    pub fn write_last(&self, engine: &dyn Engine, title: &str) -> Result<()> {
        if !self.wanted() {
            return Ok(());
        }
        let Some((dag, schedule)) = engine.as_npu().and_then(|npu| npu.last_schedule()) else {
            bail!("no scheduled prefill ran (a one-token prompt is decoded, not prefilled)");
        };
        self.write(&dag, title, &[("measured", &schedule)])
    }
}

/// Prints generated tokens to stdout as text, each as soon as it is decodable, and keeps the
/// text (a chat's reply goes back into the conversation).
pub struct StreamPrinter<'a> {
    stream: llm_npu::tokenizer::StreamDecoder<'a>,
    out: std::io::StdoutLock<'static>,
    pub text: String,
}

impl<'a> StreamPrinter<'a> {
    /// `context`: ids before the generated ones (the prompt), so the first word keeps its space.
    pub fn new(tok: &'a llm_npu::tokenizer::Tokenizer, context: &[u32]) -> Result<Self> {
        let mut stream = tok.stream();
        for &id in context {
            stream.push(id)?;
        }
        Ok(StreamPrinter { stream, out: std::io::stdout().lock(), text: String::new() })
    }

    pub fn push(&mut self, id: u32) -> llm_npu::Result<()> {
        if let Some(t) = self.stream.push(id)? {
            self.write(&t)?;
        }
        Ok(())
    }

    /// Flushes what the decoder still holds and ends the line.
    pub fn finish(mut self) -> Result<String> {
        use std::io::Write;
        if let Some(rest) = self.stream.finish() {
            self.write(&rest)?;
        }
        writeln!(self.out)?;
        self.out.flush()?;
        Ok(self.text)
    }

    fn write(&mut self, t: &str) -> llm_npu::Result<()> {
        use std::io::Write;
        self.text.push_str(t);
        self.out.write_all(t.as_bytes()).and_then(|_| self.out.flush()).map_err(|e| llm_npu::Error::Input(format!("writing to stdout: {e}")))
    }
}

/// "prompt: N tokens in T ms (R tokens/s) | generated: ..." for a finished generation.
pub fn generation_summary(s: &llm_npu::generate::GenerationStats) -> String {
    let cached = if s.cached_tokens > 0 { format!(", {} from the cache", s.cached_tokens) } else { String::new() };
    format!(
        "prompt: {} tokens{cached} in {:.1} ms ({:.1} tokens/s) | generated: {} tokens, {:.1} tokens/s",
        s.prompt_tokens,
        s.prefill_time.as_secs_f64() * 1e3,
        s.prefill_tokens_per_s(),
        s.generated_tokens,
        s.decode_tokens_per_s()
    )
}
