//! `llm-npu demo`: the main job: the reference shape synthesized and calibrated once (cached),
//! then its prefill speed and accuracy on f32 and on npu without and with shadow execution.

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::measure::bench::{self, TestKind};
use llm_npu::measure::demo;
use llm_npu::measure::eval::EvalAccumulator;
use llm_npu::measure::synth::{self, PlantedOutliers, SynthDType, SynthOptions};
use llm_npu::model::Logits;
use llm_npu::util::random_tokens;

use super::args::{BackendArg, ModelArgs, NpuArgs};
use super::report::{self, Bar};

#[derive(Args)]
pub struct DemoArgs {
    /// Worker threads (default: all cores)
    #[arg(short, long)]
    threads: Option<usize>,
    /// Prompt length to benchmark
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Timed repetitions
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// What runs the npu backend's graphs: ref, ort-cpu or qnn (see `run --help`) [default: ref]
    #[arg(long, value_name = "NAME")]
    accelerator: Option<String>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let threads = llm_npu::engine::init_threads(a.threads)?;
    let dir = demo::reference_model_dir()?;
    if demo::is_complete(&dir) {
        eprintln!("using the cached synthetic model in {}", dir.display());
    } else {
        eprintln!("synthesizing the reference shape (TinyLlama-1.1B, f32, random weights) into {} (once; about 4.4 GB)", dir.display());
        let opts = SynthOptions { shape: synth::shape("tinyllama-1.1b")?, dtype: SynthDType::F32, outliers: PlantedOutliers::Paper, seed: 0, tokenizer: None };
        synth::synthesize(&dir, &opts, &Bar::default())?;
    }
    let args = ModelArgs {
        model: dir.clone(),
        tokenizer: None,
        threads: a.threads,
        backend: BackendArg::F32,
        chunk_size: None,
        npu: NpuArgs::default(),
        bitstack: None,
        memory: None,
        verbose: false,
    };
    let loaded = report::load_model(&args)?;
    demo::ensure_calibration(&loaded.model, &dir, &Bar::default())?;
    let npu_args = |no_shadow: bool| ModelArgs { npu: NpuArgs { no_shadow, accelerator: a.accelerator.clone(), ..NpuArgs::default() }, ..args.clone() };
    let engines = [
        ("f32 (CPU reference)", report::build_engine(&loaded, &args, BackendArg::F32)?),
        ("npu, W8A8 without shadow (--no-shadow)", report::build_engine(&loaded, &npu_args(true), BackendArg::Npu)?),
        ("npu, W8A8 + shadow outliers (default)", report::build_engine(&loaded, &npu_args(false), BackendArg::Npu)?),
    ];
    let m = &loaded.model;
    let n = a.n_prompt.min(m.config.max_seq_len);
    // Accuracy of the integer paths against f32 on the same random tokens.
    let tokens = random_tokens(m.config.vocab_size, 256.min(m.config.max_seq_len), 7);
    let reference = engines[0].1.forward(&tokens, &mut m.new_cache(tokens.len()), Logits::All)?;
    let mut rows = Vec::new();
    for (label, engine) in &engines {
        let r = bench::run_test(engine.as_ref(), TestKind::Prompt(n), a.repetitions, threads, label, &Bar::default())?;
        let logits = engine.forward(&tokens, &mut m.new_cache(tokens.len()), Logits::All)?;
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
    let accel = engines[2].1.as_npu().map(|npu| npu.accel.name()).unwrap_or_default();
    println!("The npu backend's graphs ran on: {accel}. The shadow path computes the clipped activation");
    println!("outliers in float on the CPU at the same time.");
    println!("Out-of-order subgraph execution: llm-npu bench -m MODEL --ablation (here the accelerator shares the CPU's");
    println!("cores, so it cannot add speed), and llm-npu simulate for a device with a real NPU.");
    println!("Run a real model: llm-npu run -m MODEL -p \"your prompt\" [--backend npu] (MODEL: HF folder, .gguf or llama2.c .bin)");
    println!("Benchmark it:     llm-npu bench -m MODEL -p 512 -n 128 --backend npu");
    Ok(())
}

