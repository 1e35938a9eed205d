//! A running engine's BitStack grown and shrunk (issue 17): after each resize, the KL divergence
//! to the model's own f32 logits on the same tokens, and the process's anonymous resident memory
//! (the blocks; the mapped base model, which the f32 reference reads whole, is not counted). The KL
//! after a resize should equal a fresh load at that budget (tests check that bit for bit on a
//! small model), and memory should return when the stack shrinks.
//!
//!     cargo run --release --example bitstack_resize -- MODEL STACK MB1 MB2 ...

use std::sync::Arc;

use llm_npu::bitstack::{BitStack, Budget};
use llm_npu::engine::{Engine, F32Engine};
use llm_npu::measure::eval::{self, Windows};
use llm_npu::model::{self, LoadOptions};
use llm_npu::util::{random_tokens, Silent};

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, stack, budgets @ ..] = args.as_slice() else {
        eprintln!("usage: bitstack_resize MODEL STACK MB [MB ...]");
        std::process::exit(2);
    };
    llm_npu::engine::init_threads(None).unwrap();
    let loaded = Arc::new(model::load(model.as_ref(), &LoadOptions::default()).unwrap());
    let m = &loaded.model;
    let tokens = random_tokens(m.config.vocab_size, 256, 11);
    let reference = F32Engine::new(loaded.clone(), None);
    let budgets: Vec<f64> = budgets.iter().map(|b| b.parse().expect("a budget in MB")).collect();
    let stack = Arc::new(BitStack::open(stack.as_ref(), m, Budget::MemoryMb(budgets[0]), &Silent).unwrap());
    let engine = F32Engine::with_bitstack(loaded.clone(), stack.clone());
    println!("| step | budget MB | blocks | stack MB | bits per weight | KL to f32 | ppl ratio | anonymous RSS MB |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (step, &mb) in budgets.iter().enumerate() {
        let size = stack.resize(Budget::MemoryMb(mb)).unwrap();
        let r = eval::evaluate(&engine as &dyn Engine, Some(&reference), &tokens, 256, Windows::All, &Silent).unwrap();
        println!("| {step} | {mb} | {} | {:.1} | {:.2} | {:.4} | {:.4} | {:.0} |", size.blocks, size.stack_bytes as f64 / 1e6, size.bits_per_weight, r.mean_kld, r.ppl_ratio, rss_mb());
    }
}
