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
    /// Compare with another model file's f32 logits instead of a backend of this one (e.g. the
    /// original of a quantized file); it must have the same vocabulary
    #[arg(long, value_name = "MODEL")]
    ref_model: Option<std::path::PathBuf>,
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
    if a.model.backend != BackendArg::Npu && a.ref_backend != BackendArg::Npu && a.model.npu != NpuArgs::default() {
        bail!("the npu options (--accelerator, --calibration, --int8-attention, --bf16-attention, the shadow options, ...) apply when --backend or --ref-backend is npu");
    }
    let f32_args = ModelArgs { npu: NpuArgs::default(), chunk_size: None, bitstack: None, memory: None, ..a.model.clone() };
    let args_for = |b: BackendArg| if b == BackendArg::Npu { &a.model } else { &f32_args };
    let engine = report::build_engine(&loaded, if a.model.bitstack.is_some() { &a.model } else { args_for(a.model.backend) }, a.model.backend)?;
    let same = a.ref_backend == a.model.backend && a.model.bitstack.is_none();
    let reference = match &a.ref_model {
        Some(_) if a.ref_backend != BackendArg::F32 => bail!("--ref-model is compared on f32; drop --ref-backend"),
        Some(path) => {
            let ref_args = ModelArgs { model: path.clone(), ..f32_args.clone() };
            let ref_loaded = report::load_model(&ref_args)?;
            if ref_loaded.model.config.vocab_size != m.config.vocab_size {
                bail!("--ref-model {}: a vocabulary of {} tokens, this model's has {}", path.display(), ref_loaded.model.config.vocab_size, m.config.vocab_size);
            }
            Some(report::build_engine(&ref_loaded, &ref_args, BackendArg::F32)?)
        }
        None if same => None,
        None => Some(report::build_engine(&loaded, args_for(a.ref_backend), a.ref_backend)?),
    };
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
    let ref_name = match &a.ref_model {
        Some(p) => p.display().to_string(),
        None => BackendKind::from(a.ref_backend).name().to_string(),
    };
    let (weight_bytes, linear_bits) = report::weight_size(engine.as_ref());
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["backend"] = engine.name().into();
        v["ref_backend"] = ref_name.into();
        v["weights_mb"] = (weight_bytes as f64 / 1e6).into();
        v["linear_bits_per_weight"] = linear_bits.into();
        println!("{v}");
    } else {
        println!("tokens scored:      {}", r.tokens);
        println!("perplexity:         {:.4} (backend {})", r.ppl, engine.name());
        println!("reference ppl:      {:.4} ({ref_name})", r.ref_ppl);
        println!("ppl ratio:          {:.5}", r.ppl_ratio);
        println!("top-1 agreement:    {:.4}", r.top1_agreement);
        println!("KL divergence:      mean {:.6}, max {:.6}", r.mean_kld, r.max_kld);
        println!("mean top-1 prob:    {:.3}", r.mean_top1_prob);
        println!("weights:            {:.2} MB, {linear_bits:.2} bits per weight in the layers' linears", weight_bytes as f64 / 1e6);
    }
    Ok(())
}
