//! Text generation: batched prefill of the prompt, then token-by-token decode from the KV cache,
//! with each new token handed to a callback as soon as it is sampled (for streaming output).

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::engine::Engine;
use crate::model::{KvCache, Logits};
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
    /// Prompt tokens whose keys and values came from the cache (a `Session`'s earlier turns).
    pub cached_tokens: usize,
}

impl GenerationStats {
    /// Prompt tokens computed (not cached) per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill logits).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each one.
pub fn generate(backend: &dyn Engine, prompt: &[u32], opts: &GenerateOptions, on_token: impl FnMut(u32) -> Result<()>) -> Result<GenerationStats> {
    let ctx = backend.model().config.max_seq_len;
    check_prompt(prompt, ctx)?;
    let capacity = prompt.len().saturating_add(opts.max_new_tokens).min(ctx);
    let mut session = Session { cache: backend.model().new_cache(capacity), tokens: Vec::new(), last: None };
    session.continue_with(backend, prompt, 0, opts, on_token)
}

fn check_prompt(prompt: &[u32], ctx: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt has no tokens (and the model defines no BOS token to start from)".into()));
    }
    if prompt.len() > ctx {
        return Err(Error::Input(format!("the prompt has {} tokens, more than the model's context of {ctx}", prompt.len())));
    }
    Ok(())
}

/// A conversation kept in a KV cache: each turn passes the whole token sequence so far (the
/// chat template rendered again), and only what follows the longest prefix the cache already
/// holds is prefilled. The cache takes the model's full context (sliding-window layers hold
/// only their window).
pub struct Session {
    cache: KvCache,
    /// The tokens whose keys and values the cache holds, in order.
    tokens: Vec<u32>,
    /// The stats of the last generation, also when its callback stopped it.
    last: Option<GenerationStats>,
}

impl Session {
    pub fn new(backend: &dyn Engine) -> Session {
        let m = backend.model();
        Session::with_cache(m.new_cache(m.config.max_seq_len))
    }

    /// A session over a cache of the caller's making (an empty one).
    pub fn with_cache(cache: KvCache) -> Session {
        Session { cache, tokens: Vec::new(), last: None }
    }

    /// The stats of the last generation, including one its callback stopped with an error.
    pub fn last_stats(&self) -> Option<GenerationStats> {
        self.last.clone()
    }

    /// Tokens held (prompt and replies so far).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many leading tokens of `prompt` a `generate` with it would not recompute: the prefix
    /// it shares with what the session holds, except the prompt's last token (always run again:
    /// its logits start the reply), and 0 when a sliding-window layer has dropped keys that
    /// the next position needs.
    pub fn shared_prefix(&self, prompt: &[u32]) -> usize {
        let shared = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        self.cache.resumable(shared.min(prompt.len().saturating_sub(1)))
    }

    /// Bytes its KV cache takes.
    pub fn memory_bytes(&self) -> usize {
        self.cache.memory_bytes()
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.cache.truncate(0);
    }

    /// Generates after `prompt`, reusing the cached prefix it shares with what the session holds.
    /// `stats.cached_tokens` says how many prompt tokens were not recomputed. When `on_token`
    /// returns an error (e.g. the user interrupted), generation stops there with that error and
    /// the session keeps everything computed so far.
    pub fn generate(&mut self, backend: &dyn Engine, prompt: &[u32], opts: &GenerateOptions, on_token: impl FnMut(u32) -> Result<()>) -> Result<GenerationStats> {
        check_prompt(prompt, self.cache.capacity())?;
        let shared = self.cache.truncate(self.shared_prefix(prompt));
        self.tokens.truncate(shared);
        self.continue_with(backend, &prompt[shared..], shared, opts, on_token)
    }

    /// Runs `new` after what the cache holds (`cached` tokens of the prompt), then samples up to
    /// `max_new_tokens`.
    fn continue_with(&mut self, backend: &dyn Engine, new: &[u32], cached: usize, opts: &GenerateOptions, mut on_token: impl FnMut(u32) -> Result<()>) -> Result<GenerationStats> {
        let capacity = self.cache.capacity();
        if self.tokens.len() + new.len() > capacity {
            return Err(Error::Input(format!("{} tokens exceed the context of {capacity}", self.tokens.len() + new.len())));
        }
        let mut sampler = Sampler::new(opts.sampling);
        let mut stats = GenerationStats { prompt_tokens: cached + new.len(), cached_tokens: cached, ..Default::default() };
        self.last = None;
        if opts.max_new_tokens == 0 {
            return Ok(stats);
        }
        let t0 = Instant::now();
        let mut logits = backend.forward(new, &mut self.cache, Logits::Last)?;
        self.tokens.extend_from_slice(new);
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
            // (The last token shown is not run through the model: a session's next turn
            // computes it with its prompt.)
            if let Err(e) = on_token(next) {
                stats.decode_time = t1.elapsed();
                self.last = Some(stats);
                return Err(e);
            }
            if stats.generated_tokens >= opts.max_new_tokens {
                break;
            }
            if self.cache.len() >= capacity {
                stats.hit_context_limit = true;
                break;
            }
            logits = backend.forward(&[next], &mut self.cache, Logits::Last)?;
            self.tokens.push(next);
        }
        stats.decode_time = t1.elapsed();
        self.last = Some(stats.clone());
        Ok(stats)
    }
}
