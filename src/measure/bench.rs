//! `llm-npu bench`: prompt-processing (pp) and text-generation (tg) throughput, llama-bench style.
//! Inputs are random token ids (tokenization is not timed) and generation feeds back fixed random
//! ids (sampling is not timed). Each test runs once untimed to warm up (pages and caches), then
//! `reps` timed repetitions; we report the median and the standard deviation of tokens/s.

use std::time::Instant;

use serde::Serialize;

use crate::engine::{self, BackendKind, Engine, EngineOptions};
use crate::error::Result;
use crate::model::{LoadedModel, Logits};
use crate::util::{random_tokens, Progress};

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

/// Median seconds of `reps` runs of `f` after one warm-up run (the kernel examples' timer).
pub fn median_secs(reps: usize, f: impl FnMut()) -> f64 {
    median(&times_secs(reps, f))
}

/// Seconds of each of `reps` (at least 1) timed calls of `f`, after one untimed warm-up call.
pub fn times_secs(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t0 = std::time::Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect()
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

/// Seconds for one run of `test`.
fn time_once(backend: &dyn Engine, test: TestKind, tokens: &[u32]) -> Result<f64> {
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

/// Runs one test: a warm-up, then `reps` timed repetitions (progress: one step per repetition,
/// with its tokens/s as the status, under `label`).
pub fn run_test(backend: &dyn Engine, test: TestKind, reps: usize, threads: usize, label: &str, progress: &dyn Progress) -> Result<BenchResult> {
    let model = backend.model();
    let n = test.tokens().min(model.config.max_seq_len);
    let tokens = random_tokens(model.config.vocab_size, n, 1234 + n as u64);
    // Warm-up: touches every weight page, warms the caches and, for prompts, runs the same
    // size so that one-time work (an accelerator compiling its graphs) is not timed.
    let warm = match test {
        TestKind::Prompt(_) => TestKind::Prompt(n),
        TestKind::Generate(_) => TestKind::Generate(n.min(4)),
    };
    time_once(backend, warm, &tokens[..warm.tokens()])?;
    let mut samples = Vec::with_capacity(reps);
    progress.start(label, "runs", reps.max(1) as u64);
    for _ in 0..reps.max(1) {
        let tps = n as f64 / time_once(backend, test, &tokens)?;
        progress.step();
        progress.status(&format!("{tps:.2} t/s"));
        samples.push(tps);
    }
    progress.finish();
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

/// One row of `bench --ablation`: a step of the llm.npu paper's ablation as engine options.
pub struct AblationStep {
    pub label: &'static str,
    pub options: EngineOptions,
}

/// Our version of the paper's ablation for an `n`-token prompt: f32; npu with the whole prompt as
/// one graph; + chunk-sharing graphs; + shadow outliers; in-order executors (for reference);
/// + out-of-order subgraph execution. `base` carries the user's other npu options.
pub fn ablation_steps(n: usize, base: &EngineOptions) -> Vec<AblationStep> {
    use crate::engine::npu::scheduled::{ExecutorOptions, SchedulerKind};
    let npu = |chunk: Option<usize>, smaller_chunks: bool, shadow: bool, scheduler: Option<SchedulerKind>| {
        let mut o = base.clone();
        o.backend = BackendKind::Npu;
        o.chunk_size = chunk;
        o.npu.smaller_chunks = smaller_chunks;
        o.npu.shadow.enabled = shadow;
        o.npu.executors = scheduler.map(|scheduler| ExecutorOptions { scheduler, ..base.npu.executors.unwrap_or_default() });
        o
    };
    let step = |label, options| AblationStep { label, options };
    vec![
        step("f32 on the CPU", EngineOptions { backend: BackendKind::F32, chunk_size: None, ..Default::default() }),
        step("npu: W8A8, the whole prompt as one graph", npu(Some(n), false, false, None)),
        step("+ chunk-sharing graphs (256 and halvings)", npu(None, true, false, None)),
        step("+ shadow outlier execution", npu(None, true, true, None)),
        step("(in-order executors, for reference)", npu(None, true, true, Some(SchedulerKind::InOrder))),
        step("+ out-of-order subgraph execution", npu(None, true, true, Some(SchedulerKind::OutOfOrder))),
    ]
}

/// A timed ablation step, with the accelerator's measured bubble rate when executors ran.
pub struct AblationResult {
    pub label: &'static str,
    pub result: BenchResult,
    pub accel_bubble_rate: Option<f64>,
}

/// Times every step of `ablation_steps` on an `n`-token prompt.
pub fn run_ablation(loaded: &std::sync::Arc<LoadedModel>, n: usize, base: &EngineOptions, reps: usize, threads: usize, progress: &dyn Progress) -> Result<Vec<AblationResult>> {
    let mut rows = Vec::new();
    for AblationStep { label, options } in ablation_steps(n, base) {
        let engine = engine::build(loaded, &options, progress)?;
        let result = run_test(engine.as_ref(), TestKind::Prompt(n), reps, threads, label, progress)?;
        let accel_bubble_rate = engine.as_npu().and_then(|npu| npu.last_schedule()).map(|(_, s)| s.accel_bubble_rate());
        rows.push(AblationResult { label, result, accel_bubble_rate });
    }
    Ok(rows)
}

/// Peak resident memory of this process in bytes (Linux VmHWM), if known.
/// Starts the peak-RSS count afresh (Linux: writing 5 to clear_refs resets VmHWM), so a buffer
/// that was freed (the bandwidth measurement's) is not reported as the model's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
