//! f32 GEMM throughput at TinyLlama's shapes (512 tokens unless told), every f32 kernel this CPU
//! runs (AVX-512 FMA; split bf16 tiles where AMX-BF16 is), alternating within each round, median
//! of the rounds: `cargo run --release --example gemm_speed -- [threads] [rounds] [tokens]`.
//! Each call meets weights not in any cache (copies of a GiB in turn), as a prefill meets each
//! weight once per chunk.
use std::time::Instant;

use llm_npu::kernels::gemm::{self, F32Kernel};

fn main() {
    let mut args = std::env::args().skip(1).map(|s| s.parse::<usize>().expect("usage: gemm_speed [threads] [rounds] [tokens]"));
    let threads = args.next().unwrap_or(2);
    let rounds = args.next().unwrap_or(11);
    let m = args.next().unwrap_or(512);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    if gemm::best_f32_kernel() == F32Kernel::Portable {
        println!("SKIPPED: no AVX-512 here, only the portable GEMM");
        return;
    }
    let split = llm_npu::kernels::bf16_split::tiles_run();
    println!("| M x K x N | FMA GFLOP/s | split tiles GFLOP/s |");
    println!("| --- | ---: | ---: |");
    for (k, n) in [(2048, 2048), (2048, 5632), (5632, 2048)] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let copies = (1usize << 28).div_ceil(n * k);
        let ws: Vec<f32> = (0..copies * n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut call = 0;
        let mut y = vec![0f32; m * n];
        let kernels: &[F32Kernel] = if split { &[F32Kernel::Fma, F32Kernel::SplitTiles] } else { &[F32Kernel::Fma] };
        let mut secs = vec![Vec::new(); kernels.len()];
        for round in 0..=rounds {
            for (i, &kernel) in kernels.iter().enumerate() {
                let w = &ws[call % copies * n * k..][..n * k];
                call += 1;
                let t = Instant::now();
                gemm::gemm_packed(&gemm::PackedF32Acts::with_kernel(&x, m, k, kernel), w, n, &mut y, false);
                // The first round warms up.
                if round > 0 {
                    secs[i].push(t.elapsed().as_secs_f64());
                }
            }
        }
        let gflops = |s: &mut Vec<f64>| {
            s.sort_by(f64::total_cmp);
            format!("{:.0}", 2.0 * (m * k * n) as f64 / s[s.len() / 2] / 1e9)
        };
        let cells: Vec<String> = secs.iter_mut().map(gflops).collect();
        println!("| {m} x {k} x {n} | {} | {} |", cells[0], cells.get(1).map_or("(no AMX-BF16)", |s| s));
    }
}
