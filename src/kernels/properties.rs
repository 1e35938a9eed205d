//! Property tests: every SIMD kernel against its portable twin (and the twin against a plain
//! definition) on random shapes, with sizes drawn to hit the edges often (0, 1, odd, around the
//! 16-lane, 32-row and block boundaries) and float inputs starting at unaligned addresses.
//!
//! A failing case names its seed; `LLM_NPU_PROPERTY_SEED=<seed> cargo test --release --lib
//! properties` replays only that case. `LLM_NPU_PROPERTY_CASES=<n>` runs more cases per property
//! than CI's default.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::attention::{self, AttnShape, Precision};
use super::ops::{self, Activation};
use super::qdot::tests::random_row;
use super::qdot::{self, ActFormat, QdotLevel, QuantizedActs};
use super::{gemm, int8_gemm, matvec, quantize, simd_level, SimdLevel};
use crate::tensor::dtype::{self, DType};
use crate::tensor::Encoded;
use crate::util::Rng;

/// Cases per property in an ordinary `cargo test` (each property takes well under a second).
const CASES: u64 = 300;

/// Runs `property` on random cases, each with its own seed; a failure reports the seed.
fn for_random_cases(name: &str, property: impl Fn(&mut Rng)) {
    let replay: Option<u64> = std::env::var("LLM_NPU_PROPERTY_SEED").ok().and_then(|s| s.parse().ok());
    let cases = std::env::var("LLM_NPU_PROPERTY_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES);
    let base = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..cases).map(|case| base.wrapping_add(case)).collect(),
    };
    for seed in seeds {
        let case = seed.wrapping_sub(base);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| property(&mut Rng::new(seed)))) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("{name}: case {case} failed: {msg}\nreplay: LLM_NPU_PROPERTY_SEED={seed} cargo test --release --lib properties::{name}");
        }
    }
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// A size in 0..=max: a quarter of the time one of the edges kernels block on, else uniform.
/// Under Miri (tools/miri.sh), which interprets every operation, at most 20.
fn size(rng: &mut Rng, max: usize) -> usize {
    let max = if cfg!(miri) { max.min(20) } else { max };
    const EDGES: [usize; 16] = [0, 1, 2, 3, 4, 5, 11, 12, 13, 15, 16, 17, 31, 32, 33, 64];
    if below(rng, 4) == 0 {
        let fits: Vec<usize> = EDGES.into_iter().filter(|&e| e <= max).collect();
        fits[below(rng, fits.len())]
    } else {
        below(rng, max + 1)
    }
}

/// Random floats in [-1, 1), one in 29 scaled by 40 (activations have outliers), some exact zeros.
fn floats(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match below(rng, 29) {
            0 => (rng.next_f32() - 0.5) * 80.0,
            1 => 0.0,
            _ => rng.next_f32() * 2.0 - 1.0,
        })
        .collect()
}

/// Values stored at a random offset (0..16 floats) into their buffer, so SIMD loads are unaligned.
struct Unaligned {
    buf: Vec<f32>,
    at: usize,
    len: usize,
}

impl Unaligned {
    /// `n` values from `floats`.
    fn random(rng: &mut Rng, n: usize) -> Self {
        let values = floats(rng, n);
        Self::new(rng, &values)
    }
    fn new(rng: &mut Rng, values: &[f32]) -> Self {
        let at = below(rng, 16);
        let mut buf = vec![f32::NAN; at + values.len()];
        buf[at..].copy_from_slice(values);
        Unaligned { buf, at, len: values.len() }
    }
    fn get(&self) -> &[f32] {
        &self.buf[self.at..self.at + self.len]
    }
    fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// |a - b| within `rel` of `scale` (the sum of |terms| behind b, which bounds rounding error).
fn assert_close(a: f32, b: f32, scale: f32, rel: f32, what: &dyn Fn() -> String) {
    assert!((a - b).abs() <= rel * (scale + 1e-6), "{}: {a} vs {b} (terms up to {scale})", what());
}

/// sum_k |x[i, k] w[r, k]| for each output: the scale the float products' rounding follows.
fn abs_products(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let (xa, wa): (Vec<f32>, Vec<f32>) = (x.iter().map(|v| v.abs()).collect(), w.iter().map(|v| v.abs()).collect());
    let mut s = vec![0f32; m * n];
    gemm::gemm_nt_portable(&xa, m, k, &wa, n, &mut s, false);
    s
}

fn avx512() -> bool {
    simd_level() == SimdLevel::Avx512
}

#[test]
fn f32_products_match_the_portable_gemm() {
    for_random_cases("f32_products_match_the_portable_gemm", |rng| {
        let (m, k, n) = (size(rng, 70), size(rng, 300), size(rng, 300));
        let x = Unaligned::random(rng, m * k);
        let w = Unaligned::random(rng, n * k);
        let w2 = floats(rng, (n / 2) * k);
        let y0 = floats(rng, m * n);
        let mut want = vec![0f32; m * n];
        gemm::gemm_nt_portable(x.get(), m, k, w.get(), n, &mut want, false);
        let scale = abs_products(x.get(), m, k, w.get(), n);
        // `got` = base + x . w^T, within rounding of the product's terms and of the final add.
        let check = |path: &str, got: &[f32], base: &[f32]| {
            for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                assert_close(*g, base[i] + w, s + base[i].abs(), 1e-5, &|| format!("{path} {m}x{k}x{n} at {i}"));
            }
        };
        let zeros = vec![0f32; m * n];
        if avx512() {
            let mut y = Unaligned::new(rng, &y0);
            gemm::gemm_packed(&gemm::PackedF32Acts::new(x.get(), m, k), w.get(), n, y.get_mut(), true);
            check("gemm_packed accumulate", y.get(), &y0);
        }
        // The split tiles at any token count (the engine takes them from MIN_TOKENS on).
        if super::bf16_split::tiles_run() {
            let mut y = Unaligned::new(rng, &y0);
            gemm::gemm_packed(&gemm::PackedF32Acts::with_kernel(x.get(), m, k, gemm::F32Kernel::SplitTiles), w.get(), n, y.get_mut(), true);
            check("split tiles accumulate", y.get(), &y0);
        }
        let mut y = y0.clone();
        super::linear_accumulate(x.get(), m, k, w.get(), n, &mut y);
        check("linear_accumulate", &y, &y0);
        let mut y = vec![f32::NAN; m * n];
        super::linear(x.get(), m, k, w.get(), n, &mut y);
        check("linear", &y, &zeros);
        // Two weights sharing one packing of the input.
        let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * (n / 2)]);
        super::linear_many(x.get(), m, k, &[(w.get(), n), (&w2, n / 2)], &mut [&mut a, &mut b]);
        check("linear_many", &a, &zeros);
        let mut b_want = vec![0f32; m * (n / 2)];
        gemm::gemm_nt_portable(x.get(), m, k, &w2, n / 2, &mut b_want, false);
        let b_scale = abs_products(x.get(), m, k, &w2, n / 2);
        for ((g, w), s) in b.iter().zip(&b_want).zip(&b_scale) {
            assert_close(*g, *w, *s, 1e-5, &|| format!("linear_many second weight {m}x{k}x{}", n / 2));
        }
    });
}

#[test]
fn dot_products_match_their_twin_and_the_definition() {
    for_random_cases("dot_products_match_their_twin_and_the_definition", |rng| {
        let n = size(rng, 3000);
        let (a, b) = (Unaligned::random(rng, n), Unaligned::random(rng, n));
        let exact: f64 = a.get().iter().zip(b.get()).map(|(&x, &y)| x as f64 * y as f64).sum();
        let scale: f32 = a.get().iter().zip(b.get()).map(|(x, y)| (x * y).abs()).sum();
        let portable = matvec::dot_portable(a.get(), b.get());
        assert_close(portable, exact as f32, scale, 1e-5, &|| format!("portable dot n={n}"));
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: avx512f is present.
            let simd = unsafe { matvec::dot_avx512(a.get(), b.get()) };
            assert_close(simd, portable, scale, 1e-5, &|| format!("avx512 dot n={n}"));
        }
    });
}

#[test]
fn int8_gemm_kernels_are_exact() {
    let kernels: Vec<_> = int8_gemm::Int8Kernel::ALL.into_iter().filter(|k| k.is_supported()).collect();
    for_random_cases("int8_gemm_kernels_are_exact", |rng| {
        let (m, k, n) = (size(rng, 40), size(rng, 600), size(rng, 200));
        // Extremes (+-127) more often than uniform, to catch saturation.
        let mut int8s = |len: usize| -> Vec<i8> { (0..len).map(|_| if below(rng, 8) == 0 { [127, -127][below(rng, 2)] } else { (below(rng, 255) as i32 - 127) as i8 }).collect() };
        let (x, w) = (int8s(m * k), int8s(n * k));
        let want = int8_gemm::gemm_i8_reference(&x, m, k, &w, n);
        let packed = int8_gemm::PackedI8Weights::new(&w, n, k);
        for &kernel in &kernels {
            let mut y = vec![i32::MIN; m * n];
            int8_gemm::gemm_i8(kernel, &x, m, &packed, &mut y);
            assert!(y == want, "{} at {m}x{k}x{n}", kernel.name());
        }
    });
}

#[test]
fn the_w8a8_op_equals_quantize_then_integer_product_then_scale() {
    use crate::quant::{Int8Linear, WeightGranularity};
    let kernels: Vec<_> = int8_gemm::Int8Kernel::ALL.into_iter().filter(|k| k.is_supported()).collect();
    for_random_cases("the_w8a8_op_equals_quantize_then_integer_product_then_scale", |rng| {
        let (m, k, n) = (size(rng, 40), 1 + size(rng, 300), 1 + size(rng, 150));
        let (x, w) = (floats(rng, m * k), floats(rng, n * k));
        let bias = (below(rng, 2) == 0).then(|| floats(rng, n));
        let residual = below(rng, 2) == 0;
        let granularity = [WeightGranularity::PerTensor, WeightGranularity::PerChannel][below(rng, 2)];
        let lin = std::sync::Arc::new(Int8Linear::new(&w, n, k, bias.as_deref(), granularity));
        let input_scale = 0.002 + rng.next_f32() * 0.1;
        let mut xq = vec![0i8; m * k];
        quantize::quantize(&x, input_scale, &mut xq);
        let acc = int8_gemm::gemm_i8_reference(&xq, m, k, &lin.weights.unpack(), n);
        let y0 = floats(rng, m * n);
        for &kernel in &kernels {
            let mut y = y0.clone();
            crate::quant::w8a8(kernel, &x, m, input_scale, std::slice::from_ref(&lin), residual, &mut [&mut y]);
            for (i, &got) in y.iter().enumerate() {
                let j = i % n;
                let v = acc[i] as f32 * (input_scale * lin.scale(j)) + bias.as_ref().map_or(0.0, |b| b[j]);
                let want = if residual { y0[i] + v } else { v };
                assert!(got.to_bits() == want.to_bits(), "{} {m}x{k}x{n} at {i}: {got} vs {want}", kernel.name());
            }
        }
    });
}

#[test]
fn row_quantization_matches_its_twin() {
    for_random_cases("row_quantization_matches_its_twin", |rng| {
        let n = size(rng, 2000);
        let mut values = floats(rng, n);
        // Halfway points, infinities and NaN among them.
        let inv_scale = [1.0, 0.37, 1e-3, 3e4][below(rng, 4)] * (0.5 + rng.next_f32());
        for v in values.iter_mut() {
            match below(rng, 40) {
                0 => *v = (below(rng, 300) as f32 - 150.0 + 0.5) / inv_scale,
                1 => *v = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][below(rng, 3)],
                _ => *v *= 200.0,
            }
        }
        let x = Unaligned::new(rng, &values);
        for offset in [0u8, 128] {
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            quantize::quantize_row_offset(x.get(), inv_scale, offset, &mut a);
            quantize::quantize_row_offset_portable(x.get(), inv_scale, offset, &mut b);
            assert!(a == b, "n={n} offset {offset}");
            for (&q, &v) in b.iter().zip(x.get()) {
                let want = if v.is_nan() { 0 } else { (v * inv_scale).round_ties_even().clamp(-127.0, 127.0) as i8 };
                assert_eq!(q.wrapping_sub(offset) as i8, want, "x = {v}, 1/scale = {inv_scale}");
            }
        }
    });
}

/// softmax(q.k * scale, soft-capped) . v for every query token and head, in f64, from the
/// definition: token t sees the positions up to pos0 + t (the last `window` of them). With each
/// output, the error a float kernel may make: its scores round within about sqrt(head_dim)
/// half-ulps of scale * sum_d |q_d k_d| (FMA or not changes which), and a score off by e moves
/// the output by at most 2 e max|v|; plus exp_fast's and the sums' relative error.
pub(super) fn attention_by_definition(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, tokens: usize) -> Vec<(f64, f64)> {
    let (hd, st) = (s.head_dim, s.kv_stride);
    let group = s.n_heads / s.n_kv_heads;
    let mut out = vec![(0f64, 0f64); tokens * s.n_heads * hd];
    for t in 0..tokens {
        let last = s.pos0 + t;
        let first = s.window.map_or(0, |w| (last + 1).saturating_sub(w));
        let slots: Vec<usize> = (first..=last).map(|p| p - s.kv_base).collect();
        for h in 0..s.n_heads {
            let (kvh, qh) = (h / group, &q[(t * s.n_heads + h) * hd..][..hd]);
            let cap = |x: f64| s.softcap.map_or(x, |c| (x / c as f64).tanh() * c as f64);
            let term = |j: usize, d: usize| qh[d] as f64 * k[(kvh * hd + d) * st + j] as f64;
            let sc: Vec<f64> = slots.iter().map(|&j| cap((0..hd).map(|d| term(j, d)).sum::<f64>() * s.scale as f64)).collect();
            let magnitude = slots.iter().map(|&j| (0..hd).map(|d| term(j, d).abs()).sum::<f64>() * s.scale as f64).fold(0.0, f64::max);
            let v_max = slots.iter().flat_map(|&j| &v[(kvh * st + j) * hd..][..hd]).fold(0f64, |m, &x| m.max(x.abs() as f64));
            let score_error = 4.0 * (hd as f64).sqrt() * f32::EPSILON as f64 * magnitude;
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let exact: f64 = slots.iter().zip(&e).map(|(&j, p)| p / z * v[(kvh * st + j) * hd + d] as f64).sum();
                out[(t * s.n_heads + h) * hd + d] = (exact, 2.0 * score_error * v_max + 1e-5 * (v_max + exact.abs()));
            }
        }
    }
    out
}

#[test]
fn attention_matches_its_twin_and_the_definition() {
    for_random_cases("attention_matches_its_twin_and_the_definition", |rng| {
        let n_kv_heads = 1 + below(rng, 3);
        let n_heads = n_kv_heads * (1 + below(rng, 6));
        // A third of the cases at the head sizes the AMX bf16 tiles take.
        let head_dim = if below(rng, 3) == 0 { 32 * (1 + below(rng, 3)) } else { 1 + size(rng, 96) };
        let tokens = 1 + size(rng, 40);
        let window = (below(rng, 3) == 0).then(|| 1 + size(rng, 40));
        let pos0 = size(rng, 60);
        // A windowed cache may have dropped what no query of the batch sees.
        let kv_base = window.map_or(0, |w| below(rng, (pos0 + 1).saturating_sub(w) + 1));
        let kv_stride = (pos0 + tokens - kv_base).next_multiple_of(16) + 16 * below(rng, 2);
        let s = AttnShape {
            n_heads,
            n_kv_heads,
            head_dim,
            pos0,
            kv_stride,
            kv_base,
            window,
            scale: 1.0 / (head_dim as f32).sqrt() * (0.5 + 2.0 * rng.next_f32()),
            softcap: (below(rng, 3) == 0).then(|| 0.5 + 30.0 * rng.next_f32()),
        };
        let cache = n_kv_heads * kv_stride * head_dim;
        let (k, v) = (floats(rng, cache), floats(rng, cache));
        let q = floats(rng, tokens * n_heads * head_dim);
        let run = |f: fn(Precision, &[f32], &[f32], &[f32], AttnShape, &mut [f32]), precision| {
            let mut o = vec![f32::NAN; q.len()];
            f(precision, &q, &k, &v, s, &mut o);
            o
        };
        let want = attention_by_definition(&q, &k, &v, s, tokens);
        let (best, portable) = (run(attention::causal_attention_in, Precision::F32), run(attention::causal_attention_portable_in, Precision::F32));
        for (i, ((&b, &p), &(w, tol))) in best.iter().zip(&portable).zip(&want).enumerate() {
            assert!((b as f64 - w).abs() <= tol, "{s:?} tokens {tokens} at {i}: {b} vs definition {w} (tolerance {tol})");
            assert!((p as f64 - w).abs() <= tol, "{s:?} tokens {tokens} at {i}: portable {p} vs definition {w} (tolerance {tol})");
        }
        // int8 (from INT8_MIN_TOKENS tokens on): the twins agree to float rounding; both within
        // int8 rounding of the definition. Inputs without the rare large values (one per vector
        // takes the resolution of the rest: an error no fixed bound describes), so values lie in
        // -1..1, outputs are averages of them and the bound is absolute.
        let unit = |x: &[f32]| -> Vec<f32> { x.iter().map(|v| v.clamp(-1.0, 1.0)).collect() };
        let (q, k, v) = (unit(&q), unit(&k), unit(&v));
        let want = attention_by_definition(&q, &k, &v, s, tokens);
        let run = |f: fn(Precision, &[f32], &[f32], &[f32], AttnShape, &mut [f32]), precision| {
            let mut o = vec![f32::NAN; q.len()];
            f(precision, &q, &k, &v, s, &mut o);
            o
        };
        let (best, portable) = (run(attention::causal_attention_in, Precision::Int8), run(attention::causal_attention_portable_in, Precision::Int8));
        let low_precision = tokens >= attention::INT8_MIN_TOKENS;
        let bound = if low_precision { 0.03 } else { 0.0 }; // 0.0127 seen in 2,000 cases
        for (i, ((&b, &p), &(w, tol))) in best.iter().zip(&portable).zip(&want).enumerate() {
            assert!((b - p).abs() <= 1e-5 * (1.0 + p.abs()), "{s:?} tokens {tokens} at {i}: int8 {b} vs its portable twin {p}");
            assert!((b as f64 - w).abs() <= tol + bound, "{s:?} tokens {tokens} at {i}: int8 {b} vs definition {w}");
        }
        // bf16 (AMX tiles; f32 where the CPU or the head size does not take them, while the
        // portable twin computes in bf16 wherever the head size fits): within bf16 rounding of
        // the definition; the twins within AMX's last-bit sums of each other where both run bf16.
        let (best, portable) = (run(attention::causal_attention_in, Precision::Bf16), run(attention::causal_attention_portable_in, Precision::Bf16));
        let bound = if low_precision { 0.01f64 } else { 0.0 };
        let twins = if attention::bf16_runs(head_dim) { 5e-4 } else { 2.0 * bound as f32 };
        for (i, ((&b, &p), &(w, tol))) in best.iter().zip(&portable).zip(&want).enumerate() {
            assert!((b - p).abs() <= twins + 1e-5 * (1.0 + p.abs()), "{s:?} tokens {tokens} at {i}: bf16 {b} vs its portable twin {p}");
            assert!((b as f64 - w).abs() <= tol + bound && (p as f64 - w).abs() <= tol + bound, "{s:?} tokens {tokens} at {i}: bf16 {b} (portable {p}) vs definition {w}");
        }
    });
}

#[test]
fn elementwise_kernels_match_their_twins() {
    for_random_cases("elementwise_kernels_match_their_twins", |rng| {
        let n = size(rng, 5000);
        let x = Unaligned::random(rng, n);
        let y0 = floats(rng, n);
        let a = rng.next_f32() * 4.0 - 2.0;
        // axpy: the same operations in both, so the same bits.
        let mut y = Unaligned::new(rng, &y0);
        ops::axpy(y.get_mut(), a, x.get());
        let mut want = y0.clone();
        ops::axpy_portable(&mut want, a, x.get());
        assert!(y.get() == want.as_slice(), "axpy n={n}");
        // find_beyond: the indices whose |x * inv| exceeds the limit, in order.
        let inv = 0.5 + rng.next_f32() * 4.0;
        let (mut got, mut twin) = (Vec::new(), Vec::new());
        ops::find_beyond(x.get(), inv, 127.0 * 0.05, &mut got);
        ops::find_beyond_portable(x.get(), inv, 127.0 * 0.05, &mut twin);
        let definition: Vec<u32> = x.get().iter().enumerate().filter(|(_, v)| (*v * inv).abs() > 127.0 * 0.05).map(|(i, _)| i as u32).collect();
        assert!(got == definition && twin == definition, "find_beyond n={n}");
        // e^(x - max) and its sum: fused steps on AVX-512, within 2e-7 (relative) of the portable loop.
        let max = x.get().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) + rng.next_f32();
        let (mut e, mut e_twin) = (Unaligned::new(rng, x.get()), x.get().to_vec());
        let simd = simd_level() == SimdLevel::Avx512;
        let sum = if simd { ops::exp_minus_simd::<true>(e.get_mut(), max) } else { ops::exp_minus(e.get_mut(), max) };
        let sum_twin = ops::exp_minus(&mut e_twin, max);
        for (p, q) in e.get().iter().zip(&e_twin) {
            assert!((p - q).abs() <= 4e-7 * q.abs() + 1e-38, "exp_minus n={n}: {p} vs {q}");
        }
        assert!((sum - sum_twin).abs() <= 1e-6 * sum_twin.abs() + 1e-30, "exp_minus sum n={n}: {sum} vs {sum_twin}");
        // Gated activations, built for AVX-512 and portable (the compiler may contract differently).
        for act in [Activation::Silu, Activation::GeluTanh] {
            let mut g = Unaligned::new(rng, &y0.iter().map(|v| v * 10.0).collect::<Vec<_>>());
            let mut g_twin = g.get().to_vec();
            ops::glu(act, g.get_mut(), x.get());
            ops::glu_portable(act, &mut g_twin, x.get());
            for (p, q) in g.get().iter().zip(&g_twin) {
                assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{act:?} n={n}: {p} vs {q}");
            }
        }
    });
}

#[test]
fn rms_norm_and_rope_match_their_twins_and_the_definition() {
    for_random_cases("rms_norm_and_rope_match_their_twins_and_the_definition", |rng| {
        // RMSNorm: built for AVX-512 and portable from one body: the same bits.
        let (rows, dim) = (1 + below(rng, 4), 1 + below(rng, 300));
        let x = floats(rng, rows * dim);
        let w = floats(rng, dim);
        let (mut got, mut twin) = (vec![0f32; rows * dim], vec![0f32; rows * dim]);
        ops::rms_norm(&x, &w, 1e-5, &mut got);
        ops::rms_norm_rows(&x, &w, 1e-5, &mut twin);
        assert!(got == twin, "rms_norm rows={rows} dim={dim}");
        // RoPE, both pairings, full and partial rotation: the same bits as the element-by-element
        // definition.
        let head_dim = 2 * (1 + below(rng, 40));
        let (heads, tokens) = (1 + below(rng, 3), 1 + below(rng, 3));
        let half = 1 + below(rng, head_dim / 2);
        let angles = floats(rng, tokens * half);
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        for style in [ops::RopeStyle::Neox, ops::RopeStyle::Interleaved] {
            let x0 = floats(rng, tokens * heads * head_dim);
            let mut got = x0.clone();
            ops::apply_rope(&mut got, head_dim, style, &cos, &sin, half);
            let mut want = x0.clone();
            for (t, row) in want.chunks_exact_mut(heads * head_dim).enumerate() {
                for head in row.chunks_exact_mut(head_dim) {
                    for i in 0..half {
                        let (a, b) = if style == ops::RopeStyle::Neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                        let (c, s) = (cos[t * half + i], sin[t * half + i]);
                        let (x0, x1) = (head[a], head[b]);
                        head[a] = x0 * c - x1 * s;
                        head[b] = x1 * c + x0 * s;
                    }
                }
            }
            assert!(got == want, "rope {style:?} head_dim={head_dim} half={half}");
        }
    });
}

#[test]
fn quantized_dot_products_equal_their_portable_twin_bit_for_bit() {
    let levels = QdotLevel::available();
    let types: Vec<DType> = DType::ALL.into_iter().filter(|d| d.is_quantized()).collect();
    for_random_cases("quantized_dot_products_equal_their_portable_twin_bit_for_bit", |rng| {
        let dtype = types[below(rng, types.len())];
        let format = ActFormat::for_weights(dtype).unwrap();
        let per_block = dtype.block().0;
        // A few blocks under Miri: it interprets every integer step of the block products.
        let blocks = size(rng, if cfg!(miri) { 3 } else if per_block == 256 { 20 } else { 100 });
        let k = blocks * per_block;
        let x = floats(rng, k);
        // The activation quantizer's SIMD build against the portable one.
        let a = QuantizedActs::new(format, &x);
        let twin = qdot::quantize_portable_of(format, &x);
        assert!(a.qs == twin.qs && a.sums == twin.sums && a.d.iter().zip(&twin.d).all(|(p, q)| p.to_bits() == q.to_bits()), "{} activation quantizer k={k}", dtype.name());
        // One row at every level.
        let row = random_row(dtype, blocks, rng);
        let want = qdot::row_dot_portable(dtype, &row, &a);
        for &level in &levels {
            let got = qdot::row_dot(level, dtype, &row, &a);
            assert!(got.to_bits() == want.to_bits(), "{} {blocks} blocks at {level:?}: {got} vs {want}", dtype.name());
        }
        // A matrix times a few or many tokens (the integer GEMM from 4 tokens on) at every level.
        let (n, m) = (1 + size(rng, 40), 1 + size(rng, 13));
        if k == 0 {
            return;
        }
        let bytes = random_row(dtype, n * blocks, rng);
        let w = Encoded { dtype, bytes: &bytes, rows: n, cols: k };
        let xs = floats(rng, m * k);
        let acts: Vec<QuantizedActs> = xs.chunks_exact(k).map(|r| QuantizedActs::new(format, r)).collect();
        for &level in &levels {
            let mut y = vec![0.25f32; m * n];
            qdot::matmul_at(level, w, &xs, m, &mut y, true);
            for (i, a) in acts.iter().enumerate() {
                for r in 0..n {
                    let want = 0.25 + qdot::row_dot_portable(dtype, w.row(r), a);
                    let got = y[i * n + r];
                    assert!(got.to_bits() == want.to_bits(), "{} {n}x{k} m={m} {level:?} token {i} row {r}: {got} vs {want}", dtype.name());
                }
            }
        }
    });
}

#[test]
fn weight_decoding_matches_its_twin() {
    for_random_cases("weight_decoding_matches_its_twin", |rng| {
        let dtype = DType::ALL[below(rng, DType::ALL.len())];
        let (per_block, bytes_per_block) = dtype.block();
        let blocks = size(rng, 40);
        let bytes = if dtype.is_quantized() { random_row(dtype, blocks, rng) } else { (0..blocks * bytes_per_block).map(|_| rng.next_u64() as u8).collect() };
        let n = blocks * per_block;
        let (mut got, mut twin) = (vec![0f32; n], vec![0f32; n]);
        dtype::to_f32(dtype, &bytes, &mut got);
        dtype::to_f32_portable(dtype, &bytes, &mut twin);
        for (i, (g, t)) in got.iter().zip(&twin).enumerate() {
            assert!(g.to_bits() == t.to_bits() || (g.is_nan() && t.is_nan()), "{} at {i}: {g} vs {t}", dtype.name());
        }
    });
}

#[test]
fn sign_block_products_match_their_twin_and_the_dense_weight() {
    use super::sign_blocks::{sign_block_matvec, sign_block_matvec_portable, sign_blocks_matvec, SignBlock};
    for_random_cases("sign_block_products_match_their_twin_and_the_dense_weight", |rng| {
        let (rows, cols, rank) = (size(rng, 100), size(rng, 300), size(rng, 17));
        let words = SignBlock::words_per_row(cols);
        // Random signs; the padding bits beyond `cols` stay 0 as the layout requires.
        let signs: Vec<u64> = (0..rows * words)
            .map(|w| {
                let valid = cols - (w % words.max(1)) * 64;
                let bits = rng.next_u64();
                if valid >= 64 { bits } else { bits & ((1u64 << valid) - 1) }
            })
            .collect();
        let (u, v, x) = (floats(rng, rows * rank), floats(rng, rank * cols), Unaligned::random(rng, cols));
        let b = SignBlock { rows, cols, rank, signs: &signs, u: &u, v: &v };
        let dense = b.dense();
        let y0 = floats(rng, rows);
        let (mut got, mut twin) = (y0.clone(), y0.clone());
        sign_block_matvec(&b, x.get(), &mut got);
        sign_block_matvec_portable(&b, x.get(), &mut twin);
        // z = V[c] * x is rounded to int8 per rank: each value is off by at most half a step.
        let step: Vec<f64> = (0..rank).map(|c| (0..cols).map(|j| (v[c * cols + j] * x.get()[j]).abs() as f64).fold(0.0, f64::max) / 127.0).collect();
        for i in 0..rows {
            assert_eq!(got[i].to_bits(), twin[i].to_bits(), "{rows}x{cols} rank {rank} row {i}: SIMD {} vs portable {}", got[i], twin[i]);
            let want = y0[i] as f64 + (0..cols).map(|j| dense[i * cols + j] as f64 * x.get()[j] as f64).sum::<f64>();
            let rounding: f64 = (0..rank).map(|c| (u[i * rank + c] as f64).abs() * step[c] * (cols as f64 / 2.0 + 1.0)).sum();
            let scale: f64 = y0[i].abs() as f64 + (0..rank).map(|c| (u[i * rank + c] as f64).abs() * (0..cols).map(|j| (v[c * cols + j] * x.get()[j]).abs() as f64).sum::<f64>()).sum::<f64>();
            assert!((twin[i] as f64 - want).abs() <= rounding + 1e-5 * (scale + 1e-6), "{rows}x{cols} rank {rank} row {i}: {} vs {want} (bound {rounding})", twin[i]);
        }
        // Several blocks of the matrix in one pass: the same as one by one, bit for bit.
        // (Shifting right keeps the padding bits zero.)
        let (signs2, u2, v2) = (signs.iter().map(|w| w >> 1).collect::<Vec<u64>>(), floats(rng, rows * rank), floats(rng, rank * cols));
        let second = SignBlock { rows, cols, rank, signs: &signs2, u: &u2, v: &v2 };
        let (mut merged, mut one_by_one) = (y0.clone(), y0.clone());
        sign_blocks_matvec(&[b, second], x.get(), &mut merged);
        sign_block_matvec(&b, x.get(), &mut one_by_one);
        sign_block_matvec(&second, x.get(), &mut one_by_one);
        assert!(merged.iter().zip(&one_by_one).all(|(m, o)| m.to_bits() == o.to_bits()), "{rows}x{cols} rank {rank}: two blocks in one pass differ from one by one");
        // Rows rebuilt for the GEMM, from any first row, added to what is there.
        let r0 = rng.next_u64() as usize % (rows + 1);
        let n = rng.next_u64() as usize % (rows - r0 + 1);
        let base = floats(rng, n * cols);
        let mut rebuilt = base.clone();
        b.add_dense_rows(r0, &mut rebuilt);
        for (k, (&r, &o)) in rebuilt.iter().zip(&base).enumerate() {
            let (i, j) = (r0 + k / cols, k % cols);
            let scale: f32 = o.abs() + (0..rank).map(|c| (u[i * rank + c] * v[c * cols + j]).abs()).sum::<f32>();
            assert!((r - (o + dense[i * cols + j])).abs() <= 1e-5 * (scale + 1e-6), "rebuilt row {i} col {j} of {rows}x{cols} rank {rank}");
        }
    });
}
