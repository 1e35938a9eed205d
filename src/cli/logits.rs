//! `llm-npu logits`: the logits of given token ids, as a NumPy .npy file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::model::Logits;

use super::args::ModelArgs;
use super::report;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    /// Output .npy file (float32, [1, vocab] or [n_tokens, vocab] with --all-positions)
    #[arg(long)]
    out: PathBuf,
    /// Write the logits of every position instead of only the last
    #[arg(long)]
    all_positions: bool,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    let m = &loaded.model;
    let n = a.token_ids.len();
    if n > m.config.max_seq_len {
        bail!("{n} token ids exceed the model's context of {}", m.config.max_seq_len);
    }
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    let which = if a.all_positions { Logits::All } else { Logits::Last };
    let logits = engine.forward(&a.token_ids, &mut m.new_cache(n), which)?;
    report::engine_report(engine.as_ref(), a.model.verbose);
    let vocab = m.config.vocab_size;
    let rows = logits.len() / vocab;
    llm_npu::npy::write_f32(&a.out, &[rows, vocab], &logits)?;
    eprintln!("wrote {} ([{rows}, {vocab}] float32)", a.out.display());
    Ok(())
}
