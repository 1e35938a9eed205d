//! Quick f32 GEMM throughput check: `cargo run --release --example gemm_speed -- [threads]`.
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    for (m, k, n) in [(512, 2048, 2048), (512, 2048, 5632), (512, 5632, 2048)] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        llm_npu::kernels::linear(&x, m, k, &w, n, &mut y);
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            llm_npu::kernels::linear(&x, m, k, &w, n, &mut y);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("M={m} K={k} N={n}: {:.1} ms, {:.1} GFLOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}
