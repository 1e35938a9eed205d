//! `llm-npu bench`: prompt-processing (pp) and text-generation (tg) throughput, llama-bench style.
//! Inputs are random token ids (tokenization is not timed) and generation feeds back fixed random
//! ids (sampling is not timed). Each test runs once untimed to warm up (pages and caches), then
//! `reps` timed repetitions; we report the median and the standard deviation of tokens/s.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::backend::Backend;
use crate::model::{Logits, Transformer};
use crate::sampling::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    /// Prefill of n prompt tokens from an empty cache, in one batch.
    Prompt(usize),
    /// n single-token decode steps from an empty cache.
    Generate(usize),
}

impl TestKind {
    pub fn name(self) -> String {
        match self {
            TestKind::Prompt(n) => format!("pp{n}"),
            TestKind::Generate(n) => format!("tg{n}"),
        }
    }
    fn tokens(self) -> usize {
        match self {
            TestKind::Prompt(n) | TestKind::Generate(n) => n,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub test: String,
    pub backend: String,
    pub threads: usize,
    pub n_tokens: usize,
    /// median tokens/s over the repetitions
    pub tokens_per_s: f64,
    /// sample standard deviation of tokens/s
    pub stddev: f64,
    pub samples_tokens_per_s: Vec<f64>,
}

/// Median of a non-empty list.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Sample standard deviation (0 for fewer than two values).
pub fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

fn random_tokens(model: &Transformer, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % model.config.vocab_size as u64) as u32).collect()
}

/// Seconds for one run of `test`.
fn time_once(backend: &dyn Backend, test: TestKind, tokens: &[u32]) -> Result<f64> {
    let mut cache = backend.model().new_cache(tokens.len());
    let t0 = Instant::now();
    match test {
        TestKind::Prompt(_) => {
            backend.forward(tokens, &mut cache, Logits::Last)?;
        }
        TestKind::Generate(_) => {
            for &t in tokens {
                backend.forward(&[t], &mut cache, Logits::Last)?;
            }
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Runs one test: a warm-up, then `reps` timed repetitions. `on_rep(i, tokens_per_s)` reports progress.
pub fn run_test(backend: &dyn Backend, test: TestKind, reps: usize, threads: usize, on_rep: &mut dyn FnMut(usize, f64)) -> Result<BenchResult> {
    let model = backend.model();
    let n = test.tokens().min(model.config.max_seq_len);
    let tokens = random_tokens(model, n, 1234 + n as u64);
    // Warm-up: touches every weight page, warms the caches and, for prompts, runs the same
    // size so that one-time work (an accelerator compiling its graphs) is not timed.
    let warm = match test {
        TestKind::Prompt(_) => TestKind::Prompt(n),
        TestKind::Generate(_) => TestKind::Generate(n.min(4)),
    };
    time_once(backend, warm, &tokens[..warm.tokens()])?;
    let mut samples = Vec::with_capacity(reps);
    for i in 0..reps.max(1) {
        let tps = n as f64 / time_once(backend, test, &tokens)?;
        on_rep(i, tps);
        samples.push(tps);
    }
    Ok(BenchResult {
        test: test.name(),
        backend: backend.name().to_string(),
        threads,
        n_tokens: n,
        tokens_per_s: median(&samples),
        stddev: stddev(&samples),
        samples_tokens_per_s: samples,
    })
}

/// Peak resident memory of this process in bytes (Linux VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
