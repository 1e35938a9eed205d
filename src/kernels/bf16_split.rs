//! Splitting f32 into bf16 parts for AMX-BF16 tiles, which multiply bf16 pairs exactly into
//! f32 sums at 16x the multiply-adds per instruction of an AVX-512 FMA: an f32 is the sum of
//! `SPLIT_PARTS` bf16 (each the rest of the ones before, rounded to nearest even), and a product
//! of two f32 as accurate as f32's own is the sum of the `SPLIT_PAIRS` products of their parts.
//! f32 attention (`attention/bf16.rs`) and the f32 GEMM (`gemm_split.rs`) run this way where the
//! CPU has AMX-BF16. Conversions use `vcvtneps2bf16` where AVX512-BF16 is (the same bits
//! as the portable rounding, which tests check).

/// f32 lanes per AVX-512 vector.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;

/// bf16 parts per split operand: three parts of 8 significant bits hold an f32's 24.
pub const SPLIT_PARTS: usize = 3;
/// The products of parts (of a, of b) that f32-accurate products add (part i is about 2^-8i
/// of the whole): every pair whose orders add up to less than 3, so what is left out is below
/// f32's own rounding (`tools/bf16_split_sim.py`: 6-10e-8 against f64 where f32 products give
/// 3-4e-6). In a chain where each pair shares its part of a or of b with the pair before, which
/// the tiles then keep instead of loading it again (14 tile loads per step for 24 products; 18
/// when only a shared, 24 without sharing), the largest product last.
pub const SPLIT_PAIRS: [(usize, usize); 6] = [(0, 2), (0, 1), (1, 1), (1, 0), (2, 0), (0, 0)];

/// The part pairs multiplied for operands of `parts` parts (1: the one product of bf16 attention).
pub fn part_pairs(parts: usize) -> &'static [(usize, usize)] {
    if parts == 1 {
        &[(0, 0)]
    } else {
        debug_assert_eq!(parts, SPLIT_PARTS);
        &SPLIT_PAIRS
    }
}

/// x rounded to the nearest bf16 (ties to even), as `vcvtneps2bf16` does: denormals become
/// zeros of their sign, NaNs stay NaNs.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0 {
        return (bits >> 16) as u16 & 0x8000;
    }
    if x.is_nan() {
        return (bits >> 16) as u16 | 0x0040;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
#[inline(always)]
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// out[i * plane + j] = part i of x[j] * scale: the product rounded to bf16 (`bf16_bits`),
/// then what that leaves rounded again, `parts` times (1 for bf16 attention, `SPLIT_PARTS` for
/// f32-accurate products: the parts add up to the product exactly). With `simd`,
/// `vcvtneps2bf16`, the same rounding (the portable loop was 1.7% of a 512-token prefill).
/// `simd` only where `simd_conversions()`.
pub fn to_bf16_parts_scaled(simd: bool, x: &[f32], scale: f32, parts: usize, out: &mut [u16], plane: usize) {
    assert!((1..=SPLIT_PARTS).contains(&parts) && x.len() <= plane && out.len() >= (parts - 1) * plane + x.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked avx512f, bw, vl and bf16 (`simd_conversions`); the assert
        // bounds every store.
        return unsafe { to_bf16_parts_scaled_avx512(x, scale, parts, out, plane) };
    }
    let _ = simd;
    for (j, &v) in x.iter().enumerate() {
        bf16_parts(v * scale, parts, |part, bits| out[part * plane + j] = bits);
    }
}

/// x's `parts` bf16 parts, largest first, to `emit(part, bits)`: each the rest rounded to bf16.
/// The rest after each part is exact in f32 (rounding to 8 bits leaves at most 16).
#[inline(always)]
pub fn bf16_parts(x: f32, parts: usize, mut emit: impl FnMut(usize, u16)) {
    let mut rest = x;
    for part in 0..parts {
        let bits = bf16_bits(rest);
        emit(part, bits);
        rest -= bf16_value(bits);
    }
}

/// `bf16_parts` of 16 lanes: part i of lane l in lane l of the i-th `emit`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn bf16_parts_avx512(x: std::arch::x86_64::__m512, parts: usize, mut emit: impl FnMut(usize, std::arch::x86_64::__m256i)) {
    use std::arch::x86_64::*;
    let mut rest = x;
    for part in 0..parts {
        let bits: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(rest));
        emit(part, bits);
        if part + 1 < parts {
            // The bf16 back as f32: each in the high half of a lane.
            rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits))));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn to_bf16_parts_scaled_avx512(x: &[f32], scale: f32, parts: usize, out: &mut [u16], plane: usize) {
    use std::arch::x86_64::*;
    let vs = _mm512_set1_ps(scale);
    for i in (0..x.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(x.len() - i);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)), vs);
        bf16_parts_avx512(v, parts, |part, bits| _mm256_mask_storeu_epi16(out.as_mut_ptr().add(part * plane + i) as *mut i16, mask, bits));
    }
}

/// Whether `vcvtneps2bf16` is here (asked once); it rounds as `bf16_bits`, so the choice never
/// changes a bit.
pub fn simd_conversions() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether split products run on AMX-BF16 tiles here: AVX-512, AMX where the int8 GEMMs use it
/// (LLM_NPU_INT8 can turn it off), AMX-BF16 and AVX512-BF16 for the conversions (Sapphire
/// Rapids has all of them).
pub fn tiles_run() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd_level() == super::SimdLevel::Avx512 && super::int8_gemm::best_kernel() == super::int8_gemm::Int8Kernel::Amx && super::amx::bf16_available() && simd_conversions()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The parts of 32 lanes (`lo` the first 16, `hi` the next) to `emit(part, packed)`, each
/// part's 32 bf16 in lane order in one vector: one conversion per part, the part back in f32
/// by one permutation per half (each bf16 to the high half of its lane, zeros below), the rest
/// by a subtraction. The same bits as `bf16_parts` lane by lane.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn bf16_parts_32_avx512(mut lo: std::arch::x86_64::__m512, mut hi: std::arch::x86_64::__m512, parts: usize, mut emit: impl FnMut(usize, std::arch::x86_64::__m512i)) {
    use std::arch::x86_64::*;
    let to_lo = _mm512_set_epi32(15 << 16, 14 << 16, 13 << 16, 12 << 16, 11 << 16, 10 << 16, 9 << 16, 8 << 16, 7 << 16, 6 << 16, 5 << 16, 4 << 16, 3 << 16, 2 << 16, 1 << 16, 0);
    let to_hi = _mm512_add_epi32(to_lo, _mm512_set1_epi32(16 << 16));
    const HIGH_HALVES: u32 = 0xAAAA_AAAA;
    for part in 0..parts {
        // The second operand becomes the low half.
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        emit(part, packed);
        if part + 1 < parts {
            lo = _mm512_sub_ps(lo, _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(HIGH_HALVES, to_lo, packed)));
            hi = _mm512_sub_ps(hi, _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(HIGH_HALVES, to_hi, packed)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_conversion_to_bf16_rounds_as_the_portable_one() {
        if !simd_conversions() {
            eprintln!("SKIPPED: no AVX512-BF16 on this CPU");
            return;
        }
        // Ties both ways, denormals (before and after the scale), infinities, NaN, and a length
        // with a partial last vector.
        let mut x: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.7).collect();
        x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::from_bits(1), -f32::from_bits(0x0070_0000), 1e-38, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3e38]);
        for scale in [1.0, 0.18, 1e-3] {
            for parts in [1, SPLIT_PARTS] {
                let plane = x.len() + 5;
                let (mut simd, mut portable) = (vec![7u16; parts * plane], vec![7u16; parts * plane]);
                to_bf16_parts_scaled(true, &x, scale, parts, &mut simd, plane);
                to_bf16_parts_scaled(false, &x, scale, parts, &mut portable, plane);
                assert_eq!(simd, portable, "scale {scale}, {parts} parts");
            }
        }
    }

    #[test]
    fn three_bf16_parts_add_up_to_the_f32() {
        for i in 0..10_000u32 {
            let x = f32::from_bits(0x3000_0000 + i.wrapping_mul(2_654_435_761) % 0x1800_0000) * if i % 2 == 0 { 1.0 } else { -1.0 };
            let mut sum = 0f64;
            bf16_parts(x, SPLIT_PARTS, |_, bits| sum += bf16_value(bits) as f64);
            assert_eq!(sum, x as f64, "{x:e}");
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_and_flushes_denormals() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 x 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6).
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert_eq!(bf16_bits(f32::from_bits(1)), 0);
        assert_eq!(bf16_bits(-f32::from_bits(1)), 0x8000);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        for x in [0.1f32, 3.3, -1e-3, 65504.0, 1e30] {
            assert!((bf16_value(bf16_bits(x)) - x).abs() <= x.abs() / 256.0, "{x}");
        }
    }
}
