//! `llm-npu bench`: llama-bench-style speed table; `--ablation` for the paper's ablation.

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::measure::bench::{self, BenchResult, TestKind};
use llm_npu::measure::limits::{self, Limits};

use std::sync::Arc;

use llm_npu::engine::Engine;
use llm_npu::kernels::attention::Precision;
use llm_npu::model::LoadedModel;

use super::args::{BackendArg, ModelArgs};
use super::report::{self, Bar, ScheduleOutputs};

#[derive(Args)]
pub struct BenchArgs {
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

pub fn run(a: BenchArgs) -> Result<()> {
    a.pictures.check(&a.model)?;
    let threads = llm_npu::engine::init_threads(a.model.threads)?;
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let loaded = report::load_model(&a.model)?;
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
        return ablation(&loaded, &a, threads);
    }
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    let desc = report::model_description(&loaded);
    // Measured in the same run, so each speed can be read as a share of what this machine allows.
    let limits = limits::measure();
    bench::reset_peak_rss();
    let mut results: Vec<BenchResult> = Vec::new();
    for &t in &tests {
        let r = bench::run_test(engine.as_ref(), t, a.repetitions, threads, &t.name(), &Bar::default())?;
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["model"] = desc.clone().into();
            v["peak_rss_mib"] = bench::peak_rss_bytes().map_or(serde_json::Value::Null, |b| (b / (1 << 20)).into());
            v["weight_mib"] = (report::weight_size(engine.as_ref()).0 / (1 << 20)).into();
            v["limit_tokens_per_s"] = limit_for(&limits, engine.as_ref(), a.model.backend, t).0.into();
            v["attention"] = report::attention_in_use(engine.as_ref(), m.config.head_dim).name().into();
            println!("{v}");
        }
        results.push(r);
    }
    a.pictures.write_last(engine.as_ref(), &format!("{desc}: the last timed prefill (measured)"))?;
    if !a.json {
        println!("| model | size | params | backend | threads | test | t/s | limit t/s | share |");
        println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
        let size = format!("{:.2} GiB", report::weight_size(engine.as_ref()).0 as f64 / (1u64 << 30) as f64);
        // The backend column names a low-precision prefill attention, so rounds of several
        // configurations stay apart.
        let attention = report::attention_in_use(engine.as_ref(), m.config.head_dim);
        let backend = |r: &BenchResult| match attention {
            Precision::F32 => r.backend.to_string(),
            other => format!("{} ({} attention)", r.backend, other.name()),
        };
        for (r, &t) in results.iter().zip(&tests) {
            let (limit, _) = limit_for(&limits, engine.as_ref(), a.model.backend, t);
            let params = report::human_count(m.num_parameters());
            println!("| {desc} | {size} | {params} | {} | {} | {} | {:.2} ± {:.2} | {limit:.0} | {:.0}% |", backend(r), r.threads, r.test, r.tokens_per_s, r.stddev, 100.0 * r.tokens_per_s / limit);
        }
        if let Some(&t) = tests.iter().find(|t| matches!(t, TestKind::Prompt(_))) {
            eprintln!("limit for pp: {}", limit_for(&limits, engine.as_ref(), a.model.backend, t).1);
        }
        if let Some(&t) = tests.iter().find(|t| matches!(t, TestKind::Generate(_))) {
            eprintln!("limit for tg: {}", limit_for(&limits, engine.as_ref(), a.model.backend, t).1);
        }
        report::engine_report(engine.as_ref(), a.model.verbose);
        if let Some(b) = bench::peak_rss_bytes() {
            eprintln!("peak RSS: {:.2} GiB (includes the memory-mapped weights that were touched)", b as f64 / (1u64 << 30) as f64);
        }
    }
    Ok(())
}

fn n_prompt(t: TestKind) -> usize {
    match t {
        TestKind::Prompt(n) | TestKind::Generate(n) => n,
    }
}

/// A test's limit on this machine in tokens/s, and how it was computed.
fn limit_for(l: &Limits, engine: &dyn Engine, backend: BackendArg, test: TestKind) -> (f64, String) {
    let m = engine.model();
    match test {
        TestKind::Prompt(_) => {
            // The npu backend's linears are int8; so are the f32 backend's on ggml blocks, where
            // the integer GEMM exists.
            let int8 = backend == BackendArg::Npu || (m.linears_block_quantized() && llm_npu::kernels::quantized_products_for(n_prompt(test)));
            let ((peak, how), kind) = if int8 { ((l.int8_gops, l.int8_kernel), "int8") } else { (l.f32_peak(), "f32") };
            let ops = m.linear_ops_per_token();
            (l.compute_bound_tokens_per_s(ops, int8), format!("{:.2} G {kind} ops of linears per token at the measured peak of {peak:.0} G/s ({how})", ops / 1e9))
        }
        TestKind::Generate(_) => {
            // A BitStack's blocks are read instead of the model's linears.
            let stack = engine.bitstack().map_or(0, |s| s.size().stack_bytes as usize);
            let linears = if engine.bitstack().is_some() { m.linear_weight_size().0 } else { 0 };
            let bytes = (m.decode_bytes_per_token() - linears + stack) as f64;
            (l.memory_bound_tokens_per_s(bytes), format!("{:.2} GB of weights read per token at the measured {:.1} GB/s", bytes / 1e9, l.read_gb_per_s))
        }
    }
}

/// `bench --ablation`: each step of the paper's ablation as an engine configuration, timed on the
/// same prompt length.
fn ablation(loaded: &Arc<LoadedModel>, a: &BenchArgs, threads: usize) -> Result<()> {
    if a.model.backend != BackendArg::F32 || a.model.chunk_size.is_some() || a.model.npu.no_shadow || a.model.npu.scheduler.is_some() || a.json {
        bail!("--ablation sets the backend, chunks, shadow and scheduler of each row itself; drop --backend, --chunk-size, --no-shadow, --scheduler and --json");
    }
    let n = *a.n_prompt.first().context("--ablation needs a prompt length (-p)")?;
    let base = a.model.engine_options_for(BackendArg::Npu)?;
    let rows = bench::run_ablation(loaded, n, &base, a.repetitions, threads, &Bar::default())?;
    let accelerator = match base.npu.accelerator {
        "ref" => "the accelerator is the CPU reference accelerator, sharing these cores".to_string(),
        other => format!("accelerator {other}"),
    };
    println!("\nablation, pp{n}, {} ({threads} threads; {accelerator}):", report::model_description(loaded));
    println!("| configuration | pp{n} tokens/s | accelerator bubble rate (measured) |");
    println!("| --- | ---: | ---: |");
    for row in &rows {
        let bubbles = row.accel_bubble_rate.map_or("-".to_string(), |b| format!("{:.1}%", 100.0 * b));
        println!("| {} | {:.1} ± {:.1} | {bubbles} |", row.label, row.result.tokens_per_s, row.result.stddev);
    }
    Ok(())
}
