//! int8 GEMM throughput of the accelerator's kernels against rten-gemm's u8 x i8 GEMM, in one run:
//!     cargo run --release --example int8_gemm_bench [-- --ours | --kernel amx]
//! Shapes: M=256 (one prefill chunk) times TinyLlama's projections (K x N: 2048 x 2048 q/o,
//! 2048 x 256 k/v, 2048 x 5632 gate/up, 5632 x 2048 down), 1 and 2 threads. Weights are
//! prepacked for both (as at model load); activation packing is timed. GOP/s counts 2 ops per
//! multiply-add; shares are of the int8 peak `llm-npu limits` measures (AMX `tdpbusd` where the
//! CPU has it, else `vpdpbusd`), on the same threads.


use llm_npu::kernels::int8_gemm::{gemm_i8, Int8Kernel, PackedI8Weights};
use llm_npu::util::Rng;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB};
use rten_tensor::prelude::*;
use rten_tensor::NdTensor;

use llm_npu::measure::bench::median_secs;

fn main() {
    let m = 256usize;
    let mut rng = Rng::new(1);
    let args: Vec<String> = std::env::args().collect();
    let only_ours = args.iter().any(|a| a == "--ours");
    // `--kernel NAME`: only that kernel of ours (e.g. amx), for profiling one kernel.
    let only_kernel = args.iter().position(|a| a == "--kernel").and_then(|i| args.get(i + 1)).cloned();
    println!("| threads | K x N | kernel | ms | GOP/s | % of int8 peak |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: |");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let limits = pool.install(llm_npu::measure::limits::measure);
        let peak = limits.int8_gops;
        println!("| {threads} | | {} peak | | {peak:.0} | 100% |", limits.int8_kernel);
        for (k, n) in [(2048usize, 2048usize), (2048, 256), (2048, 5632), (5632, 2048)] {
            let x: Vec<i8> = (0..m * k).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect();
            let w: Vec<i8> = (0..n * k).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect();
            let ops = 2.0 * (m * k * n) as f64;
            let row = |name: &str, secs: f64| {
                let gops = ops / secs / 1e9;
                println!("| {threads} | {k}x{n} | {name} | {:.2} | {gops:.0} | {:.0}% |", secs * 1e3, 100.0 * gops / peak);
            };
            let packed = PackedI8Weights::new(&w, n, k);
            let mut y = vec![0i32; m * n];
            for kernel in [Int8Kernel::Amx, Int8Kernel::Avx512Vnni, Int8Kernel::Avx512VlVnni, Int8Kernel::AvxVnni, Int8Kernel::Avx2] {
                if kernel.is_supported() && only_kernel.as_deref().is_none_or(|name| name == kernel.name()) {
                    let s = pool.install(|| median_secs(10, || gemm_i8(kernel, &x, m, &packed, &mut y)));
                    row(&format!("llm-npu {}", kernel.name()), s);
                }
            }
            if only_ours || only_kernel.is_some() {
                continue;
            }
            // rten-gemm: A [m, k] u8 (the offset activations), B [k, n] i8 prepacked.
            let a = NdTensor::from_data([m, k], x.iter().map(|&v| (v as u8).wrapping_add(128)).collect::<Vec<u8>>());
            let b = NdTensor::from_data([k, n], (0..k * n).map(|i| w[(i % n) * k + i / n]).collect::<Vec<i8>>());
            let gemm = GemmExecutor::<u8, i8, i32>::default();
            let bp = gemm.prepack_b(b.view());
            let mut out = vec![0i32; m * n];
            let s = pool.install(|| {
                median_secs(10, || gemm.gemm(&mut out, GemmInputA::Unpacked(a.view()), GemmInputB::Packed(&bp), Default::default()).unwrap())
            });
            row(&format!("rten-gemm {}", gemm.kernel_name()), s);
        }
    }
}
