//! BitStack's decode product (kernels::sign_blocks): one sign block of TinyLlama's largest weight
//! shape (5632 x 2048) at ranks 4 and 16, against the dense f32 matrix-vector product of the
//! same shape and this machine's memory read bandwidth, measured in the same run. The block is
//! made larger than the caches by cycling through many of them, as decode streams them.
//!
//!     cargo run --release --example sign_blocks_bench

use llm_npu::kernels::matvec::matvec;
use llm_npu::measure::bench::median_secs;
use llm_npu::kernels::sign_blocks::{sign_block_matvec, sign_block_matvec_portable, SignBlock};
use llm_npu::util::Rng;

fn main() {
    llm_npu::engine::init_threads(None).unwrap();
    let limits = llm_npu::measure::limits::measure();
    let (rows, cols) = (5632, 2048);
    let mut rng = Rng::new(3);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
    let x = random(cols);
    println!("memory read {:.1} GB/s, {} threads; {rows} x {cols}, median of 9", limits.read_gb_per_s, limits.threads);
    println!("| product | ms | bytes read | GB/s | share of read bandwidth |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    // Dense f32: 46 MB, larger than the caches.
    let w = random(rows * cols);
    let mut y = vec![0f32; rows];
    let t = median_secs(9, || matvec(&w, rows, cols, &x, &mut y, false));
    let bytes = (w.len() * 4) as f64;
    println!("| dense f32 | {:.2} | {:.1} MB | {:.1} | {:.2} |", t * 1e3, bytes / 1e6, bytes / t / 1e9, bytes / t / 1e9 / limits.read_gb_per_s);
    drop(w);
    for rank in [4, 16] {
        // Enough blocks to exceed the caches several times over (each block is 1.4 MB of signs).
        let count = 48usize;
        let words = SignBlock::words_per_row(cols);
        let signs: Vec<Vec<u64>> = (0..count).map(|i| (0..rows * words).map(|w| (w as u64 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect()).collect();
        let (u, v) = (random(rows * rank), random(rank * cols));
        let block_bytes = (rows * words * 8 + (u.len() + v.len()) * 4) as f64;
        for (name, kernel) in [("best", sign_block_matvec as fn(&SignBlock, &[f32], &mut [f32])), ("portable", sign_block_matvec_portable)] {
            let mut next = 0;
            let t = median_secs(
                9,
                || {
                    let b = SignBlock { rows, cols, rank, signs: &signs[next % count], u: &u, v: &v };
                    kernel(&b, &x, &mut y);
                    next += 1;
                },
            );
            let gbs = block_bytes / t / 1e9;
            println!("| sign block rank {rank} ({name}) | {:.2} | {:.2} MB | {gbs:.1} | {:.2} |", t * 1e3, block_bytes / 1e6, gbs / limits.read_gb_per_s);
        }
    }
}
