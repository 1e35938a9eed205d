//! The `llm-npu` command line: a thin layer over the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use llm_npu::accel::Accelerator as _;
use llm_npu::backend::F32Backend;
use llm_npu::bench::{self, BenchResult, TestKind};
use llm_npu::calibrate::{self, Calibration};
use llm_npu::npu::{NpuModel, NpuOptions};
use llm_npu::quant::WeightGranularity;
use llm_npu::shadow::{ScaleRule, ShadowOptions, ShadowPlan};
use llm_npu::eval::EvalAccumulator;
use llm_npu::generate::{generate, GenerateOptions};
use llm_npu::model::{self, LoadOptions, LoadedModel, Logits};
use llm_npu::sampling::{Rng, SamplingParams};
use llm_npu::stats::ActivationStats;
use llm_npu::synth::{self, Outliers, SynthDType, SynthOptions};

#[derive(Parser)]
#[command(name = "llm-npu", version, about = "On-device LLM inference: fast prompt prefill on an integer accelerator (llm.npu design)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; the text goes to stdout as it is produced, timings to stderr.
    Run(RunArgs),
    /// Write the logits for given token ids to a NumPy .npy file.
    Logits(LogitsArgs),
    /// Describe a model file: architecture, shapes, dtypes, parameter count, tokenizer.
    Inspect(InspectArgs),
    /// Benchmark prompt processing (ppN) and generation (tgN) in tokens/s, like llama-bench.
    Bench(BenchArgs),
    /// Perplexity of a backend and its distance to a reference backend on the same tokens.
    Eval(EvalArgs),
    /// Write a Hugging Face model folder with random weights of a real model's shape.
    Synth(SynthArgs),
    /// Synthesize the reference shape (once, cached) and show prefill speed per backend.
    Demo(DemoArgs),
    /// Record activation statistics for the npu backend's static scales (saved beside the model by default).
    Calibrate(CalibrateArgs),
    /// Run the prefill's subgraph scheduler in virtual time on a device's cost model: makespan,
    /// accelerator bubble rate and utilization, in order and out of order.
    Simulate(SimulateArgs),
    /// Time the npu prefill's subgraphs on this machine and save them as a cost model for
    /// `simulate --profile FILE` (beside the model by default).
    Profile(ProfileArgs),
}

#[derive(Args)]
struct ProfileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length to time (random tokens; at least one full chunk)
    #[arg(short = 'p', long, default_value_t = 1024)]
    n_prompt: usize,
    /// Timed repetitions (after one warm-up run)
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Output file [default: llm-npu-profile.json beside the model]
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Device cost model: a built-in profile (snapdragon-8gen3: the llm.npu paper's Qwen1.5-1.8B
    /// on a Snapdragon 8 Gen 3) or a JSON file of the same fields
    #[arg(long, default_value = "snapdragon-8gen3")]
    profile: String,
    /// Prompt length in tokens
    #[arg(short = 'p', long, default_value_t = 1024)]
    n_prompt: usize,
    /// Chunk size [default: the profile's]
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Scheduler [default: both, side by side]
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    /// Print one JSON object per scheduler
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pictures: ScheduleOutputs,
}

/// Pictures of a prefill schedule.
#[derive(Args)]
struct ScheduleOutputs {
    /// Write the prefill's subgraph schedule as a Chrome trace (open in Perfetto or
    /// chrome://tracing); run and bench need --backend npu --scheduler
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// Draw the prefill's subgraph schedule as an SVG timeline (one lane per executor)
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
}

impl ScheduleOutputs {
    fn wanted(&self) -> bool {
        self.trace.is_some() || self.timeline.is_some()
    }

    fn write(&self, dag: &llm_npu::prefill::dag::Dag, title: &str, schedules: &[(&str, &llm_npu::prefill::schedule::Schedule)]) -> Result<()> {
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
    fn check(&self, model: &ModelArgs) -> Result<()> {
        if self.wanted() && (model.backend != Backend::Npu || model.npu.scheduler.is_none()) {
            bail!("--trace and --timeline draw the npu prefill's subgraph schedule: add --backend npu --scheduler ooo (or in-order)");
        }
        Ok(())
    }

    /// Writes the last scheduled prefill of an npu engine.
    fn write_last(&self, engine: &Engine, title: &str) -> Result<()> {
        if !self.wanted() {
            return Ok(());
        }
        let Some((dag, schedule)) = (match engine {
            Engine::Npu(npu) => npu.last_schedule(),
            Engine::F32(_) => None,
        }) else {
            bail!("no scheduled prefill ran (a one-token prompt is decoded, not prefilled)");
        };
        self.write(&dag, title, &[("measured", &schedule)])
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum SchedulerArg {
    /// subgraphs start in program order (chunk by chunk, layer by layer)
    InOrder,
    /// llm.npu's rule: the ready subgraph that unblocks the most accelerator work first
    Ooo,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    tokens: TokenSource,
    /// Output file [default: llm-npu-calibration.json beside the model]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tokens per forward pass
    #[arg(long, default_value_t = 512)]
    window: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Backend {
    /// float32 reference path on the CPU
    F32,
    /// W8A8 linear layers on the integer accelerator (the CPU reference accelerator here), chunked prefill
    Npu,
}

/// The engine a command runs on.
enum Engine<'m> {
    F32(F32Backend<'m>),
    Npu(Box<NpuModel<'m>>),
}

impl Engine<'_> {
    fn backend(&self) -> &dyn llm_npu::backend::Backend {
        match self {
            Engine::F32(b) => b,
            Engine::Npu(n) => n.as_ref(),
        }
    }

    /// With -v: how the npu graphs were compiled and shared.
    fn report(&self, verbose: bool) {
        if let (true, Engine::Npu(n)) = (verbose, self) {
            let s = n.graph_stats();
            eprintln!(
                "npu: {} graphs compiled ({:.1} ms; largest workspace {:.1} MiB, shared), reused {} times; chunk sizes {:?}",
                s.compiled,
                s.compile_time.as_secs_f64() * 1e3,
                s.max_workspace_bytes as f64 / (1 << 20) as f64,
                s.reused,
                n.chunk_sizes
            );
            let work = n.shadow_work();
            let total = work.iter().fold(llm_npu::shadow::ShadowWork::default(), |mut a, &w| {
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
    }
}

/// Builds the backend chosen by `args` over a loaded model.
fn make_engine<'m>(loaded: &'m LoadedModel, args: &ModelArgs, backend: Backend) -> Result<Engine<'m>> {
    let model = &loaded.model;
    match backend {
        Backend::F32 => {
            if args.npu != NpuArgs::default() {
                bail!("--calibration, --per-tensor-weights, --no-smaller-chunks and the shadow options apply to --backend npu");
            }
            Ok(Engine::F32(F32Backend { model, chunk: args.chunk_size }))
        }
        Backend::Npu => {
            let cal = load_or_make_calibration(loaded, args)?;
            let opts = NpuOptions {
                chunk_size: args.chunk_size.unwrap_or(NpuOptions::default().chunk_size),
                smaller_chunks: !args.npu.no_smaller_chunks,
                weights: if args.npu.per_tensor_weights { WeightGranularity::PerTensor } else { WeightGranularity::PerChannel },
                shadow: args.npu.shadow()?,
                executors: args.npu.executors()?,
            };
            let bar = progress_bar(model.layers.len() as u64, "quantizing {bar:30} {pos}/{len} layers {elapsed}");
            let t0 = Instant::now();
            let npu = NpuModel::new(model, &cal, opts, &|| bar.inc(1))?;
            bar.finish_and_clear();
            eprintln!(
                "npu: {} int8 weights ({:.2} GiB, {}) quantized in {:.2} s; {}",
                if args.npu.per_tensor_weights { "per-tensor" } else { "per-channel" },
                npu.weight_bytes as f64 / (1u64 << 30) as f64,
                npu.accel.name(),
                t0.elapsed().as_secs_f64(),
                "attention and norms run in f32 on the CPU, the LM head in int8"
            );
            eprintln!("npu: {}", shadow_summary(&npu));
            Ok(Engine::Npu(Box::new(npu)))
        }
    }
}

/// One line: which inputs run shadow work and what the hot columns cost.
fn shadow_summary(npu: &NpuModel) -> String {
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

/// --calibration, else the file beside the model, else a quick calibration on random tokens.
fn load_or_make_calibration(loaded: &LoadedModel, args: &ModelArgs) -> Result<Calibration> {
    let beside = calibrate::default_path(&args.model);
    let path = args.npu.calibration.clone().or_else(|| beside.exists().then_some(beside));
    let cal = match path {
        Some(p) => {
            let c = Calibration::load(&p)?;
            c.check_against(&loaded.model, &p)?;
            if args.verbose {
                eprintln!("npu: calibration {} ({}, {} tokens)", p.display(), c.source, c.tokens);
            }
            c
        }
        None => {
            eprintln!("warning: no calibration file for this model: calibrating on 512 random tokens (run `llm-npu calibrate` on representative text for better accuracy)");
            random_calibration(&loaded.model, 512, 0)?
        }
    };
    Ok(cal)
}

/// Calibration on `n` random tokens, with a progress bar (two float passes over them).
fn random_calibration(model: &llm_npu::model::Transformer, n: usize, seed: u64) -> Result<Calibration> {
    let tokens = random_tokens(model.config.vocab_size, n, seed);
    let bar = progress_bar(0, "calibrating {bar:30} {pos}/{len} passes {elapsed}");
    let cal = Calibration::run(model, &tokens, 512, format!("random tokens, seed {seed}"), &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(cal)
}

fn random_tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a Hugging Face folder, a .gguf file, or a llama2.c .bin (with --tokenizer)
    #[arg(short, long)]
    model: PathBuf,
    /// Tokenizer file (tokenizer.json, GGUF, or llama2.c tokenizer.bin); overrides the model's own
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores)
    #[arg(short, long)]
    threads: Option<usize>,
    /// Compute backend
    #[arg(long, value_enum, default_value = "f32")]
    backend: Backend,
    /// Prefill chunk size: npu graphs are compiled for it (and its halvings); f32 chunks the prompt
    /// the same way [default: 256 for npu, whole prompt for f32]
    #[arg(long)]
    chunk_size: Option<usize>,
    #[command(flatten)]
    npu: NpuArgs,
    /// Print what the backend does (graphs compiled and reused)
    #[arg(short, long)]
    verbose: bool,
}

/// Options of the npu backend only (the f32 backend refuses them).
#[derive(Args, Clone, Default, PartialEq)]
struct NpuArgs {
    /// npu: calibration file from `llm-npu calibrate` [default: the one beside the model, else a
    /// quick calibration on random tokens]; with `inspect`, print what the npu backend makes of it
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// npu: one int8 scale per weight tensor (the paper's scheme) instead of one per output
    /// channel; per-channel is the default: it costs nothing on the accelerator (one scale per
    /// output column in the epilogue) and is far more accurate (README, "npu accuracy")
    #[arg(long)]
    per_tensor_weights: bool,
    /// npu: compile only --chunk-size graphs, not its halvings
    #[arg(long)]
    no_smaller_chunks: bool,
    /// npu: no shadow outlier execution; every input gets its max scale (for ablations)
    #[arg(long)]
    no_shadow: bool,
    /// npu: fraction of layers, most important first, that keep shadow work [default: 1.0]
    #[arg(long, value_name = "FRACTION")]
    shadow_keep: Option<f32>,
    /// npu: shadow an input only when its max |x| exceeds this many times its p99.9 [default: 2]
    #[arg(long, value_name = "RATIO")]
    shadow_ratio: Option<f32>,
    /// npu: shadow work only for the hot channels; other outliers are clipped (for ablations)
    #[arg(long)]
    shadow_hot_only: bool,
    /// npu: run the prefill's chunk x layer subgraphs on an accelerator executor and a CPU
    /// executor in this order [default: neither: chunk after chunk on one shared thread pool]
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    /// npu with --scheduler: threads of the accelerator and of the CPU executor, as ACCEL:CPU
    /// [default: 2:2, the fastest measured on 2 cores with no NPU (README, "Out-of-order")]
    #[arg(long, value_name = "ACCEL:CPU")]
    split: Option<String>,
}

impl NpuArgs {
    fn executors(&self) -> Result<Option<llm_npu::npu::scheduled::ExecutorOptions>> {
        use llm_npu::npu::scheduled::{ExecutorOptions, SchedulerKind};
        let split = self.split.as_deref().unwrap_or("2:2");
        if self.split.is_some() && self.scheduler.is_none() {
            bail!("--split sets the executors of --scheduler; add --scheduler in-order or --scheduler ooo");
        }
        let parse = || -> Option<(usize, usize)> {
            let (a, c) = split.split_once(':')?;
            Some((a.trim().parse().ok()?, c.trim().parse().ok()?))
        };
        let Some((accel_threads, cpu_threads)) = parse().filter(|&(a, c)| a > 0 && c > 0) else {
            bail!("--split takes two thread counts of at least 1, ACCEL:CPU (e.g. 2:1), got '{split}'");
        };
        Ok(self.scheduler.map(|s| ExecutorOptions {
            scheduler: match s {
                SchedulerArg::InOrder => SchedulerKind::InOrder,
                SchedulerArg::Ooo => SchedulerKind::OutOfOrder,
            },
            accel_threads,
            cpu_threads,
        }))
    }

    fn shadow(&self) -> Result<ShadowOptions> {
        let d = ShadowOptions::default();
        if self.no_shadow && (self.shadow_keep.is_some() || self.shadow_ratio.is_some() || self.shadow_hot_only) {
            bail!("--no-shadow turns shadow execution off; drop the other --shadow-* options");
        }
        let o = ShadowOptions {
            enabled: !self.no_shadow,
            keep: self.shadow_keep.unwrap_or(d.keep),
            min_ratio: self.shadow_ratio.unwrap_or(d.min_ratio),
            hot_only: self.shadow_hot_only,
            ..d
        };
        o.validate()?;
        Ok(o)
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; empty starts from the BOS token
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Maximum number of tokens to generate
    #[arg(short = 'n', long, default_value_t = 128)]
    n_predict: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = off)
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Random seed for sampling
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    pictures: ScheduleOutputs,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    /// Output .npy file (float32, [1, vocab] or [n_tokens, vocab] with --all-positions)
    #[arg(long)]
    out: PathBuf,
    /// Write the logits of every position instead of only the last
    #[arg(long)]
    all_positions: bool,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also list every tensor
    #[arg(long)]
    tensors: bool,
    /// Run the model and print, per layer and linear input, max |x|, the 99.9th percentile of |x|
    /// and the outlier channels: max |x| beyond 20x the median channel's max
    #[arg(long)]
    activation_stats: bool,
    #[command(flatten)]
    tokens: TokenSource,
}

/// Which tokens to run: a text file (tokenized) or random ids.
#[derive(Args)]
struct TokenSource {
    /// Text file to tokenize and run
    #[arg(long, conflicts_with = "random_tokens")]
    text: Option<PathBuf>,
    /// Run this many random token ids [default: 256 for inspect, 2048 for eval and calibrate]
    #[arg(long)]
    random_tokens: Option<usize>,
    /// Seed for the random token ids
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths to test (ppN), comma-separated
    #[arg(short = 'p', long, value_delimiter = ',', default_value = "512")]
    n_prompt: Vec<usize>,
    /// Tokens to generate (tgN), comma-separated; 0 skips
    #[arg(short = 'n', long, value_delimiter = ',', default_value = "128")]
    n_gen: Vec<usize>,
    /// Timed repetitions per test (after one warm-up run)
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Print one JSON object per test instead of the table
    #[arg(long)]
    json: bool,
    /// Our version of the llm.npu paper's ablation at the first -p length: f32; npu with the whole
    /// prompt as one graph; + chunks; + shadow outliers; + out-of-order execution
    #[arg(long)]
    ablation: bool,
    #[command(flatten)]
    pictures: ScheduleOutputs,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    tokens: TokenSource,
    /// Reference backend to compare against
    #[arg(long, value_enum, default_value = "f32")]
    ref_backend: Backend,
    /// Tokens per evaluation window [default: min(512, model context)]
    #[arg(long)]
    ctx: Option<usize>,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Model shape: tinyllama-1.1b, qwen2.5-0.5b, qwen1.5-1.8b, llama-3.2-1b, tiny
    #[arg(long)]
    shape: String,
    /// Output folder
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype in the file
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Plant activation outliers with the statistics of the llm.npu paper
    #[arg(long, value_enum, default_value = "none")]
    outliers: OutliersArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// tokenizer.json to copy (e.g. a real Llama 2 or Qwen2 one); default: a generated byte-level BPE
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    Bf16,
    F16,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutliersArg {
    None,
    Paper,
}

#[derive(Args)]
struct DemoArgs {
    /// Worker threads (default: all cores)
    #[arg(short, long)]
    threads: Option<usize>,
    /// Prompt length to benchmark
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Timed repetitions
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Logits(a) => cmd_logits(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Synth(a) => cmd_synth(a),
        Command::Demo(a) => cmd_demo(a),
        Command::Calibrate(a) => cmd_calibrate(a),
        Command::Simulate(a) => cmd_simulate(a),
        Command::Profile(a) => cmd_profile(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    Ok(n)
}

/// Loads the model with a progress bar on stderr (shown only on a terminal).
fn load_model(args: &ModelArgs) -> Result<LoadedModel> {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(indicatif::ProgressStyle::with_template("loading {bar:30} {pos}/{len} tensors {elapsed}").unwrap());
    let t0 = Instant::now();
    let opts = LoadOptions { tokenizer: args.tokenizer.as_deref(), on_start: &|n| bar.set_length(n as u64), on_tensor: &|| bar.inc(1) };
    // Library errors already name the file and field.
    let loaded = model::load(&args.model, &opts)?;
    bar.finish_and_clear();
    eprintln!(
        "loaded {} ({}, {} family, {} parameters) in {:.2} s",
        args.model.display(),
        loaded.format,
        loaded.model.config.family,
        human_count(loaded.model.num_parameters()),
        t0.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

fn cmd_run(a: RunArgs) -> Result<()> {
    a.pictures.check(&a.model)?;
    let threads = init_threads(a.model.threads)?;
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if !a.temp.is_finite() || a.temp < 0.0 {
        bail!("--temp must be a non-negative number, got {}", a.temp);
    }
    let loaded = load_model(&a.model)?;
    let Some(tok) = &loaded.tokenizer else {
        bail!("{}: no tokenizer found; pass one with --tokenizer (tokenizer.json, GGUF vocabulary or llama2.c tokenizer.bin)", a.model.model.display());
    };
    let cfg = &loaded.model.config;
    let bos = tok.bos_id().or(cfg.bos_token_id);
    let prompt = if a.prompt.is_empty() {
        vec![bos.context("the prompt is empty and the model has no BOS token to start from")?]
    } else {
        tok.encode(&a.prompt, true)?
    };
    let mut stop_tokens = cfg.eos_token_ids.clone();
    stop_tokens.extend(tok.eos_ids());
    let opts = GenerateOptions {
        max_new_tokens: a.n_predict,
        sampling: SamplingParams { temperature: a.temp, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        stop_tokens,
        vocab_limit: Some(tok.vocab_size()),
    };
    // Prime the detokenizer with the prompt so the first generated word keeps its leading space.
    let mut stream = tok.stream();
    for &id in &prompt {
        stream.push(id)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let engine = make_engine(&loaded, &a.model, a.model.backend)?;
    let stats = generate(engine.backend(), &prompt, &opts, |id| {
        if let Some(text) = stream.push(id)? {
            out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| llm_npu::Error::Input(format!("writing to stdout: {e}")))?;
        }
        Ok(())
    })?;
    if let Some(rest) = stream.finish() {
        out.write_all(rest.as_bytes())?;
    }
    writeln!(out)?;
    out.flush()?;
    engine.report(a.model.verbose);
    a.pictures.write_last(&engine, &format!("{}: {}-token prompt (measured)", a.model.model.display(), stats.prompt_tokens))?;
    if stats.hit_context_limit {
        eprintln!("note: stopped at the model's context limit ({} tokens)", cfg.max_seq_len);
    }
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} tokens/s) | generated: {} tokens, {:.1} tokens/s | backend {}, {threads} threads",
        stats.prompt_tokens,
        stats.prefill_time.as_secs_f64() * 1e3,
        stats.prefill_tokens_per_s(),
        stats.generated_tokens,
        stats.decode_tokens_per_s(),
        engine.backend().name()
    );
    Ok(())
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    init_threads(a.model.threads)?;
    let loaded = load_model(&a.model)?;
    let m = &loaded.model;
    let n = a.token_ids.len();
    if n > m.config.max_seq_len {
        bail!("{n} token ids exceed the model's context of {}", m.config.max_seq_len);
    }
    let engine = make_engine(&loaded, &a.model, a.model.backend)?;
    let mut cache = m.new_cache(n);
    let which = if a.all_positions { Logits::All } else { Logits::Last };
    let logits = engine.backend().forward(&a.token_ids, &mut cache, which)?;
    engine.report(a.model.verbose);
    let rows = logits.len() / m.config.vocab_size;
    write_npy(&a.out, &[rows, m.config.vocab_size], &logits)?;
    eprintln!("wrote {} ([{rows}, {}] float32)", a.out.display(), m.config.vocab_size);
    Ok(())
}

/// 1234 -> "1.2K", 1_100_048_384 -> "1.10B".
fn human_count(n: usize) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    Ok(llm_npu::npy::write_f32(path, shape, data)?)
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    if !a.activation_stats && (a.tokens.text.is_some() || a.tokens.random_tokens.is_some()) {
        bail!("--text and --random-tokens choose the tokens for --activation-stats; add --activation-stats");
    }
    let loaded = load_model(&a.model)?;
    let c = &loaded.model.config;
    println!("model:        {}", loaded.path.display());
    println!("format:       {}", loaded.format);
    println!("family:       {}", c.family);
    println!("parameters:   {} ({})", loaded.model.num_parameters(), human_count(loaded.model.num_parameters()));
    println!("layers:       {}", c.num_layers);
    println!("hidden:       {} (intermediate {})", c.hidden_size, c.intermediate_size);
    println!("heads:        {} query, {} key/value, head_dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
    println!("vocab:        {}{}", c.vocab_size, if c.tie_word_embeddings { " (LM head tied to embeddings)" } else { "" });
    println!("context:      {}", c.max_seq_len);
    let scaling = match (&c.rope.llama3, &c.rope.freq_factors) {
        (Some(s), _) => format!(", llama3 scaling x{}", s.factor),
        (None, Some(_)) => ", per-frequency factors from the file".to_string(),
        _ => String::new(),
    };
    println!("rope:         theta {}, {:?} pairing{scaling}", c.rope.theta, c.rope.style);
    println!("norm eps:     {}", c.rms_norm_eps);
    println!("qkv bias:     {}", c.qkv_bias);
    println!("bos / eos:    {:?} / {:?}", c.bos_token_id, c.eos_token_ids);
    match &loaded.tokenizer {
        Some(t) => println!("tokenizer:    {}", t.kind()),
        None => println!("tokenizer:    none (pass --tokenizer)"),
    }
    let dtypes = loaded.weights.dtype_summary();
    println!("dtypes:       {dtypes}");
    if a.tensors {
        for (name, dtype, shape) in loaded.weights.tensor_list() {
            println!("  {name:50} {dtype:5} {shape:?}");
        }
    }
    if let Some(path) = &a.model.npu.calibration {
        print_shadow_plan(&loaded, path, &a.model.npu)?;
    }
    if a.activation_stats {
        init_threads(a.model.threads)?;
        let tokens = load_tokens(&loaded, &a.tokens, 256)?;
        let m = &loaded.model;
        let mut stats = ActivationStats::default();
        for window in tokens.chunks(m.config.max_seq_len.min(2048)) {
            m.forward_observed(window, &mut m.new_cache(window.len()), Logits::Last, Some(&mut stats))?;
        }
        println!("\nactivation statistics over {} tokens (|x| at each linear-layer input):", tokens.len());
        println!("{:>5}  {:8}  {:>10}  {:>10}  {:>8}  outlier channels (max > 20x the median channel max, largest first)", "layer", "input", "max", "p99.9", "max/p999");
        for ((layer, _), (point, ps)) in &stats.points {
            let (max, p999) = (ps.max_abs(), ps.percentile(0.999));
            let outliers = ps.outlier_channels(20.0);
            let shown: Vec<String> = outliers.iter().take(16).map(|c| c.to_string()).collect();
            let more = if outliers.len() > 16 { format!(" ... (+{})", outliers.len() - 16) } else { String::new() };
            println!("{layer:>5}  {:8}  {max:>10.3}  {p999:>10.3}  {:>8.1}  {}: [{}{more}]", point.name(), max / p999.max(1e-12), outliers.len(), shown.join(", "));
        }
    }
    Ok(())
}

/// `inspect --calibration`: per layer, what the npu backend makes of the calibration file.
fn print_shadow_plan(loaded: &LoadedModel, path: &Path, npu: &NpuArgs) -> Result<()> {
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
                p.point.name(),
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

/// Token ids from --text (tokenized, with BOS) or --random-tokens (default `default_random`).
fn load_tokens(loaded: &LoadedModel, src: &TokenSource, default_random: usize) -> Result<Vec<u32>> {
    if let Some(path) = &src.text {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let tok = loaded.tokenizer.as_ref().context("--text needs a tokenizer; pass --tokenizer")?;
        let ids = tok.encode(&text, true)?;
        if ids.len() < 2 {
            bail!("{}: fewer than 2 tokens of text", path.display());
        }
        return Ok(ids);
    }
    let n = src.random_tokens.unwrap_or(default_random);
    if n < 2 {
        bail!("--random-tokens must be at least 2");
    }
    let mut rng = Rng::new(src.seed);
    Ok((0..n).map(|_| (rng.next_u64() % loaded.model.config.vocab_size as u64) as u32).collect())
}

fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(indicatif::ProgressStyle::with_template(template).unwrap());
    bar
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    a.pictures.check(&a.model)?;
    let threads = init_threads(a.model.threads)?;
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let loaded = load_model(&a.model)?;
    let m = &loaded.model;
    let mut tests: Vec<TestKind> = a.n_prompt.iter().filter(|&&n| n > 0).map(|&n| TestKind::Prompt(n)).collect();
    tests.extend(a.n_gen.iter().filter(|&&n| n > 0).map(|&n| TestKind::Generate(n)));
    if tests.is_empty() {
        bail!("nothing to run: give -p and/or -n with positive lengths");
    }
    for t in &tests {
        let n = match t {
            TestKind::Prompt(n) | TestKind::Generate(n) => *n,
        };
        if n > m.config.max_seq_len {
            bail!("{}: {n} tokens exceed the model's context of {}", t.name(), m.config.max_seq_len);
        }
    }
    if a.ablation {
        return bench_ablation(&loaded, &a, threads);
    }
    let engine = make_engine(&loaded, &a.model, a.model.backend)?;
    let desc = model_description(&loaded);
    let mut results: Vec<BenchResult> = Vec::new();
    for &t in &tests {
        let r = timed_test(engine.backend(), t, a.repetitions, threads, &t.name())?;
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["model"] = desc.clone().into();
            v["peak_rss_mib"] = bench::peak_rss_bytes().map_or(serde_json::Value::Null, |b| (b / (1 << 20)).into());
            println!("{v}");
        }
        results.push(r);
    }
    a.pictures.write_last(&engine, &format!("{desc}: the last timed prefill (measured)"))?;
    if !a.json {
        println!("| model | size | params | backend | threads | test | t/s |");
        println!("| --- | ---: | ---: | --- | ---: | ---: | ---: |");
        let size = format!("{:.2} GiB", (m.num_parameters() * 4) as f64 / (1u64 << 30) as f64);
        for r in &results {
            println!("| {desc} | {size} | {} | {} | {} | {} | {:.2} ± {:.2} |", human_count(m.num_parameters()), r.backend, r.threads, r.test, r.tokens_per_s, r.stddev);
        }
        engine.report(a.model.verbose);
        if let Some(b) = bench::peak_rss_bytes() {
            eprintln!("peak RSS: {:.2} GiB (includes the memory-mapped weights that were touched)", b as f64 / (1u64 << 30) as f64);
        }
    }
    Ok(())
}

/// One benchmark test with a progress bar showing each repetition's tokens/s.
fn timed_test(backend: &dyn llm_npu::backend::Backend, test: TestKind, repetitions: usize, threads: usize, label: &str) -> Result<BenchResult> {
    let bar = progress_bar(repetitions as u64, &format!("{label} {{bar:20}} {{pos}}/{{len}} {{msg}}"));
    let r = bench::run_test(backend, test, repetitions, threads, &mut |_, tps| {
        bar.inc(1);
        bar.set_message(format!("{tps:.2} t/s"));
    })?;
    bar.finish_and_clear();
    Ok(r)
}

/// `bench --ablation`: each step of the paper's ablation as an engine configuration, timed on the
/// same prompt length.
fn bench_ablation(loaded: &LoadedModel, a: &BenchArgs, threads: usize) -> Result<()> {
    if a.model.backend != Backend::F32 || a.model.chunk_size.is_some() || a.model.npu.no_shadow || a.model.npu.scheduler.is_some() || a.json {
        bail!("--ablation sets the backend, chunks, shadow and scheduler of each row itself; drop --backend, --chunk-size, --no-shadow, --scheduler and --json");
    }
    let n = *a.n_prompt.first().context("--ablation needs a prompt length (-p)")?;
    let base = ModelArgs { backend: Backend::Npu, ..a.model.clone() };
    let npu = |chunk: Option<usize>, no_smaller_chunks: bool, no_shadow: bool, scheduler: Option<SchedulerArg>| ModelArgs {
        chunk_size: chunk,
        npu: NpuArgs { no_smaller_chunks, no_shadow, scheduler, ..base.npu.clone() },
        ..base.clone()
    };
    let rows: [(&str, Backend, ModelArgs); 6] = [
        ("f32 on the CPU", Backend::F32, ModelArgs { npu: NpuArgs::default(), ..a.model.clone() }),
        ("npu: W8A8, the whole prompt as one graph", Backend::Npu, npu(Some(n), true, true, None)),
        ("+ chunk-sharing graphs (256 and halvings)", Backend::Npu, npu(None, false, true, None)),
        ("+ shadow outlier execution", Backend::Npu, npu(None, false, false, None)),
        ("(in-order executors, for reference)", Backend::Npu, npu(None, false, false, Some(SchedulerArg::InOrder))),
        ("+ out-of-order subgraph execution", Backend::Npu, npu(None, false, false, Some(SchedulerArg::Ooo))),
    ];
    let mut table = Vec::new();
    for (label, backend, args) in rows {
        let engine = make_engine(loaded, &args, backend)?;
        let r = timed_test(engine.backend(), TestKind::Prompt(n), a.repetitions, threads, label)?;
        let bubbles = match &engine {
            Engine::Npu(npu) => npu.last_schedule().map(|(_, s)| format!("{:.1}%", 100.0 * s.accel_bubble_rate())),
            Engine::F32(_) => None,
        };
        table.push((label, r, bubbles));
    }
    println!("\nablation, pp{n}, {} ({threads} threads; the accelerator is the CPU reference accelerator, sharing these cores):", model_description(loaded));
    println!("| configuration | pp{n} tokens/s | accelerator bubble rate (measured) |");
    println!("| --- | ---: | ---: |");
    for (label, r, bubbles) in &table {
        println!("| {label} | {:.1} ± {:.1} | {} |", r.tokens_per_s, r.stddev, bubbles.as_deref().unwrap_or("-"));
    }
    Ok(())
}

/// "llama 1.1B F32"-style label.
fn model_description(loaded: &LoadedModel) -> String {
    let dtypes = loaded.weights.dtype_summary();
    let main_dtype = dtypes.split(' ').next().unwrap_or("?");
    format!("{} {} {}", loaded.model.config.family, human_count(loaded.model.num_parameters()), main_dtype)
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    init_threads(a.model.threads)?;
    let loaded = load_model(&a.model)?;
    let m = &loaded.model;
    // The npu options go to whichever side is npu; the f32 side takes none of them.
    let f32_args = ModelArgs { npu: NpuArgs::default(), chunk_size: None, ..a.model.clone() };
    let args_for = |b: Backend| if b == Backend::Npu { &a.model } else { &f32_args };
    let engine = make_engine(&loaded, args_for(a.model.backend), a.model.backend)?;
    let reference = if a.ref_backend == a.model.backend { None } else { Some(make_engine(&loaded, args_for(a.ref_backend), a.ref_backend)?) };
    let tokens = load_tokens(&loaded, &a.tokens, 2048)?;
    let ctx = a.ctx.unwrap_or(512).min(m.config.max_seq_len);
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let windows: Vec<&[u32]> = tokens.chunks(ctx).filter(|w| w.len() >= 2).collect();
    let bar = progress_bar(windows.len() as u64, "eval {bar:30} {pos}/{len} windows {elapsed}");
    let mut acc = EvalAccumulator::default();
    for w in windows {
        let logits = engine.backend().forward(w, &mut m.new_cache(w.len()), Logits::All)?;
        let ref_logits = match &reference {
            Some(r) => r.backend().forward(w, &mut m.new_cache(w.len()), Logits::All)?,
            None => logits.clone(),
        };
        acc.add_window(w, &logits, &ref_logits, m.config.vocab_size)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    engine.report(a.model.verbose);
    if let Some(r) = &reference {
        r.report(a.model.verbose);
    }
    let r = acc.report()?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["backend"] = engine.backend().name().into();
        v["ref_backend"] = format!("{:?}", a.ref_backend).to_lowercase().into();
        println!("{v}");
    } else {
        println!("tokens scored:      {}", r.tokens);
        println!("perplexity:         {:.4} (backend {})", r.ppl, engine.backend().name());
        println!("reference ppl:      {:.4} ({:?})", r.ref_ppl, a.ref_backend);
        println!("ppl ratio:          {:.5}", r.ppl_ratio);
        println!("top-1 agreement:    {:.4}", r.top1_agreement);
        println!("KL divergence:      mean {:.6}, max {:.6}", r.mean_kld, r.max_kld);
        println!("mean top-1 prob:    {:.3}", r.mean_top1_prob);
    }
    Ok(())
}

fn cmd_synth(a: SynthArgs) -> Result<()> {
    let shape = synth::shape(&a.shape)?;
    let opts = SynthOptions {
        shape,
        dtype: match a.dtype {
            DTypeArg::F32 => SynthDType::F32,
            DTypeArg::Bf16 => SynthDType::BF16,
            DTypeArg::F16 => SynthDType::F16,
        },
        outliers: match a.outliers {
            OutliersArg::None => Outliers::None,
            OutliersArg::Paper => Outliers::Paper,
        },
        seed: a.seed,
        tokenizer: a.tokenizer.as_deref(),
    };
    synthesize_with_progress(&a.out, &opts)?;
    eprintln!("wrote {} (shape {}, random weights)", a.out.display(), shape.name);
    Ok(())
}

fn synthesize_with_progress(dir: &Path, opts: &SynthOptions) -> Result<()> {
    let bar = progress_bar(0, "synth {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}");
    synth::synthesize(dir, opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(())
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let threads = init_threads(a.threads)?;
    let shape = synth::shape("tinyllama-1.1b")?;
    let dir = llm_npu::demo::reference_model_dir()?;
    if llm_npu::demo::is_complete(&dir) {
        eprintln!("using the cached synthetic model in {}", dir.display());
    } else {
        eprintln!("synthesizing the reference shape (TinyLlama-1.1B, f32, random weights) into {} (once; about 4.4 GB)", dir.display());
        let opts = SynthOptions { shape, dtype: SynthDType::F32, outliers: Outliers::Paper, seed: 0, tokenizer: None };
        synthesize_with_progress(&dir, &opts)?;
    }
    let args = ModelArgs {
        model: dir.clone(),
        tokenizer: None,
        threads: a.threads,
        backend: Backend::F32,
        chunk_size: None,
        npu: NpuArgs::default(),
        verbose: false,
    };
    let loaded = load_model(&args)?;
    // 2048 tokens, not 512: the shadow's clip points sit at the calibration maxima of the
    // ordinary channels, and fewer tokens leave them low enough that new text crosses them
    // often, each time gathering a cold weight column (measured: 3x the cold outliers).
    const DEMO_CALIBRATION_TOKENS: usize = 2048;
    let cal_path = calibrate::default_path(&dir);
    let cached = Calibration::load(&cal_path).ok().filter(|c| c.tokens >= DEMO_CALIBRATION_TOKENS);
    if cached.is_none() {
        eprintln!("calibrating the npu backend on {DEMO_CALIBRATION_TOKENS} random tokens (once, about a minute)");
        random_calibration(&loaded.model, DEMO_CALIBRATION_TOKENS, 1)?.save(&cal_path)?;
    }
    let no_shadow_args = ModelArgs { npu: NpuArgs { no_shadow: true, ..NpuArgs::default() }, ..args.clone() };
    let engines = [
        ("f32 (CPU reference)", make_engine(&loaded, &args, Backend::F32)?),
        ("npu, W8A8 without shadow (--no-shadow)", make_engine(&loaded, &no_shadow_args, Backend::Npu)?),
        ("npu, W8A8 + shadow outliers (default)", make_engine(&loaded, &args, Backend::Npu)?),
    ];
    let m = &loaded.model;
    let n = a.n_prompt.min(m.config.max_seq_len);
    // Accuracy of the integer paths against f32 on the same random tokens.
    let tokens = random_tokens(m.config.vocab_size, 256.min(m.config.max_seq_len), 7);
    let reference = engines[0].1.backend().forward(&tokens, &mut m.new_cache(tokens.len()), Logits::All)?;
    let mut rows = Vec::new();
    for (label, engine) in &engines {
        let b = engine.backend();
        let r = timed_test(b, TestKind::Prompt(n), a.repetitions, threads, label)?;
        let logits = b.forward(&tokens, &mut m.new_cache(tokens.len()), Logits::All)?;
        let mut acc = EvalAccumulator::default();
        acc.add_window(&tokens, &logits, &reference, m.config.vocab_size)?;
        rows.push((label, r, acc.report()?));
    }
    println!();
    println!("llm-npu demo: prefill of a {n}-token prompt, {threads} threads");
    println!("model: synthetic TinyLlama-1.1B shape (dim 2048, 22 layers, vocab 32000) with RANDOM weights and planted");
    println!("       activation outliers, so the speed is real and the text it would write is meaningless.");
    println!();
    println!("| backend | pp{n} tokens/s | time to first token | vs f32 on {} random tokens: top-1 agreement, mean KL |", rows[0].2.tokens);
    println!("| --- | ---: | ---: | --- |");
    for (label, r, ev) in &rows {
        let accuracy = if r.backend == "f32" { "(reference)".to_string() } else { format!("{:.3}, {:.4}", ev.top1_agreement, ev.mean_kld) };
        println!("| {label} | {:.1} ± {:.1} | {:.2} s | {accuracy} |", r.tokens_per_s, r.stddev, n as f64 / r.tokens_per_s);
    }
    println!();
    println!("The npu backend here is the CPU reference accelerator: integer graphs on this machine's cores; the shadow");
    println!("path computes the clipped activation outliers in float on the CPU at the same time.");
    println!("Out-of-order subgraph execution: llm-npu bench -m MODEL --ablation (here the accelerator shares the CPU's");
    println!("cores, so it cannot add speed), and llm-npu simulate for a device with a real NPU.");
    println!("Run a real model: llm-npu run -m MODEL -p \"your prompt\" [--backend npu] (MODEL: HF folder, .gguf or llama2.c .bin)");
    println!("Benchmark it:     llm-npu bench -m MODEL -p 512 -n 128 --backend npu");
    Ok(())
}

fn cmd_calibrate(a: CalibrateArgs) -> Result<()> {
    let m = &a.model;
    if m.backend != Backend::F32 || m.chunk_size.is_some() || m.npu != NpuArgs::default() {
        bail!("calibrate runs the f32 model and takes no backend options; the output file is --out");
    }
    init_threads(a.model.threads)?;
    let loaded = load_model(&a.model)?;
    let tokens = load_tokens(&loaded, &a.tokens, 2048)?;
    let source = match &a.tokens.text {
        Some(p) => format!("text: {}", p.display()),
        None => format!("random tokens, seed {}", a.tokens.seed),
    };
    let bar = progress_bar(0, "calibrating {bar:30} {pos}/{len} passes {elapsed}");
    let cal = Calibration::run(&loaded.model, &tokens, a.window, source, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let out = a.out.clone().unwrap_or_else(|| calibrate::default_path(&a.model.model));
    cal.save(&out)?;
    eprintln!("wrote {} ({} tokens, {} layers x 4 linear inputs)", out.display(), cal.tokens, loaded.model.config.num_layers);
    Ok(())
}

fn cmd_simulate(a: SimulateArgs) -> Result<()> {
    use llm_npu::prefill::dag::Processor;
    use llm_npu::prefill::profile::DeviceProfile;
    use llm_npu::prefill::schedule::{simulate, InOrder, OutOfOrder, Scheduler};
    let profile = DeviceProfile::load(&a.profile)?;
    let chunk = a.chunk_size.unwrap_or(profile.chunk_size);
    if chunk == 0 || a.n_prompt == 0 {
        bail!("--chunk-size and -p must be at least 1");
    }
    const MAX_SIMULATED_TOKENS: usize = 1 << 20;
    if a.n_prompt > MAX_SIMULATED_TOKENS {
        bail!("-p {}: simulate takes prompts of up to {MAX_SIMULATED_TOKENS} tokens", a.n_prompt);
    }
    let (dag, cost) = profile.prompt_dag(a.n_prompt, chunk);
    let schedulers: Vec<Box<dyn Scheduler>> = match a.scheduler {
        Some(SchedulerArg::InOrder) => vec![Box::new(InOrder)],
        Some(SchedulerArg::Ooo) => vec![Box::new(OutOfOrder)],
        None => vec![Box::new(InOrder), Box::new(OutOfOrder)],
    };
    if !a.json {
        println!("{}: {}", profile.name, profile.description);
        println!(
            "{} tokens in {} chunks of {chunk} ({} padded), {} layers: {} subgraphs (simulated, not measured here)\n",
            a.n_prompt,
            dag.chunks,
            dag.chunks * chunk - a.n_prompt,
            profile.layers,
            dag.len()
        );
        println!("| scheduler | makespan | prefill tokens/s | accelerator bubble rate | accelerator busy | CPU busy |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    }
    let mut done = Vec::new();
    for mut s in schedulers {
        let r = simulate(&dag, &cost, s.as_mut());
        let tps = a.n_prompt as f64 / (r.makespan / 1e3);
        if a.json {
            let v = serde_json::json!({
                "profile": profile.name,
                "scheduler": s.name(),
                "n_prompt": a.n_prompt,
                "chunk_size": chunk,
                "subgraphs": dag.len(),
                "makespan_ms": r.makespan,
                "tokens_per_s": tps,
                "accel_bubble_rate": r.accel_bubble_rate(),
                "accel_utilization": r.utilization(Processor::Accel),
                "cpu_utilization": r.utilization(Processor::Cpu),
            });
            println!("{v}");
        } else {
            println!(
                "| {} | {:.1} ms | {tps:.0} | {:.2}% | {:.1}% | {:.1}% |",
                s.name(),
                r.makespan,
                100.0 * r.accel_bubble_rate(),
                100.0 * r.utilization(Processor::Accel),
                100.0 * r.utilization(Processor::Cpu)
            );
        }
        done.push((s.name(), r));
    }
    let named: Vec<(&str, &llm_npu::prefill::schedule::Schedule)> = done.iter().map(|(n, r)| (*n, r)).collect();
    let title = format!("{} (simulated): {} tokens, chunks of {chunk}, {} layers", profile.name, a.n_prompt, profile.layers);
    a.pictures.write(&dag, &title, &named)
}

fn cmd_profile(a: ProfileArgs) -> Result<()> {
    use llm_npu::prefill::profile::DeviceProfile;
    let threads = init_threads(a.model.threads)?;
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.model.backend != Backend::Npu {
        bail!("profile times the npu backend's subgraphs: add --backend npu");
    }
    let loaded = load_model(&a.model)?;
    let m = &loaded.model;
    let n = a.n_prompt.min(m.config.max_seq_len);
    let engine = make_engine(&loaded, &a.model, Backend::Npu)?;
    let Engine::Npu(npu) = &engine else { unreachable!("built for the npu backend") };
    let chunk = npu.chunk_sizes[0];
    if n < chunk {
        bail!("-p {n} holds no full chunk of {chunk} tokens; give at least {chunk}");
    }
    let tokens = random_tokens(m.config.vocab_size, n, 0);
    let bar = progress_bar(a.repetitions as u64 + 1, "profiling {bar:30} {pos}/{len} prefills {elapsed}");
    npu.forward(&tokens, &mut m.new_cache(n), Logits::Last)?;
    bar.inc(1);
    npu.start_profiling();
    for _ in 0..a.repetitions {
        npu.forward(&tokens, &mut m.new_cache(n), Logits::Last)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let name = format!("measured: {}", model_description(&loaded));
    let description = format!("{} on this machine, {} ({threads} threads), {n}-token prompts, {} runs", a.model.model.display(), npu.accel.name(), a.repetitions);
    let profile = DeviceProfile::from_timings(name, description, m.config.num_layers, chunk, &npu.take_profile())?;
    let out = a.out.clone().unwrap_or_else(|| llm_npu::prefill::profile::default_path(&a.model.model));
    std::fs::write(&out, serde_json::to_string_pretty(&profile)?).with_context(|| format!("writing {}", out.display()))?;
    println!("per layer and {chunk}-token chunk: q/k/v {:.2} ms, o_proj..down_proj {:.2} ms, attention {:.2} ms x (2i+1) for chunk i, shadow {:.2} + {:.2} ms in {:.0}% of the layers", profile.qkv_ms, profile.o_ffn_ms, profile.attention_ms, profile.shadow_qkv_ms, profile.shadow_o_ffn_ms, 100.0 * profile.shadow_keep);
    println!("wrote {}; see what scheduling would do with these costs on a dedicated accelerator: llm-npu simulate --profile {} -p {n} --chunk-size {chunk}", out.display(), out.display());
    Ok(())
}
