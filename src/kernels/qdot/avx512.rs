//! AVX-512 VNNI + VBMI dot products (vpdpbusd / vpdpwssd, vpermb) for the types most files hold: Q8_0 and Q4_0
//! (16 blocks per step, their integer sums reduced exactly into one vector), Q4_K and Q6_K (one
//! superblock per step). Results equal the portable twins bit for bit (see the module above).

use std::arch::x86_64::*;

use super::portable::block_dot_portable;
use super::{Lanes, QuantizedActs};
use crate::tensor::dtype::{f16_at, DType};

#[inline(always)]
unsafe fn pair(a: __m512i, b: __m512i, lo: __m512i, hi: __m512i) -> __m512i {
    _mm512_add_epi32(_mm512_permutex2var_epi32(a, lo, b), _mm512_permutex2var_epi32(a, hi, b))
}

/// Sixteen vectors' worth of block sums: `v[p]` holds 8 partial sums of block 2p in lanes 0..8
/// and of block 2p + 1 in lanes 8..16; the result holds block i's total in lane i. Three levels
/// of pairing, each two permutes and an add (integer, so exact).
#[inline(always)]
unsafe fn reduce_block_sums(v: [__m512i; 8]) -> __m512i {
    // Level 1: 4 lanes per block; level 2: 2; level 3: 1.
    let l1 = (_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27), _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31));
    let l2 = (_mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29), _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31));
    let l3 = (_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));
    let t = [pair(v[0], v[1], l1.0, l1.1), pair(v[2], v[3], l1.0, l1.1), pair(v[4], v[5], l1.0, l1.1), pair(v[6], v[7], l1.0, l1.1)];
    let s0 = pair(t[0], t[1], l2.0, l2.1);
    let s1 = pair(t[2], t[3], l2.0, l2.1);
    pair(s0, s1, l3.0, l3.1)
}

/// The 16 f16 scales at the start of 16 consecutive blocks of `stride` bytes, as f32.
#[inline(always)]
unsafe fn block_scales(p: *const u8, stride: i32) -> __m512 {
    let offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride));
    let words = _mm512_i32gather_epi32::<1>(offsets, p as *const _);
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words))
}

/// A legacy type's SIMD step: the dpbusd of the two blocks starting at `w` (as unsigned weights,
/// `OFFSET` above the true ones) with the 64 activation values at `x`. (A trait, not a closure:
/// closures are not compiled with the caller's target features.)
trait BlockPair {
    const DTYPE: DType;
    const OFFSET: i32;
    /// Reads at most `READ` bytes from `w`, or only the pair's own bytes when `near_end`.
    const READ: usize;
    unsafe fn dot(w: *const u8, x: *const i8, near_end: bool) -> __m512i;
}

/// The legacy-type driver, 16 blocks per step; the offset comes off as OFFSET * sum(a), exactly.
#[inline(always)]
unsafe fn legacy_row<K: BlockPair>(row: &[u8], a: &QuantizedActs) -> f32 {
    let size = K::DTYPE.block().1;
    let blocks = row.len() / size;
    let mut acc = _mm512_setzero_ps();
    let full = blocks / 16 * 16;
    for u0 in (0..full).step_by(16) {
        let base = row.as_ptr().add(u0 * size);
        let mut v = [_mm512_setzero_si512(); 8];
        for (p, v) in v.iter_mut().enumerate() {
            let at = (u0 + 2 * p) * size;
            *v = K::dot(row.as_ptr().add(at), a.qs.as_ptr().add(32 * (u0 + 2 * p)), at + K::READ > row.len());
        }
        let unsigned_sums = reduce_block_sums(v);
        let act_sums = _mm512_madd_epi16(_mm512_loadu_si512(a.sums.as_ptr().add(2 * u0) as *const _), _mm512_set1_epi16(1));
        let isum = _mm512_sub_epi32(unsigned_sums, _mm512_mullo_epi32(act_sums, _mm512_set1_epi32(K::OFFSET)));
        let scale = _mm512_mul_ps(block_scales(base, size as i32), _mm512_loadu_ps(a.d.as_ptr().add(u0)));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), scale));
    }
    let mut lanes = Lanes::default();
    _mm512_storeu_ps(lanes.0.as_mut_ptr(), acc);
    for u in full..blocks {
        lanes.add(u, block_dot_portable(K::DTYPE, &row[u * size..(u + 1) * size], a, u));
    }
    lanes.sum()
}

struct Q8_0;

impl BlockPair for Q8_0 {
    const DTYPE: DType = DType::Q8_0;
    const OFFSET: i32 = 128;
    const READ: usize = 68;
    #[inline(always)]
    unsafe fn dot(w: *const u8, x: *const i8, _: bool) -> __m512i {
        // Signed weights made unsigned by +128 (xor of the sign bit).
        let w0 = _mm256_loadu_si256(w.add(2) as *const _);
        let w1 = _mm256_loadu_si256(w.add(34 + 2) as *const _);
        let wu = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), _mm512_set1_epi8(-128));
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, _mm512_loadu_si512(x as *const _))
    }
}

struct Q4_0;

impl BlockPair for Q4_0 {
    const DTYPE: DType = DType::Q4_0;
    const OFFSET: i32 = 8;
    const READ: usize = 66;
    #[inline(always)]
    unsafe fn dot(w: *const u8, x: *const i8, near_end: bool) -> __m512i {
        // One 64-byte load covers both blocks' nibbles (at 2..18 and 20..36); vpermb places each
        // block's 16 bytes twice, the second copy shifted down 4 bits: low nibbles are weights
        // 0..16 of a block, high ones 16..32. Near the row's end the load is masked to the 34
        // bytes used, so it never touches memory past the row (masked loads are slow otherwise).
        let idx = _mm512_set_epi8(
            33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
            5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        );
        let shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        let bytes = if near_end { _mm512_maskz_loadu_epi8((1 << 34) - 1, w.add(2) as *const i8) } else { _mm512_loadu_si512(w.add(2) as *const _) };
        let q = _mm512_permutexvar_epi8(idx, bytes);
        let z = _mm512_and_si512(_mm512_srlv_epi64(q, shift), _mm512_set1_epi8(0x0F));
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), z, _mm512_loadu_si512(x as *const _))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx2,f16c")]
pub unsafe fn q8_0(row: &[u8], a: &QuantizedActs) -> f32 {
    legacy_row::<Q8_0>(row, a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx2,f16c")]
pub unsafe fn q4_0(row: &[u8], a: &QuantizedActs) -> f32 {
    legacy_row::<Q4_0>(row, a)
}

/// Sum of `scales[g] * sums[g]` over a superblock's 16 groups (i16 products, exact in i32).
#[inline(always)]
unsafe fn scaled_group_sums(scales16: __m256i, sums: *const i16) -> i32 {
    let p = _mm256_madd_epi16(scales16, _mm256_loadu_si256(sums as *const _));
    let s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// Q4_K's 8 6-bit scales and 8 6-bit mins, unpacked from their 12 bytes into 8 + 8 bytes
/// (ggml's bit shuffling, checked against `k4_scale_min` by the tests through the results).
#[inline(always)]
pub(super) fn q4k_scales_mins(packed: &[u8]) -> [u8; 16] {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let out = [u0 & M1, (u2 & M2) | (((u0 >> 6) & M3) << 4), u1 & M1, ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4)];
    let mut b = [0u8; 16];
    for (i, w) in out.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    b
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx2,f16c")]
pub unsafe fn q4_k(row: &[u8], a: &QuantizedActs) -> f32 {
    let low = _mm512_set1_epi8(0x0F);
    // i16 lane j of chunk c's products belongs to group 2c (j < 16) or 2c + 1.
    let mut pick = [_mm512_setzero_si512(); 4];
    for (c, p) in pick.iter_mut().enumerate() {
        let g = 2 * c as i16;
        *p = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(g)), _mm256_set1_epi16(g + 1), 1);
    }
    let mut lanes = Lanes::default();
    for (u, b) in row.chunks_exact(144).enumerate() {
        let sm = q4k_scales_mins(&b[4..16]);
        let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(sm.as_ptr() as *const _)));
        let x = a.qs.as_ptr().add(256 * u);
        let mut acc = _mm512_setzero_si512();
        for (c, pick) in pick.iter().enumerate() {
            let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const _);
            let z = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), low);
            let p = _mm512_maddubs_epi16(z, _mm512_loadu_si512(x.add(64 * c) as *const _));
            acc = _mm512_dpwssd_epi32(acc, p, _mm512_permutexvar_epi16(*pick, scales));
        }
        let isum = _mm512_reduce_add_epi32(acc);
        // Mins per group of 32, each covering two of the activation's sums per 16.
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(sm.as_ptr().add(8) as *const _));
        let mins16 = _mm256_set_m128i(_mm_unpackhi_epi16(mins, mins), _mm_unpacklo_epi16(mins, mins));
        let imin = scaled_group_sums(mins16, a.sums.as_ptr().add(16 * u));
        let da = a.d[u];
        lanes.add(u, (da * f16_at(b, 0)) * isum as f32 - (da * f16_at(b, 2)) * imin as f32);
    }
    lanes.sum()
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx2,f16c")]
pub unsafe fn q6_k(row: &[u8], a: &QuantizedActs) -> f32 {
    let low = _mm512_set1_epi8(0x0F);
    let high = _mm512_set1_epi8(0x30);
    // Weights 0..32 of a half take their two high bits from qh bits 0-1, 32..64 from bits 2-3
    // (shift left by 4, 2 into bits 4-5); 64..96 from bits 4-5, 96..128 from 6-7 (right by 0, 2).
    let up = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(2), 1);
    let down = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(0)), _mm256_set1_epi16(2), 1);
    // i16 lane j of a 64-weight product belongs to group j / 8 of its four.
    let mut pick = [_mm512_setzero_si512(); 4];
    for (i, p) in pick.iter_mut().enumerate() {
        let g = 4 * i as i16;
        let lo = _mm256_set_m128i(_mm_set1_epi16(g + 1), _mm_set1_epi16(g));
        *p = _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_set_m128i(_mm_set1_epi16(g + 3), _mm_set1_epi16(g + 2)), 1);
    }
    let mut lanes = Lanes::default();
    for (u, b) in row.chunks_exact(210).enumerate() {
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(192) as *const _));
        let scales = _mm512_castsi256_si512(scales16);
        let x = a.qs.as_ptr().add(256 * u);
        let mut acc = _mm512_setzero_si512();
        for n in 0..2 {
            let l = _mm512_loadu_si512(b.as_ptr().add(64 * n) as *const _);
            let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.as_ptr().add(128 + 32 * n) as *const _));
            let z1 = _mm512_or_si512(_mm512_and_si512(l, low), _mm512_and_si512(_mm512_sllv_epi16(h, up), high));
            let z2 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low), _mm512_and_si512(_mm512_srlv_epi16(h, down), high));
            let p1 = _mm512_maddubs_epi16(z1, _mm512_loadu_si512(x.add(128 * n) as *const _));
            let p2 = _mm512_maddubs_epi16(z2, _mm512_loadu_si512(x.add(128 * n + 64) as *const _));
            acc = _mm512_dpwssd_epi32(acc, p1, _mm512_permutexvar_epi16(pick[2 * n], scales));
            acc = _mm512_dpwssd_epi32(acc, p2, _mm512_permutexvar_epi16(pick[2 * n + 1], scales));
        }
        // The 6-bit values are stored +32: take 32 * scale * sum(a) off per group.
        let isum = _mm512_reduce_add_epi32(acc) - 32 * scaled_group_sums(scales16, a.sums.as_ptr().add(16 * u));
        lanes.add(u, (a.d[u] * f16_at(b, 208)) * isum as f32);
    }
    lanes.sum()
}
