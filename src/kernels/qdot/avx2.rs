//! AVX2 dot products (maddubs / madd) for Q8_0, Q4_0, Q4_K and Q6_K, for CPUs without AVX-512;
//! the other block types run the portable code built for AVX2. Results equal the portable twins
//! bit for bit (see the module above).

use std::arch::x86_64::*;

use super::avx512::q4k_scales_mins;
use super::portable::{block_dot_portable, row_dot_portable};
use super::{Lanes, QuantizedActs};
use crate::tensor::dtype::{f16_at, DType};

#[target_feature(enable = "avx2,fma")]
pub unsafe fn portable_built_for_avx2(dtype: DType, row: &[u8], a: &QuantizedActs) -> f32 {
    row_dot_portable(dtype, row, a)
}

/// Eight vectors of 8 partial sums each into one vector of their 8 totals (exact).
#[inline(always)]
unsafe fn reduce_block_sums(v: [__m256i; 8]) -> __m256i {
    let e = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let f = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(_mm256_permute2x128_si256(e, f, 0x20), _mm256_permute2x128_si256(e, f, 0x31))
}

#[inline(always)]
unsafe fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// A legacy type's SIMD step: 8 partial sums of the block at `w` (as unsigned weights, `OFFSET`
/// above the true ones) times the 32 activation values at `x`. (A trait, not a closure: closures
/// are not compiled with the caller's target features.)
trait Block {
    const DTYPE: DType;
    const OFFSET: i32;
    unsafe fn dot(w: *const u8, x: *const i8) -> __m256i;
}

/// The legacy-type driver, 8 blocks per step into lanes 0..8 or 8..16 of the 16; the offset
/// comes off as OFFSET * sum(a), exactly.
#[inline(always)]
unsafe fn legacy_row<K: Block>(row: &[u8], a: &QuantizedActs) -> f32 {
    let size = K::DTYPE.block().1;
    let blocks = row.len() / size;
    let mut acc = [_mm256_setzero_ps(); 2];
    let full = blocks / 16 * 16;
    for u0 in (0..full).step_by(8) {
        let base = row.as_ptr().add(u0 * size);
        let mut v = [_mm256_setzero_si256(); 8];
        for (p, v) in v.iter_mut().enumerate() {
            *v = K::dot(base.add(p * size), a.qs.as_ptr().add(32 * (u0 + p)));
        }
        let act_sums = _mm256_madd_epi16(_mm256_loadu_si256(a.sums.as_ptr().add(2 * u0) as *const _), _mm256_set1_epi16(1));
        let isum = _mm256_sub_epi32(reduce_block_sums(v), _mm256_mullo_epi32(act_sums, _mm256_set1_epi32(K::OFFSET)));
        let mut dw = [0f32; 8];
        for (p, d) in dw.iter_mut().enumerate() {
            *d = f16_at(&row[(u0 + p) * size..], 0);
        }
        let scale = _mm256_mul_ps(_mm256_loadu_ps(dw.as_ptr()), _mm256_loadu_ps(a.d.as_ptr().add(u0)));
        let half = &mut acc[(u0 / 8) % 2];
        *half = _mm256_add_ps(*half, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), scale));
    }
    let mut lanes = Lanes::default();
    _mm256_storeu_ps(lanes.0.as_mut_ptr(), acc[0]);
    _mm256_storeu_ps(lanes.0.as_mut_ptr().add(8), acc[1]);
    for u in full..blocks {
        lanes.add(u, block_dot_portable(K::DTYPE, &row[u * size..(u + 1) * size], a, u));
    }
    lanes.sum()
}

struct Q8_0;

impl Block for Q8_0 {
    const DTYPE: DType = DType::Q8_0;
    const OFFSET: i32 = 0;
    #[inline(always)]
    unsafe fn dot(w: *const u8, x: *const i8) -> __m256i {
        // maddubs wants unsigned x signed: |w| times a with w's sign (llama.cpp's trick).
        let w = _mm256_loadu_si256(w.add(2) as *const _);
        let x = _mm256_loadu_si256(x as *const _);
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

struct Q4_0;

impl Block for Q4_0 {
    const DTYPE: DType = DType::Q4_0;
    const OFFSET: i32 = 8;
    #[inline(always)]
    unsafe fn dot(w: *const u8, x: *const i8) -> __m256i {
        let q = _mm_loadu_si128(w.add(2) as *const _);
        let z = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
        let p = _mm256_maddubs_epi16(z, _mm256_loadu_si256(x as *const _));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0(row: &[u8], a: &QuantizedActs) -> f32 {
    legacy_row::<Q8_0>(row, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0(row: &[u8], a: &QuantizedActs) -> f32 {
    legacy_row::<Q4_0>(row, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k(row: &[u8], a: &QuantizedActs) -> f32 {
    let low = _mm256_set1_epi8(0x0F);
    let mut lanes = Lanes::default();
    for (u, b) in row.chunks_exact(144).enumerate() {
        let sm = q4k_scales_mins(&b[4..16]);
        let x = a.qs.as_ptr().add(256 * u);
        let mut acc = _mm256_setzero_si256();
        for c in 0..4 {
            let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const _);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, low), _mm256_loadu_si256(x.add(64 * c) as *const _));
            let hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low), _mm256_loadu_si256(x.add(64 * c + 32) as *const _));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, _mm256_set1_epi16(sm[2 * c] as i16)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(hi, _mm256_set1_epi16(sm[2 * c + 1] as i16)));
        }
        let sums = std::slice::from_raw_parts(a.sums.as_ptr().add(16 * u), 16);
        let imin: i32 = (0..8).map(|j| sm[8 + j] as i32 * (sums[2 * j] as i32 + sums[2 * j + 1] as i32)).sum();
        let da = a.d[u];
        lanes.add(u, (da * f16_at(b, 0)) * hsum(acc) as f32 - (da * f16_at(b, 2)) * imin as f32);
    }
    lanes.sum()
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k(row: &[u8], a: &QuantizedActs) -> f32 {
    let low = _mm256_set1_epi8(0x0F);
    let mut lanes = Lanes::default();
    for (u, b) in row.chunks_exact(210).enumerate() {
        let sc = &b[192..208];
        let x = a.qs.as_ptr().add(256 * u);
        let mut acc = _mm256_setzero_si256();
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(b.as_ptr().add(64 * n) as *const _);
            let ql1 = _mm256_loadu_si256(b.as_ptr().add(64 * n + 32) as *const _);
            let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * n) as *const _);
            let high = [_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x0C), _mm256_set1_epi8(0x30), _mm256_set1_epi8(-64)];
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_slli_epi16(_mm256_and_si256(qh, high[0]), 4)),
                _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_slli_epi16(_mm256_and_si256(qh, high[1]), 2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), _mm256_and_si256(qh, high[2])),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), _mm256_srli_epi16(_mm256_and_si256(qh, high[3]), 2)),
            ];
            for (i, q) in q.iter().enumerate() {
                let g = 8 * n + 2 * i;
                let s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1] as i8 as i16), _mm_set1_epi16(sc[g] as i8 as i16));
                let p = _mm256_maddubs_epi16(*q, _mm256_loadu_si256(x.add(128 * n + 32 * i) as *const _));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
            }
        }
        let sums = std::slice::from_raw_parts(a.sums.as_ptr().add(16 * u), 16);
        let offset: i32 = sc.iter().zip(sums).map(|(&s, &v)| s as i8 as i32 * v as i32).sum();
        lanes.add(u, (a.d[u] * f16_at(b, 208)) * (hsum(acc) - 32 * offset) as f32);
    }
    lanes.sum()
}
