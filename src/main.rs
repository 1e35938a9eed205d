//! The `llm-npu` command line: a thin layer over the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use llm_npu::generate::{generate, GenerateOptions};
use llm_npu::model::{self, LoadOptions, LoadedModel, Logits};
use llm_npu::sampling::SamplingParams;

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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// float32 reference path on the CPU
    F32,
}

#[derive(Args)]
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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Logits(a) => cmd_logits(a),
        Command::Inspect(a) => cmd_inspect(a),
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
    let Backend::F32 = args.backend;
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
    };
    // Prime the detokenizer with the prompt so the first generated word keeps its leading space.
    let mut stream = tok.stream();
    for &id in &prompt {
        stream.push(id)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stats = generate(&loaded.model, &prompt, &opts, |id| {
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
    if stats.hit_context_limit {
        eprintln!("note: stopped at the model's context limit ({} tokens)", cfg.max_seq_len);
    }
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} tokens/s) | generated: {} tokens, {:.1} tokens/s | backend f32, {threads} threads",
        stats.prompt_tokens,
        stats.prefill_time.as_secs_f64() * 1e3,
        stats.prefill_tokens_per_s(),
        stats.generated_tokens,
        stats.decode_tokens_per_s()
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
    let mut cache = m.new_cache(n);
    let which = if a.all_positions { Logits::All } else { Logits::Last };
    let logits = m.forward(&a.token_ids, &mut cache, which)?;
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
    Ok(())
}
