//! The `llm-npu` command line: one module per command, each a short script over the library;
//! shared flags in `args`, everything shown to the user in `report`.

mod args;
mod bench;
mod bitstack;
mod calibrate;
mod chat;
mod demo;
mod eval;
mod inspect;
mod limits;
mod logits;
mod profile;
mod report;
mod run;
mod serve;
mod simulate;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "llm-npu", version, about = "On-device LLM inference: fast prompt prefill on an integer accelerator (llm.npu design)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; the text goes to stdout as it is produced, timings to stderr.
    Run(run::RunArgs),
    /// Talk to an instruction-tuned model in its chat template; the conversation stays in the KV
    /// cache, so each turn prefills only its new tokens.
    Chat(chat::ChatCmdArgs),
    /// Serve the model over an OpenAI-compatible HTTP API on this machine.
    Serve(serve::ServeArgs),
    /// Write the logits for given token ids to a NumPy .npy file.
    Logits(logits::LogitsArgs),
    /// Describe a model file: architecture, shapes, dtypes, parameter count, tokenizer.
    Inspect(inspect::InspectArgs),
    /// Benchmark prompt processing (ppN) and generation (tgN) in tokens/s, like llama-bench.
    Bench(bench::BenchArgs),
    /// Perplexity of a backend and its distance to a reference backend on the same tokens.
    Eval(eval::EvalArgs),
    /// Write a Hugging Face model folder with random weights of a real model's shape.
    Synth(synth::SynthArgs),
    /// Synthesize the reference shape (once, cached) and show prefill speed per backend.
    Demo(demo::DemoArgs),
    /// Record activation statistics for the npu backend's static scales (saved beside the model by default).
    Calibrate(calibrate::CalibrateArgs),
    /// Run the prefill's subgraph scheduler in virtual time on a device's cost model: makespan,
    /// accelerator bubble rate and utilization, in order and out of order.
    Simulate(simulate::SimulateArgs),
    /// Time the npu prefill's subgraphs on this machine and save them as a cost model for
    /// `simulate --profile FILE` (beside the model by default).
    Profile(profile::ProfileArgs),
    /// Measure this machine's int8 and f32 compute peaks and memory read bandwidth (what `bench`
    /// reports speeds against).
    Limits(limits::LimitsArgs),
    /// Decompose the model's linears into a BitStack file (ICLR 2025): blocks of about one bit
    /// per weight, sorted so that any prefix is a model; run it with --bitstack FILE --memory MB.
    Bitstack(bitstack::BitStackArgs),
}

/// Parses the command line, runs the command, and turns an error into one line and exit code 1.
pub fn main() {
    let result = match Cli::parse().command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Limits(a) => limits::run(a),
        Command::Bitstack(a) => bitstack::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
