//! `llm-npu calibrate`: the npu backend's static activation scales, from representative text or
//! random tokens, saved beside the model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::quant::calibration::{self, Calibration};

use super::args::{ModelArgs, TokenSource};
use super::report::{self, Bar};

#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    tokens: TokenSource,
    /// Output file [default: llm-npu-calibration.json beside the model]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tokens per forward pass
    #[arg(long, default_value_t = 512)]
    window: usize,
}

pub fn run(a: CalibrateArgs) -> Result<()> {
    let m = &a.model;
    if m.has_engine_options() {
        bail!("calibrate runs the f32 model and takes no backend options; the output file is --out");
    }
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    let tokens = a.tokens.tokens(&loaded, 2048)?;
    let cal = Calibration::run(&loaded.model, &tokens, a.window, a.tokens.describe(), &Bar::default())?;
    let out = a.out.clone().unwrap_or_else(|| calibration::default_path(&a.model.model));
    cal.save(&out)?;
    eprintln!("wrote {} ({} tokens, {} layers x 4 linear inputs)", out.display(), cal.tokens, loaded.model.config.num_layers);
    Ok(())
}
