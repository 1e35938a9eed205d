//! Prefill attention of one layer of the TinyLlama shape (32 query heads, 4 KV heads, head_dim
//! 64): the last 512-token chunk of a prompt of 512, 2,048 and 4,096 tokens, against this
//! machine's f32 FMA peak measured in the same run. The tiled kernel and its portable twin.
//!
//!     cargo run --release --example attention_bench [-- REPS]

use llm_npu::kernels::attention::{causal_attention, causal_attention_portable, AttnShape};
use llm_npu::measure::bench::median_secs;
use llm_npu::util::Rng;

fn main() {
    llm_npu::engine::init_threads(None).unwrap();
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let limits = llm_npu::measure::limits::measure();
    println!("f32 peak {:.0} GFLOP/s ({}), {} threads; median of {reps}", limits.f32_gflops, limits.f32_kernel, limits.threads);
    println!("| prompt | chunk | kernel | ms per layer | GFLOP/s | share of f32 peak |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: |");
    let (n_heads, n_kv_heads, hd, chunk) = (32, 4, 64, 512);
    let mut rng = Rng::new(1);
    for prompt in [512usize, 2048, 4096] {
        let pos0 = prompt - chunk;
        let stride = prompt.next_multiple_of(16);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect() };
        let (k, v) = (random(n_kv_heads * hd * stride), random(n_kv_heads * hd * stride));
        let q = random(chunk * n_heads * hd);
        let mut out = vec![0f32; q.len()];
        let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, pos0, kv_stride: stride, kv_base: 0, window: None, scale: 0.125, softcap: None };
        // q.k and p.v: 2 flops per multiply-add, each over head_dim for every (query, key seen).
        let keys_seen: usize = (0..chunk).map(|t| pos0 + t + 1).sum();
        let flops = 2.0 * 2.0 * (keys_seen * hd * n_heads) as f64;
        let kernels: [(&str, fn(&[f32], &[f32], &[f32], AttnShape, &mut [f32])); 2] = [("tiled (best SIMD)", causal_attention), ("portable twin", causal_attention_portable)];
        for (name, kernel) in kernels {
            let t = median_secs(reps, || kernel(&q, &k, &v, s, &mut out));
            let gflops = flops / t / 1e9;
            println!("| {prompt} | {chunk} | {name} | {:.1} | {gflops:.0} | {:.2} |", t * 1e3, gflops / limits.f32_gflops);
        }
    }
}
