//! `llm-npu limits`: this machine's measured limits, which `bench` reports speeds against.

use anyhow::Result;
use clap::Args;

use llm_npu::measure::limits;

#[derive(Args)]
pub struct LimitsArgs {
    /// Worker threads (default: all cores)
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

pub fn run(a: LimitsArgs) -> Result<()> {
    llm_npu::engine::init_threads(a.threads)?;
    let l = limits::measure();
    if a.json {
        println!("{}", serde_json::to_string(&l)?);
        return Ok(());
    }
    println!("threads:               {}", l.threads);
    println!("int8 dot-product peak: {:.0} GOP/s ({})", l.int8_gops, l.int8_kernel);
    println!("f32 FMA peak:          {:.0} GFLOP/s ({})", l.f32_gflops, l.f32_kernel);
    if let Some(split) = l.f32_split_gflops {
        println!("f32 on split tiles:    {split:.0} GFLOP/s (AMX tdpbf16ps peak / {} products of bf16 parts, where the f32 GEMM runs)", llm_npu::kernels::bf16_split::SPLIT_PAIRS.len());
    }
    println!("memory read:           {:.1} GB/s", l.read_gb_per_s);
    Ok(())
}
