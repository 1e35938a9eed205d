//! `llm-npu run`: generate text from a prompt, streamed to stdout.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::generate::{generate, GenerateOptions};
use llm_npu::sampling::SamplingParams;

use super::args::ModelArgs;
use super::report::{self, ScheduleOutputs};

#[derive(Args)]
pub struct RunArgs {
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

pub fn run(a: RunArgs) -> Result<()> {
    a.pictures.check(&a.model)?;
    let threads = llm_npu::engine::init_threads(a.model.threads)?;
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if !a.temp.is_finite() || a.temp < 0.0 {
        bail!("--temp must be a non-negative number, got {}", a.temp);
    }
    let loaded = report::load_model(&a.model)?;
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
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    let stats = generate(engine.as_ref(), &prompt, &opts, |id| {
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
    report::engine_report(engine.as_ref(), a.model.verbose);
    a.pictures.write_last(engine.as_ref(), &format!("{}: {}-token prompt (measured)", a.model.model.display(), stats.prompt_tokens))?;
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
        engine.name()
    );
    Ok(())
}
