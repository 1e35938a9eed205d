//! `llm-npu eval`: perplexity, and the distance to a reference backend on the same tokens.

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::engine::BackendKind;
use llm_npu::measure::eval;

use super::args::{BackendArg, ModelArgs, NpuArgs, TokenSource};
use super::report::{self, Bar};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    tokens: TokenSource,
    /// Reference backend to compare against
    #[arg(long, value_enum, default_value = "f32")]
    ref_backend: BackendArg,
    /// Tokens per evaluation window [default: min(512, model context)]
    #[arg(long)]
    ctx: Option<usize>,
    /// Cut windows as llama.cpp's perplexity tool does (full windows only, each starting with BOS,
    /// only the second half scored), for numbers comparable with llama-perplexity -c CTX
    #[arg(long)]
    llama_cpp_windows: bool,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    let m = &loaded.model;
    // The npu options go to whichever side is npu; the f32 side takes none of them.
    // A BitStack is compared with the model's own weights.
    let f32_args = ModelArgs { npu: NpuArgs::default(), chunk_size: None, bitstack: None, memory: None, ..a.model.clone() };
    let args_for = |b: BackendArg| if b == BackendArg::Npu { &a.model } else { &f32_args };
    let engine = report::build_engine(&loaded, if a.model.bitstack.is_some() { &a.model } else { args_for(a.model.backend) }, a.model.backend)?;
    let same = a.ref_backend == a.model.backend && a.model.bitstack.is_none();
    let reference = if same { None } else { Some(report::build_engine(&loaded, args_for(a.ref_backend), a.ref_backend)?) };
    let tokens = a.tokens.tokens(&loaded, 2048)?;
    let ctx = a.ctx.unwrap_or(512).min(m.config.max_seq_len);
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let windows = if a.llama_cpp_windows {
        let bos = loaded.tokenizer.as_ref().and_then(|t| t.bos_id()).context("--llama-cpp-windows needs the tokenizer's BOS token; this model's tokenizer has none")?;
        eval::Windows::LlamaCpp { bos }
    } else {
        eval::Windows::All
    };
    let r = eval::evaluate(engine.as_ref(), reference.as_deref(), &tokens, ctx, windows, &Bar::default())?;
    report::engine_report(engine.as_ref(), a.model.verbose);
    if let Some(r) = &reference {
        report::engine_report(r.as_ref(), a.model.verbose);
    }
    let ref_name = BackendKind::from(a.ref_backend).name();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["backend"] = engine.name().into();
        v["ref_backend"] = ref_name.into();
        println!("{v}");
    } else {
        println!("tokens scored:      {}", r.tokens);
        println!("perplexity:         {:.4} (backend {})", r.ppl, engine.name());
        println!("reference ppl:      {:.4} ({:?})", r.ref_ppl, a.ref_backend);
        println!("ppl ratio:          {:.5}", r.ppl_ratio);
        println!("top-1 agreement:    {:.4}", r.top1_agreement);
        println!("KL divergence:      mean {:.6}, max {:.6}", r.mean_kld, r.max_kld);
        println!("mean top-1 prob:    {:.3}", r.mean_top1_prob);
    }
    Ok(())
}
