//! Text generation: batched prefill of the prompt, then token-by-token decode from the KV cache,
//! with each new token handed to a callback as soon as it is sampled (for streaming output).

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::engine::Engine;
use crate::model::Logits;
use crate::sampling::{Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end generation (not passed to the callback).
    pub stop_tokens: Vec<u32>,
    /// Ids at or above this are never sampled (a model's vocabulary can be larger than its
    /// tokenizer's, e.g. Qwen2's padded embedding rows, which the tokenizer cannot decode).
    pub vocab_limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// True when generation stopped because the context was full.
    pub hit_context_limit: bool,
}

impl GenerationStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill logits).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each one.
pub fn generate(backend: &dyn Engine, prompt: &[u32], opts: &GenerateOptions, mut on_token: impl FnMut(u32) -> Result<()>) -> Result<GenerationStats> {
    let model = backend.model();
    let ctx = model.config.max_seq_len;
    if prompt.is_empty() {
        return Err(Error::Input("the prompt has no tokens (and the model defines no BOS token to start from)".into()));
    }
    if prompt.len() > ctx {
        return Err(Error::Input(format!("the prompt has {} tokens, more than the model's context of {ctx}", prompt.len())));
    }
    let capacity = prompt.len().saturating_add(opts.max_new_tokens).min(ctx);
    let mut cache = model.new_cache(capacity);
    let mut sampler = Sampler::new(opts.sampling);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    if opts.max_new_tokens == 0 {
        return Ok(stats);
    }

    let t0 = Instant::now();
    let mut logits = backend.forward(prompt, &mut cache, Logits::Last)?;
    stats.prefill_time = t0.elapsed();

    let t1 = Instant::now();
    loop {
        if let Some(limit) = opts.vocab_limit.filter(|&l| l < logits.len()) {
            logits[limit..].fill(f32::NEG_INFINITY);
        }
        let next = sampler.sample(&logits);
        if opts.stop_tokens.contains(&next) {
            break;
        }
        stats.generated_tokens += 1;
        on_token(next)?;
        if stats.generated_tokens >= opts.max_new_tokens {
            break;
        }
        if cache.len() >= capacity {
            stats.hit_context_limit = true;
            break;
        }
        logits = backend.forward(&[next], &mut cache, Logits::Last)?;
    }
    stats.decode_time = t1.elapsed();
    Ok(stats)
}
