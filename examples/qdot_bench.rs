//! Throughput of the decode dot products per weight type: one core on a matrix that stays in
//! cache (the kernel's compute speed), and all threads on one far larger than the caches (what
//! memory allows), against the measured read bandwidth.
//!
//!     cargo run --release --example qdot_bench

use std::time::Instant;

use llm_npu::kernels::qdot::{self, ActFormat, QdotLevel, QuantizedActs};
use llm_npu::tensor::dtype::DType;
use llm_npu::tensor::Encoded;
use llm_npu::util::Rng;

fn random_blocks(dtype: DType, n_weights: usize, rng: &mut Rng) -> Vec<u8> {
    // Every byte random, then each block's first f16 set to a small scale (the others are
    // scales too for some types; random finite values are fine for timing).
    let (w, size) = dtype.block();
    let mut b: Vec<u8> = (0..n_weights / w * size).map(|_| rng.next_u64() as u8 & 0x3B).collect();
    for blk in b.chunks_exact_mut(size) {
        blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    b
}

fn main() {
    llm_npu::engine::init_threads(None).unwrap();
    let limits = llm_npu::measure::limits::measure();
    let mut rng = Rng::new(1);
    let k = 2048;
    println!("read bandwidth {:.1} GB/s, {} threads; levels here {:?}", limits.read_gb_per_s, limits.threads, QdotLevel::available());
    println!("| type | level | in-cache G weights/s (1 core) | large matrix G weights/s (all threads) | GB/s | share of bandwidth |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4K, DType::Q6K, DType::Q5K, DType::Q4_1] {
        let format = ActFormat::for_weights(dtype).unwrap();
        let x: Vec<f32> = (0..k).map(|_| rng.next_f32() - 0.5).collect();
        let a = QuantizedActs::new(format, &x);
        let small_rows = 256;
        let small = random_blocks(dtype, small_rows * k, &mut rng);
        let large_rows = (512 << 20) / dtype.n_bytes(k).unwrap();
        let large = random_blocks(dtype, large_rows * k, &mut rng);
        for level in QdotLevel::available() {
            let row_bytes = dtype.n_bytes(k).unwrap();
            let reps = 200;
            let t0 = Instant::now();
            let mut sink = 0f32;
            for _ in 0..reps {
                for r in small.chunks_exact(row_bytes) {
                    sink += qdot::row_dot(level, dtype, r, &a);
                }
            }
            let in_cache = (reps * small_rows * k) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            let w = Encoded { dtype, bytes: &large, rows: large_rows, cols: k };
            let mut y = vec![0f32; large_rows];
            let mut best = 0f64;
            for _ in 0..3 {
                let t0 = Instant::now();
                qdot::matmul_at(level, w, &x, 1, &mut y, false);
                best = best.max(large.len() as f64 / t0.elapsed().as_secs_f64());
            }
            std::hint::black_box((sink, &y));
            let gw = best / row_bytes as f64 * k as f64 / 1e9;
            println!("| {} | {level:?} | {in_cache:.1} | {gw:.1} | {:.1} | {:.0}% |", dtype.name(), best / 1e9, 100.0 * best / 1e9 / limits.read_gb_per_s);
        }
    }
}
