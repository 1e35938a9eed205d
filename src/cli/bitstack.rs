//! `llm-npu bitstack`: decompose a model's linears into a BitStack file, whose prefix of any
//! length is a model (load it with `--bitstack FILE --memory MB`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::bitstack::{file, make};

use super::args::{ModelArgs, TokenSource};
use super::report::{self, Bar};

#[derive(Args)]
pub struct BitStackArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibration tokens: the input scales come from all of them, the block order from the
    /// first --score-tokens [default: 2048 random tokens; real text is better]
    #[command(flatten)]
    tokens: TokenSource,
    /// Output file [default: llm-npu.bitstack beside the model]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Blocks per weight matrix: each adds about one bit per weight (the paper's 16)
    #[arg(long, default_value_t = 16)]
    iterations: usize,
    /// Rank of each block's magnitude factors [default: 4, which beat the paper's 16 in quality
    /// per bit and decode speed on TinyLlama's shape (README "BitStack"); lower for matrices where
    /// the factors would cost more than a quarter of the sign bits]
    #[arg(long)]
    rank: Option<usize>,
    /// Tokens each candidate block is scored on when the stack is sorted (one forward pass per
    /// block: the cost of the sort grows with this)
    #[arg(long, default_value_t = 128)]
    score_tokens: usize,
}

pub fn run(a: BitStackArgs) -> Result<()> {
    let m = &a.model;
    if m.has_engine_options() {
        bail!("bitstack decomposes the model's own weights and takes no backend options; the output file is --out");
    }
    if a.iterations == 0 || a.iterations > 64 {
        bail!("--iterations must be between 1 and 64, got {}", a.iterations);
    }
    if a.rank == Some(0) {
        bail!("--rank must be at least 1");
    }
    llm_npu::engine::init_threads(m.threads)?;
    let loaded = report::load_model(m)?;
    let tokens = a.tokens.tokens(&loaded, 2048)?;
    let out = a.out.clone().unwrap_or_else(|| llm_npu::util::beside_model_as(&m.model, "llm-npu.bitstack"));
    let opts = make::MakeOptions { iterations: a.iterations, rank: a.rank, score_tokens: a.score_tokens, seed: a.tokens.seed };
    let t0 = Instant::now();
    let stack = make::make_stack(&loaded.model, loaded.model.config.family, &tokens, a.tokens.describe(), &opts, &Bar::default())?;
    let made = t0.elapsed().as_secs_f64();
    file::write(&out, stack.header, &stack.scales, &stack.blocks)?;
    let f = file::StackFile::open(&out)?;
    let (n, required) = (f.header.blocks.len(), f.header.required_blocks());
    let weights: usize = f.header.linears.iter().map(|l| l.rows * l.cols).sum();
    let bits = |k: usize| 8.0 * f.prefix_bytes(k) as f64 / weights as f64;
    eprintln!("decomposed and sorted {} matrices in {made:.1} s", f.header.linears.len());
    println!(
        "wrote {}: {n} blocks; the smallest model holds {required} ({:.1} MB, {:.2} bits per linear weight), all of them {:.1} MB ({:.2} bits per weight); load with --bitstack {} --memory MB",
        out.display(),
        f.prefix_bytes(required) as f64 / 1e6,
        bits(required),
        f.prefix_bytes(n) as f64 / 1e6,
        bits(n),
        out.display()
    );
    Ok(())
}
