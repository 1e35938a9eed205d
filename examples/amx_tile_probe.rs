//! Where the AMX int8 GEMM loses its peak: the tile routine the accelerator runs
//! (`amx::tile_32x32`, blocks of 8 k steps, the GEMM's loop order: k block, token panel, column
//! panel; 128 columns per task) over 512 tokens and TinyLlama's shapes, with its operands
//! - in L1: the same 32-row blocks of activations and weights at every call;
//! - weights in cache: the same weight matrix at every repetition (L2 and L3);
//! - weights from memory: a GiB of copies used in turn, as a prefill meets each weight once
//!   per chunk;
//!
//! on 1 and 2 threads, as shares of the AMX peak `llm-npu limits` measures on those threads;
//! and, first, the bare instruction stream (`amx::loaded_step`: tile loads and products, the
//! results never leaving the tiles), the ceiling of any GEMM built on these loads.
//! No epilogue and no activation packing: the tiles alone.
//!     cargo run --release --example amx_tile_probe

#[cfg(target_arch = "x86_64")]
use llm_npu::kernels::aligned::AlignedVec;
#[cfg(target_arch = "x86_64")]
use llm_npu::kernels::amx::{self, Start};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
const TOKENS: usize = 512;
/// Columns per task and k steps per block: the GEMM's (`int8_gemm::amx_columns`).
#[cfg(target_arch = "x86_64")]
const NC: usize = 128;
#[cfg(target_arch = "x86_64")]
const BLOCK_STEPS: usize = 8;

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Operands {
    L1,
    Cached,
    Memory,
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("SKIPPED: AMX is an x86-64 extension");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !amx::available() {
        println!("SKIPPED: this CPU (or kernel) has no AMX");
        return;
    }
    println!("| threads | K x N | operands | ms | % of AMX peak |");
    println!("| ---: | ---: | --- | ---: | ---: |");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let peak = pool.install(llm_npu::measure::limits::measure).int8_gops;
        // The bare instruction stream: tile loads and products over 8 steps of operands in L1,
        // the results never leaving the tiles.
        let t0 = std::time::Instant::now();
        let ops: f64 = pool.install(|| {
            (0..threads)
                .into_par_iter()
                .map(|_| {
                    let (a, b) = (AlignedVec::filled(1u8, 8 * 2048), AlignedVec::filled(1u8, 8 * 2048));
                    // SAFETY: AMX is available (checked above); both hold 8 steps of 2 KiB.
                    unsafe { amx::loaded_step(a.as_ptr(), b.as_ptr(), 8, 20_000) }
                })
                .sum()
        });
        let secs = t0.elapsed().as_secs_f64();
        println!("| {threads} | - | tile loads and products only, in L1 (results stay in the tiles) | {:.2} | {:.0}% |", secs * 1e3, 100.0 * ops / secs / 1e9 / peak);
        for (k, n) in [(2048usize, 2048usize), (2048, 5632), (5632, 2048)] {
            let kp = amx::row_bytes(k);
            let mut acts = AlignedVec::filled(0u8, TOKENS * kp);
            acts.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 7 % 251) as u8);
            let one = n * k + 16 * 128;
            let copies = (1usize << 30).div_ceil(one);
            let mut weights = AlignedVec::filled(0i8, one * copies);
            weights.par_iter_mut().enumerate().for_each(|(i, v)| *v = ((i * 13 % 255) as i32 - 127) as i8);
            let bias = AlignedVec::filled(0i32, NC);
            for operands in [Operands::L1, Operands::Cached, Operands::Memory] {
                let mut times: Vec<f64> = (0..12)
                    .map(|rep| {
                        let copy = if operands == Operands::Memory { rep % copies } else { 0 };
                        let t0 = std::time::Instant::now();
                        pool.install(|| run(&acts, kp, &weights[copy * one..], &bias, k, n, operands));
                        t0.elapsed().as_secs_f64()
                    })
                    .skip(2)
                    .collect();
                times.sort_by(f64::total_cmp);
                let secs = times[times.len() / 2];
                let gops = 2.0 * (TOKENS * k * n) as f64 / secs / 1e9;
                let name = match operands {
                    Operands::L1 => "in L1",
                    Operands::Cached => "weights in cache",
                    Operands::Memory => "weights from memory",
                };
                println!("| {threads} | {k}x{n} | {name} | {:.2} | {:.0}% |", secs * 1e3, 100.0 * gops / peak);
            }
        }
    }
}

/// One product's tile calls, tasks of NC columns over the pool's threads.
#[cfg(target_arch = "x86_64")]
fn run(acts: &[u8], kp: usize, weights: &[i8], bias: &[i32], k: usize, n: usize, operands: Operands) {
    let (steps, panels) = (k / amx::K_STEP, NC / 32);
    (0..n / NC).into_par_iter().for_each_init(
        || AlignedVec::filled(0i32, TOKENS * NC),
        |results, task| {
            for ks in (0..steps).step_by(BLOCK_STEPS) {
                let block = BLOCK_STEPS.min(steps - ks);
                for p in 0..TOKENS / 32 {
                    for j in 0..panels {
                        // Weight panel task * panels + j holds k * 32 bytes; a step is 16 group rows of 128.
                        let (a, b) = match operands {
                            Operands::L1 => (0, 0),
                            _ => (p * 32 * kp + ks * amx::K_STEP, (task * panels + j) * k * 32 + ks * 16 * 128),
                        };
                        let start = if ks == 0 { Start::Bias(bias[j * 32..].as_ptr()) } else { Start::Accumulate };
                        // SAFETY: AMX is available (checked in main); the activations hold 512 rows
                        // of kp bytes, the weights n / 32 panels of k * 32 bytes plus a step of
                        // slack, the results 512 rows of NC.
                        unsafe { amx::tile_32x32(acts[a..].as_ptr(), kp, weights[b..].as_ptr(), 128, block, results.as_mut_ptr().add(p * 32 * NC + j * 32), NC, start) };
                    }
                }
            }
        },
    );
}
