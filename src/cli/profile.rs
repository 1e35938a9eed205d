//! `llm-npu profile`: this machine's per-subgraph costs of the npu prefill, as a cost model for
//! `simulate --profile FILE`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::measure::profile::profile_prefill;

use super::args::{BackendArg, ModelArgs};
use super::report::{self, Bar};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length to time (random tokens; at least one full chunk)
    #[arg(short = 'p', long, default_value_t = 1024)]
    n_prompt: usize,
    /// Timed repetitions (after one warm-up run)
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Output file [default: llm-npu-profile.json beside the model]
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: ProfileArgs) -> Result<()> {
    let threads = llm_npu::engine::init_threads(a.model.threads)?;
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.model.backend != BackendArg::Npu {
        bail!("profile times the npu backend's subgraphs: add --backend npu");
    }
    let loaded = report::load_model(&a.model)?;
    let m = &loaded.model;
    let n = a.n_prompt.min(m.config.max_seq_len);
    let engine = report::build_engine(&loaded, &a.model, BackendArg::Npu)?;
    let npu = engine.as_npu().context("built for the npu backend")?;
    let chunk = npu.chunk_sizes[0];
    if n < chunk {
        bail!("-p {n} holds no full chunk of {chunk} tokens; give at least {chunk}");
    }
    let name = format!("measured: {}", report::model_description(&loaded));
    let description = format!("{} on this machine, {} ({threads} threads), {n}-token prompts, {} runs", a.model.model.display(), npu.accel.name(), a.repetitions);
    let profile = profile_prefill(npu, n, a.repetitions, name, description, &Bar::default())?;
    let out = a.out.clone().unwrap_or_else(|| llm_npu::prefill::profile::default_path(&a.model.model));
    std::fs::write(&out, serde_json::to_string_pretty(&profile)?).with_context(|| format!("writing {}", out.display()))?;
    println!("per layer and {chunk}-token chunk: q/k/v {:.2} ms, o_proj..down_proj {:.2} ms, attention {:.2} ms x (2i+1) for chunk i, shadow {:.2} + {:.2} ms in {:.0}% of the layers", profile.qkv_ms, profile.o_ffn_ms, profile.attention_ms, profile.shadow_qkv_ms, profile.shadow_o_ffn_ms, 100.0 * profile.shadow_keep);
    println!("wrote {}; see what scheduling would do with these costs on a dedicated accelerator: llm-npu simulate --profile {} -p {n} --chunk-size {chunk}", out.display(), out.display());
    Ok(())
}
