//! This machine's limits, measured on the threads we run with: the int8 dot-product peak, the
//! f32 FMA peak (each with the widest instructions this CPU has, on enough independent
//! accumulator chains to hide latency) and the memory read bandwidth (a buffer far larger than
//! any cache, streamed by every thread). Speeds are reported as shares of these, since absolute
//! numbers change with the machine.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub threads: usize,
    /// Integer multiply-add peak, counting a multiply and an add as two operations.
    pub int8_gops: f64,
    /// f32 FMA peak, two flops per FMA.
    pub f32_gflops: f64,
    pub read_gb_per_s: f64,
    /// The instructions the peaks were measured with.
    pub int8_kernel: &'static str,
    pub f32_kernel: &'static str,
    /// Where split bf16 tiles run (AMX-BF16; the f32 GEMM's `kernels::gemm_split`): f32-accurate
    /// products per second there, the `tdpbf16ps` peak over the products of parts each f32
    /// product takes. A property of the machine: `LLM_NPU_F32_GEMM=fma` does not change it.
    pub f32_split_gflops: Option<f64>,
}

impl Limits {
    /// Tokens/s if every token must stream `bytes_per_token` from memory.
    pub fn memory_bound_tokens_per_s(&self, bytes_per_token: f64) -> f64 {
        self.read_gb_per_s * 1e9 / bytes_per_token
    }

    /// Tokens/s if every token costs `ops_per_token` int8 (or f32) operations at the peak.
    pub fn compute_bound_tokens_per_s(&self, ops_per_token: f64, int8: bool) -> f64 {
        (if int8 { self.int8_gops } else { self.f32_peak().0 }) * 1e9 / ops_per_token
    }

    /// The faster way to f32-accurate products here and its rate: FMA, or split bf16 tiles.
    pub fn f32_peak(&self) -> (f64, &'static str) {
        match self.f32_split_gflops {
            Some(split) if split > self.f32_gflops => (split, "AMX tdpbf16ps on f32 split into bf16 parts: the bf16 peak / 6 products"),
            _ => (self.f32_gflops, self.f32_kernel),
        }
    }
}

/// Measures the three limits on the global thread pool (best of a few trials each; ~1 s).
pub fn measure() -> Limits {
    let threads = rayon::current_num_threads();
    let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(0f64, f64::max);
    let (int8_kernel, int8_step) = int8_kernel();
    let (f32_kernel, f32_step) = f32_kernel();
    let int8_gops = best(&|| on_every_thread(|| int8_step(ITERATIONS)));
    let f32_gflops = best(&|| on_every_thread(|| f32_step(ITERATIONS)));
    let f32_split_gflops = split_tile_step().map(|step| best(&|| on_every_thread(|| step(ITERATIONS))) / crate::kernels::bf16_split::SPLIT_PAIRS.len() as f64);
    // 512 MiB, touched once so the pages exist before timing.
    let buffer: Vec<u64> = vec![1; (512 << 20) / 8];
    let read_gb_per_s = best(&|| read_bandwidth(&buffer, threads));
    Limits { threads, int8_gops, f32_gflops, read_gb_per_s, int8_kernel, f32_kernel, f32_split_gflops }
}

const ITERATIONS: usize = 10_000_000;

/// Runs `work` (returning the operations it did) on every thread of the pool at once; giga-ops/s.
fn on_every_thread(work: impl Fn() -> f64 + Sync) -> f64 {
    let t0 = Instant::now();
    let ops: f64 = rayon::broadcast(|_| work()).iter().sum();
    ops / t0.elapsed().as_secs_f64() / 1e9
}

/// Every thread reads its share of `buffer`; GB/s.
fn read_bandwidth(buffer: &[u64], threads: usize) -> f64 {
    let share = buffer.len().div_ceil(threads);
    let t0 = Instant::now();
    let sums = rayon::broadcast(|ctx| {
        let part = &buffer[(ctx.index() * share).min(buffer.len())..((ctx.index() + 1) * share).min(buffer.len())];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { x86::sum_words_avx512(part) };
        }
        sum_words(part)
    });
    black_box(sums);
    (buffer.len() * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// Sum with 8 independent accumulators, which the compiler turns into wide vector loads.
#[inline(always)]
fn sum_words(v: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in v.chunks_exact(8) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(x);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

type Step = fn(usize) -> f64;

fn int8_kernel() -> (&'static str, Step) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::amx::available() {
            // SAFETY: AMX was just found and enabled. n / 16 rounds of 4 tdpbusd (16 cycles each) take about as long as the VNNI probe.
            return ("AMX tdpbusd", |n| unsafe { crate::kernels::amx::peak_step::<false>(n / 16) });
        }
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
            // SAFETY: the features were just detected.
            return ("AVX-512 VNNI vpdpbusd", |n| unsafe { x86::int8_vnni(n) });
        }
        if is_x86_feature_detected!("avx2") {
            return ("AVX2 vpmaddubsw + vpmaddwd", |n| unsafe { x86::int8_avx2(n) });
        }
    }
    ("scalar", int8_scalar)
}

/// The bf16 tile peak probe, where split tiles run.
fn split_tile_step() -> Option<Step> {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::bf16_split::tiles_run() {
        // SAFETY: split tiles run here, so AMX-BF16 is there and enabled.
        return Some(|n| unsafe { crate::kernels::amx::peak_step::<true>(n / 16) });
    }
    None
}

fn f32_kernel() -> (&'static str, Step) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the features were just detected.
            return ("AVX-512 FMA", |n| unsafe { x86::f32_avx512(n) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return ("AVX2 FMA", |n| unsafe { x86::f32_avx2(n) });
        }
    }
    ("scalar", f32_scalar)
}

fn int8_scalar(n: usize) -> f64 {
    let mut acc = [0i32; 8];
    let (a, b) = (black_box(3i32), black_box(5i32));
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = x.wrapping_add(a * b);
        }
    }
    black_box(acc);
    (n * 8 * 2) as f64
}

fn f32_scalar(n: usize) -> f64 {
    let mut acc = [0f32; 8];
    let (a, b) = (black_box(1.000_001f32), black_box(0.999_999f32));
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = *x * a + b;
        }
    }
    black_box(acc);
    (n * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// Streams `v` with 64-byte loads into four independent accumulators.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_words_avx512(v: &[u64]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let chunks = v.len() / 32;
        let p = v.as_ptr() as *const __m512i;
        for c in 0..chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(4 * c + j) as *const _));
            }
        }
        let s = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        (_mm512_reduce_add_epi64(s) as u64).wrapping_add(super::sum_words(&v[chunks * 32..]))
    }

    /// Independent accumulator chains: enough to cover latency x throughput on current cores.
    const CHAINS: usize = 16;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn int8_vnni(n: usize) -> f64 {
        let (a, b) = (black_box(_mm512_set1_epi8(3)), black_box(_mm512_set1_epi8(-2)));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        black_box(acc);
        (n * CHAINS * 64 * 2) as f64
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn int8_avx2(n: usize) -> f64 {
        let (a, b, ones) = (black_box(_mm256_set1_epi8(3)), black_box(_mm256_set1_epi8(-2)), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_add_epi32(*x, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
            }
        }
        black_box(acc);
        (n * CHAINS * 32 * 2) as f64
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_avx512(n: usize) -> f64 {
        let (a, b) = (black_box(_mm512_set1_ps(1.000_001)), black_box(_mm512_set1_ps(0.999_999)));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
        (n * CHAINS * 16 * 2) as f64
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_avx2(n: usize) -> f64 {
        let (a, b) = (black_box(_mm256_set1_ps(1.000_001)), black_box(_mm256_set1_ps(0.999_999)));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
        (n * CHAINS * 8 * 2) as f64
    }
}
