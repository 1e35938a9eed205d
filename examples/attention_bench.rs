//! Prefill attention of one layer of the TinyLlama shape (32 query heads, 4 KV heads, head_dim
//! 64): the last 512-token chunk of a prompt of 512, 2,048 and 4,096 tokens, against this
//! machine's f32 FMA peak measured in the same run (and, for the int8 kernel, the int8 peak).
//! The tiled kernel in f32, bf16 (AMX; f32 without it) and int8, and their portable twins (`--simd-only` skips
//! those: minutes at 4,096); `--only int8` (or f32) keeps the kernels whose name has that word,
//! for a profile of one of them.
//!
//!     cargo run --release --example attention_bench [-- REPS] [--simd-only] [--only WORD]

use llm_npu::kernels::attention::{causal_attention_cached, causal_attention_portable_in, causal_attention_without_amx, AttnShape, KeptKv, Precision};
use llm_npu::measure::bench::{median, times_secs};
use llm_npu::util::Rng;

fn main() {
    llm_npu::engine::init_threads(None).unwrap();
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let limits = llm_npu::measure::limits::measure();
    let args: Vec<String> = std::env::args().collect();
    let simd_only = args.iter().any(|a| a == "--simd-only");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned().unwrap_or_default();
    println!(
        "f32 peak {:.0} GFLOP/s ({}), int8 peak {:.0} GOP/s ({}), {} threads; median of {reps}",
        limits.f32_gflops, limits.f32_kernel, limits.int8_gops, limits.int8_kernel, limits.threads
    );
    // The fastest run beside the median: on a shared host the other tenants only ever slow a
    // run down, so the minimum is the steadier figure for comparing builds.
    println!("| prompt | chunk | kernel | ms per layer (median) | fastest | G(FL)OP/s | share of its peak |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: |");
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
        // The best paths keep the cache's int8 or bf16 copy as a prefill does: the earlier
        // chunks' slots were converted by their own calls, so each rep converts only the last
        // chunk's (forget_from). The portable twins convert the whole cache on every call.
        let mut kept: [KeptKv; 3] = Default::default();
        for (precision, copy) in [Precision::F32, Precision::Bf16, Precision::Int8].into_iter().zip(kept.iter_mut()) {
            causal_attention_cached(precision, &q, &k, &v, s, &mut out, copy);
        }
        let [mut kept_f32, mut kept_bf16, mut kept_int8] = kept.map(|mut copy| {
            move |p: Precision, q: &[f32], k: &[f32], v: &[f32], s: AttnShape, o: &mut [f32]| {
                copy.forget_from(pos0);
                causal_attention_cached(p, q, k, v, s, o, &mut copy)
            }
        });
        type Kernel<'a> = &'a mut dyn FnMut(Precision, &[f32], &[f32], &[f32], AttnShape, &mut [f32]);
        let (mut fma, mut portable_f32, mut portable_bf16, mut portable_int8) = (causal_attention_without_amx, causal_attention_portable_in, causal_attention_portable_in, causal_attention_portable_in);
        // Where AMX-BF16 runs, f32 is bf16 tiles with its operands in three parts (as accurate
        // as f32 FMA); "f32 FMA" is the AVX-512 kernel it replaces there.
        let kernels: [(&str, Kernel, Precision, bool); 7] = [
            ("f32 tiled (best SIMD)", &mut kept_f32, Precision::F32, false),
            ("f32 FMA (no AMX)", &mut fma, Precision::F32, false),
            ("bf16 tiled (best SIMD)", &mut kept_bf16, Precision::Bf16, false),
            ("int8 tiled (best SIMD)", &mut kept_int8, Precision::Int8, false),
            ("f32 portable twin", &mut portable_f32, Precision::F32, true),
            ("bf16 portable twin", &mut portable_bf16, Precision::Bf16, true),
            ("int8 portable twin", &mut portable_int8, Precision::Int8, true),
        ];
        for (name, kernel, precision, portable) in kernels {
            if (portable && simd_only) || !name.contains(only.as_str()) {
                continue;
            }
            let times = times_secs(reps, || kernel(precision, &q, &k, &v, s, &mut out));
            let (t, fastest) = (median(&times), times.iter().copied().fold(f64::INFINITY, f64::min));
            let gflops = flops / t / 1e9;
            // tdpbf16ps does half of tdpbusd's multiply-adds per instruction.
            let amx = limits.int8_kernel.contains("AMX");
            let peak = match precision {
                Precision::Int8 => limits.int8_gops,
                Precision::Bf16 if amx => limits.int8_gops / 2.0,
                _ => limits.f32_gflops,
            };
            println!("| {prompt} | {chunk} | {name} | {:.1} | {:.1} | {gflops:.0} | {:.2} |", t * 1e3, fastest * 1e3, gflops / peak);
        }
    }
}
