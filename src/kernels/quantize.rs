//! Symmetric int8 quantization of float values (zero point 0, values in -127..=127): the rounding
//! every int8 path shares. Rounding is to nearest, ties to even, like PyTorch's `torch.round`, so
//! a fake-quant reference reproduces it exactly.

use rayon::prelude::*;

/// The largest quantized magnitude: -128 is never produced, which keeps every kernel exact.
pub const QMAX: f32 = 127.0;

/// round(x * inv_scale) clamped to -127..=127, ties to even. Clamping first keeps the value
/// small enough for the classic trick: adding 1.5 * 2^23 makes the FPU round to the nearest
/// integer (ties to even, the default mode) and leaves it, two's complement, in the low mantissa
/// bits. Unlike `round_ties_even` (a libm call per element) or an `as i8` cast (a scalar
/// conversion per lane) this stays in vector registers, which matters for a billion weights at
/// load and every activation. NaN quantizes to 0.
#[inline(always)]
pub fn quantize_value(x: f32, inv_scale: f32) -> i8 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let y = (x * inv_scale).clamp(-QMAX, QMAX);
    let q = (y + ROUND).to_bits().wrapping_sub(ROUND.to_bits());
    // NaN survives the clamp; its bits are not a small integer.
    if y.is_nan() {
        0
    } else {
        q as u8 as i8
    }
}

/// Quantizes a row with a static scale into bytes offset by `offset` (128 turns int8 into the
/// unsigned activations of the VNNI kernels, 0 keeps them signed).
pub fn quantize_row_offset(x: &[f32], inv_scale: f32, offset: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd_level() == super::SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has avx512f and avx512bw.
        return unsafe { quantize_row_offset_avx512(x, inv_scale, offset, out) };
    }
    quantize_row_offset_portable(x, inv_scale, offset, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_offset_avx512(x: &[f32], inv_scale: f32, offset: u8, out: &mut [u8]) {
    quantize_row_offset_portable(x, inv_scale, offset, out)
}

#[inline(always)]
pub fn quantize_row_offset_portable(x: &[f32], inv_scale: f32, offset: u8, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (quantize_value(v, inv_scale) as u8).wrapping_add(offset);
    }
}


/// `quantize_row_offset` into signed int8 (offset 0).
pub fn quantize_row(x: &[f32], inv_scale: f32, out: &mut [i8]) {
    // SAFETY: i8 and u8 have one size and alignment, and every bit pattern is valid for both.
    let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, out.len()) };
    quantize_row_offset(x, inv_scale, 0, bytes)
}

/// The scale that maps `max_abs` to 127 (1 when everything is zero).
pub fn scale_for(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        max_abs / QMAX
    } else {
        1.0
    }
}

/// Quantizes `x` with a static scale into `out` (values beyond 127 * scale are clipped).
pub fn quantize(x: &[f32], scale: f32, out: &mut [i8]) {
    let inv = 1.0 / scale;
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, xs)| {
        for (q, &v) in o.iter_mut().zip(xs) {
            *q = quantize_value(v, inv);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_value_rounds_half_to_even_and_clips() {
        for (x, want) in [(0.5f32, 0i8), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (-2.5, -2), (126.5, 126), (1000.0, 127), (-1e9, -127), (0.49999997, 0), (3.7, 4), (-3.2, -3)] {
            assert_eq!(quantize_value(x, 1.0), want, "x = {x}");
            assert_eq!(quantize_value(x, 1.0), (x.round_ties_even().clamp(-127.0, 127.0)) as i8, "x = {x}");
        }
        // Against the library rounding on many values.
        // Fewer under Miri (tools/miri.sh), which interprets every step.
        let n: i32 = if cfg!(miri) { 3_000 } else { 300_000 };
        for i in -n..n {
            let x = i as f32 * 0.000_537;
            assert_eq!(quantize_value(x, 1.0), x.round_ties_even().clamp(-127.0, 127.0) as i8, "x = {x}");
        }
        assert_eq!(quantize_value(f32::NAN, 1.0), 0);
    }

    #[test]
    fn row_quantization_matches_the_portable_version() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) * 0.37).chain([f32::NAN, f32::INFINITY, -f32::INFINITY, 0.5, -0.5, 2.5]).collect();
        for offset in [0u8, 128] {
            let (mut a, mut b) = (vec![0u8; x.len()], vec![0u8; x.len()]);
            quantize_row_offset(&x, 1.0 / 2.9, offset, &mut a);
            quantize_row_offset_portable(&x, 1.0 / 2.9, offset, &mut b);
            assert_eq!(a, b);
            for (&q, &v) in a.iter().zip(&x) {
                let want = if v.is_nan() { 0 } else { (v * (1.0 / 2.9)).round_ties_even().clamp(-127.0, 127.0) as i8 };
                assert_eq!(q.wrapping_sub(offset) as i8, want, "x = {v}");
            }
        }
    }
}
