//! `llm-npu simulate`: the prefill scheduler in virtual time on a device's cost model.

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::prefill::dag::Processor;
use llm_npu::prefill::profile::DeviceProfile;
use llm_npu::prefill::schedule::{simulate, InOrder, OutOfOrder, Schedule, Scheduler};

use super::args::SchedulerArg;
use super::report::ScheduleOutputs;

#[derive(Args)]
pub struct SimulateArgs {
    /// Device cost model: a built-in profile (snapdragon-8gen3: the llm.npu paper's Qwen1.5-1.8B
    /// on a Snapdragon 8 Gen 3) or a JSON file of the same fields
    #[arg(long, default_value = "snapdragon-8gen3")]
    profile: String,
    /// Prompt length in tokens
    #[arg(short = 'p', long, default_value_t = 1024)]
    n_prompt: usize,
    /// Chunk size [default: the profile's]
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Scheduler [default: both, side by side]
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    /// Print one JSON object per scheduler
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pictures: ScheduleOutputs,
}

pub fn run(a: SimulateArgs) -> Result<()> {
    let profile = DeviceProfile::load(&a.profile)?;
    let chunk = a.chunk_size.unwrap_or(profile.chunk_size);
    if chunk == 0 || a.n_prompt == 0 {
        bail!("--chunk-size and -p must be at least 1");
    }
    const MAX_SIMULATED_TOKENS: usize = 1 << 20;
    if a.n_prompt > MAX_SIMULATED_TOKENS {
        bail!("-p {}: simulate takes prompts of up to {MAX_SIMULATED_TOKENS} tokens", a.n_prompt);
    }
    let (dag, cost) = profile.prompt_dag(a.n_prompt, chunk);
    let schedulers: Vec<Box<dyn Scheduler>> = match a.scheduler {
        Some(SchedulerArg::InOrder) => vec![Box::new(InOrder)],
        Some(SchedulerArg::Ooo) => vec![Box::new(OutOfOrder)],
        None => vec![Box::new(InOrder), Box::new(OutOfOrder)],
    };
    if !a.json {
        println!("{}: {}", profile.name, profile.description);
        println!(
            "{} tokens in {} chunks of {chunk} ({} padded), {} layers: {} subgraphs (simulated, not measured here)\n",
            a.n_prompt,
            dag.chunks,
            dag.chunks * chunk - a.n_prompt,
            profile.layers,
            dag.len()
        );
        println!("| scheduler | makespan | prefill tokens/s | accelerator bubble rate | accelerator busy | CPU busy |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    }
    let mut done = Vec::new();
    for mut s in schedulers {
        let r = simulate(&dag, &cost, s.as_mut());
        let tps = a.n_prompt as f64 / (r.makespan / 1e3);
        if a.json {
            let v = serde_json::json!({
                "profile": profile.name,
                "scheduler": s.name(),
                "n_prompt": a.n_prompt,
                "chunk_size": chunk,
                "subgraphs": dag.len(),
                "makespan_ms": r.makespan,
                "tokens_per_s": tps,
                "accel_bubble_rate": r.accel_bubble_rate(),
                "accel_utilization": r.utilization(Processor::Accel),
                "cpu_utilization": r.utilization(Processor::Cpu),
            });
            println!("{v}");
        } else {
            println!(
                "| {} | {:.1} ms | {tps:.0} | {:.2}% | {:.1}% | {:.1}% |",
                s.name(),
                r.makespan,
                100.0 * r.accel_bubble_rate(),
                100.0 * r.utilization(Processor::Accel),
                100.0 * r.utilization(Processor::Cpu)
            );
        }
        done.push((s.name(), r));
    }
    let named: Vec<(&str, &Schedule)> = done.iter().map(|(n, r)| (*n, r)).collect();
    let title = format!("{} (simulated): {} tokens, chunks of {chunk}, {} layers", profile.name, a.n_prompt, profile.layers);
    a.pictures.write(&dag, &title, &named)
}
