//! Options shared by several commands, and their translation into the library's options. Flag
//! checks live here: the library speaks of values, the CLI of flags.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use llm_npu::bitstack::{BitStackOptions, Budget};
use llm_npu::kernels::attention::Precision;
use llm_npu::engine::npu::scheduled::{ExecutorOptions, SchedulerKind};
use llm_npu::engine::{BackendKind, CalibrationSource, EngineOptions, ModelOptions, NpuOptions};
use llm_npu::model::LoadedModel;
use llm_npu::quant::WeightGranularity;
use llm_npu::shadow::ShadowOptions;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum BackendArg {
    /// float32 reference path on the CPU
    F32,
    /// W8A8 linear layers on the integer accelerator (the CPU reference accelerator here), chunked prefill
    Npu,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::F32 => BackendKind::F32,
            BackendArg::Npu => BackendKind::Npu,
        }
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum SchedulerArg {
    /// subgraphs start in program order (chunk by chunk, layer by layer)
    InOrder,
    /// llm.npu's rule: the ready subgraph that unblocks the most accelerator work first
    Ooo,
}

impl From<SchedulerArg> for SchedulerKind {
    fn from(s: SchedulerArg) -> Self {
        match s {
            SchedulerArg::InOrder => SchedulerKind::InOrder,
            SchedulerArg::Ooo => SchedulerKind::OutOfOrder,
        }
    }
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face folder, a .gguf file, or a llama2.c .bin (with --tokenizer)
    #[arg(short, long)]
    pub model: PathBuf,
    /// Tokenizer file (tokenizer.json, GGUF, or llama2.c tokenizer.bin); overrides the model's own
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores)
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Compute backend
    #[arg(long, value_enum, default_value = "f32")]
    pub backend: BackendArg,
    /// Prefill chunk size: npu graphs are compiled for it (and its halvings); f32 chunks the prompt
    /// the same way [default: for npu 512 on the CPU reference accelerator, where it measured
    /// faster, and the paper's 256 on the others; the whole prompt for f32]
    #[arg(long)]
    pub chunk_size: Option<usize>,
    #[command(flatten)]
    pub npu: NpuArgs,
    /// Run the decoder's linears on a BitStack file made by `llm-npu bitstack` (f32 backend):
    /// as many of its blocks as --memory allows
    #[arg(long, value_name = "FILE")]
    pub bitstack: Option<PathBuf>,
    /// With --bitstack: megabytes for all the model's weights (embeddings, norms and LM head as
    /// the model stores them, plus as many blocks as fit) [default: the whole stack]
    #[arg(long, value_name = "MB")]
    pub memory: Option<f64>,
    /// Print what the backend does (graphs compiled and reused)
    #[arg(short, long)]
    pub verbose: bool,
}

/// Options of the npu backend only (the f32 backend refuses them).
#[derive(Args, Clone, Default, PartialEq)]
pub struct NpuArgs {
    /// npu: what runs the accelerator graphs: ref (the CPU reference accelerator, our int8
    /// kernels), ort-cpu (ONNX Runtime's CPU execution provider), qnn (Qualcomm's QNN HTP, the
    /// Snapdragon NPU; emulated on x86-64) or openvino (Intel's OpenVINO on
    /// LLM_NPU_OPENVINO_DEVICE, default NPU); all but ref need ORT_DYLIB_PATH, see README
    /// "ONNX Runtime" [default: ref]
    #[arg(long, value_name = "NAME")]
    pub accelerator: Option<String>,
    /// npu: folder where the accelerator keeps compiled graphs between runs (qnn) [default:
    /// llm-npu-graphs beside the model; an unwritable folder means compiling every run]
    #[arg(long, value_name = "DIR")]
    pub graph_cache: Option<PathBuf>,
    /// npu: calibration file from `llm-npu calibrate` [default: the one beside the model, else a
    /// quick calibration on random tokens]; with `inspect`, print what the npu backend makes of it
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// npu: one int8 scale per weight tensor (the paper's scheme) instead of one per output
    /// channel; per-channel is the default: it costs nothing on the accelerator (one scale per
    /// output column in the epilogue) and is far more accurate (README, "npu accuracy")
    #[arg(long)]
    pub per_tensor_weights: bool,
    /// npu: compile only --chunk-size graphs, not its halvings
    #[arg(long)]
    pub no_smaller_chunks: bool,
    /// npu: no shadow outlier execution; every input gets its max scale (for ablations)
    #[arg(long)]
    pub no_shadow: bool,
    /// npu: fraction of layers, most important first, that keep shadow work [default: 1.0]
    #[arg(long, value_name = "FRACTION")]
    pub shadow_keep: Option<f32>,
    /// npu: shadow an input only when its max |x| exceeds this many times its p99.9 [default: 2]
    #[arg(long, value_name = "RATIO")]
    pub shadow_ratio: Option<f32>,
    /// npu: shadow work only for the hot channels; other outliers are clipped (for ablations)
    #[arg(long)]
    pub shadow_hot_only: bool,
    /// npu: run the prefill's chunk x layer subgraphs on an accelerator executor and a CPU
    /// executor in this order [default: neither: chunk after chunk on one shared thread pool]
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerArg>,
    /// npu with --scheduler: threads of the accelerator and of the CPU executor, as ACCEL:CPU
    /// [default: 2:2, the fastest measured on 2 cores with no NPU (README, "Out-of-order")]
    #[arg(long, value_name = "ACCEL:CPU")]
    pub split: Option<String>,
    /// npu: prefill attention in int8 (q.k and p.v as integer dot products, the softmax in f32;
    /// chunks of 16+ tokens, decode stays f32): faster on long prompts, less exact (README,
    /// "Long prompts", has both figures)
    #[arg(long)]
    pub int8_attention: bool,
    /// npu: prefill attention in bf16 on AMX tiles (q.k and p.v as bf16 products into f32 sums,
    /// the softmax in f32; chunks of 16+ tokens, decode stays f32; f32 on CPUs without
    /// AMX-BF16): nearly int8's speed on long prompts at a fraction of its error (README, "bf16
    /// attention")
    #[arg(long, conflicts_with = "int8_attention")]
    pub bf16_attention: bool,
    /// npu: quantize the weights at every run, keeping nothing [default: a run that quantizes
    /// keeps its int8 weights, when it ends (serve and chat: once idle), in int8-weights/ of llm-npu's cache folder
    /// ($LLM_NPU_CACHE, else $XDG_CACHE_HOME/llm-npu, else ~/.cache/llm-npu; at most 20 GiB, the
    /// least recently used removed first), and later runs map them instead: TinyLlama's first
    /// token 1-3 s sooner]
    #[arg(long)]
    pub no_weight_cache: bool,
}

impl ModelArgs {
    /// True when any flag chooses how the model runs (backend, chunks, npu, BitStack): commands
    /// that work on the model's own f32 weights refuse them.
    pub fn has_engine_options(&self) -> bool {
        self.backend != BackendArg::F32 || self.chunk_size.is_some() || self.npu != NpuArgs::default() || self.bitstack.is_some() || self.memory.is_some()
    }

    pub fn model_options(&self) -> ModelOptions {
        ModelOptions { path: self.model.clone(), tokenizer: self.tokenizer.clone(), threads: self.threads }
    }

    /// The engine these flags ask for, with the backend given (eval and demo build several).
    pub fn engine_options_for(&self, backend: BackendArg) -> Result<EngineOptions> {
        if backend == BackendArg::F32 && self.npu != NpuArgs::default() {
            bail!("--accelerator, --graph-cache, --calibration, --per-tensor-weights, --no-smaller-chunks, --int8-attention, --bf16-attention, --no-weight-cache and the shadow and scheduler options apply to --backend npu");
        }
        Ok(EngineOptions {
            backend: backend.into(),
            chunk_size: self.chunk_size,
            npu: self.npu.options()?,
            calibration: self.npu.calibration.clone().map_or(CalibrationSource::Auto, CalibrationSource::File),
            bitstack: self.bitstack_options(backend)?,
        })
    }

    fn bitstack_options(&self, backend: BackendArg) -> Result<Option<BitStackOptions>> {
        let Some(path) = &self.bitstack else {
            if self.memory.is_some() {
                bail!("--memory sets how much of a BitStack to load; add --bitstack FILE");
            }
            return Ok(None);
        };
        if backend != BackendArg::F32 {
            bail!("--bitstack runs on --backend f32 (the npu backend keeps its own int8 weights; README, \"BitStack\")");
        }
        if self.chunk_size.is_some() {
            bail!("--chunk-size does not apply with --bitstack (prompts run whole, on panels rebuilt from the blocks)");
        }
        let budget = match self.memory {
            None => Budget::All,
            Some(mb) if mb.is_finite() && mb > 0.0 => Budget::MemoryMb(mb),
            Some(mb) => bail!("--memory takes a positive number of megabytes, got {mb}"),
        };
        Ok(Some(BitStackOptions { path: path.clone(), budget }))
    }
}

impl NpuArgs {
    pub fn options(&self) -> Result<NpuOptions> {
        let name = self.accelerator.as_deref().unwrap_or(NpuOptions::default().accelerator);
        let Some(&(accelerator, _)) = llm_npu::accel::ACCELERATORS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = llm_npu::accel::ACCELERATORS.iter().map(|(n, _)| *n).collect();
            bail!("--accelerator {name}: unknown (known: {})", known.join(", "));
        };
        Ok(NpuOptions {
            accelerator,
            graph_cache: self.graph_cache.clone(),
            smaller_chunks: !self.no_smaller_chunks,
            weights: if self.per_tensor_weights { WeightGranularity::PerTensor } else { WeightGranularity::PerChannel },
            shadow: self.shadow()?,
            executors: self.executors()?,
            attention: match (self.int8_attention, self.bf16_attention) {
                (true, _) => Precision::Int8,
                (_, true) => Precision::Bf16,
                _ => Precision::F32,
            },
            keep_weights: !self.no_weight_cache,
        })
    }

    fn executors(&self) -> Result<Option<ExecutorOptions>> {
        let d = ExecutorOptions::default();
        let default_split = format!("{}:{}", d.accel_threads, d.cpu_threads);
        let split = self.split.as_deref().unwrap_or(&default_split);
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
        Ok(self.scheduler.map(|s| ExecutorOptions { scheduler: s.into(), accel_threads, cpu_threads }))
    }

    pub fn shadow(&self) -> Result<ShadowOptions> {
        let d = ShadowOptions::default();
        if self.no_shadow && (self.shadow_keep.is_some() || self.shadow_ratio.is_some() || self.shadow_hot_only) {
            bail!("--no-shadow turns shadow execution off; drop the other --shadow-* options");
        }
        // Each flag's value checked on its own, so the error names the flag.
        let keep = self.shadow_keep.unwrap_or(d.keep);
        ShadowOptions { keep, ..d }.validate().map_err(|e| anyhow!("--shadow-keep {keep}: {e}"))?;
        let min_ratio = self.shadow_ratio.unwrap_or(d.min_ratio);
        ShadowOptions { min_ratio, ..d }.validate().map_err(|e| anyhow!("--shadow-ratio {min_ratio}: {e}"))?;
        Ok(ShadowOptions { enabled: !self.no_shadow, keep, min_ratio, hot_only: self.shadow_hot_only, ..d })
    }
}

/// Which tokens to run: a text file (tokenized) or random ids.
#[derive(Args)]
pub struct TokenSource {
    /// Text file to tokenize and run
    #[arg(long, conflicts_with = "random_tokens")]
    pub text: Option<PathBuf>,
    /// Run this many random token ids [default: 256 for inspect, 2048 for eval and calibrate]
    #[arg(long)]
    pub random_tokens: Option<usize>,
    /// Seed for the random token ids
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TokenSource {
    /// Token ids from --text (tokenized, with BOS) or --random-tokens (default `default_random`).
    pub fn tokens(&self, loaded: &LoadedModel, default_random: usize) -> Result<Vec<u32>> {
        if let Some(path) = &self.text {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let tok = loaded.tokenizer.as_ref().context("--text needs a tokenizer; pass --tokenizer")?;
            let ids = tok.encode(&text, true)?;
            if ids.len() < 2 {
                bail!("{}: fewer than 2 tokens of text", path.display());
            }
            return Ok(ids);
        }
        let n = self.random_tokens.unwrap_or(default_random);
        if n < 2 {
            bail!("--random-tokens must be at least 2");
        }
        Ok(llm_npu::util::random_tokens(loaded.model.config.vocab_size, n, self.seed))
    }

    /// What the tokens are, for a calibration file's record.
    pub fn describe(&self) -> String {
        match &self.text {
            Some(p) => format!("text: {}", p.display()),
            None => format!("random tokens, seed {}", self.seed),
        }
    }
}

/// Sampling flags of the commands that generate text.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate (per reply in chat)
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Random seed for sampling
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    /// Generation options with the model's stop tokens (EOS and end-of-turn tokens).
    pub fn generate_options(&self, loaded: &LoadedModel) -> Result<llm_npu::generate::GenerateOptions> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if !self.temp.is_finite() || self.temp < 0.0 {
            bail!("--temp must be a non-negative number, got {}", self.temp);
        }
        Ok(llm_npu::generate::GenerateOptions {
            max_new_tokens: self.n_predict,
            sampling: llm_npu::sampling::SamplingParams { temperature: self.temp, top_k: self.top_k, top_p: self.top_p, seed: self.seed },
            stop_tokens: loaded.stop_tokens(),
            vocab_limit: loaded.tokenizer.as_ref().map(|t| t.vocab_size()),
        })
    }
}

/// The chat template and system message of `run --chat` and `chat`.
#[derive(Args, Clone, Default)]
pub struct ChatArgs {
    /// System message opening the conversation
    #[arg(long)]
    pub system: Option<String>,
    /// Jinja chat template file to use instead of the model's own
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
}

impl ChatArgs {
    pub fn template(&self, loaded: &LoadedModel) -> Result<llm_npu::chat::ChatTemplate> {
        let source = match &self.chat_template {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        Ok(loaded.chat_template(source.as_deref())?)
    }

    /// The conversation's opening: the system message, if any.
    pub fn opening(&self) -> Vec<serde_json::Value> {
        self.system.iter().map(|s| serde_json::json!({"role": "system", "content": s})).collect()
    }
}
