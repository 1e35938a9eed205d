//! int8 prefill attention (`Precision::Int8`): q.k and p.v as integer dot products (AMX tiles
//! where the CPU has them, else `vpdpbusd`, 64 multiply-adds per instruction, four times an f32
//! FMA), the softmax in f32 with a coarse exponential.
//!
//! Quantization (symmetric, round to nearest even, as `kernels::quantize`):
//! - keys per slot (one scale over its head_dim values) after taking out each dimension's mean
//!   over the slots (as SageAttention does; it moves every score of a row by the same amount),
//!   queries per row: a score is (sum_d q8 k8) * q_scale * k_scale, the attention scale and
//!   log2(e) folded into q_scale, so scores are in base 2 (p_j = 2^(s_j - reference));
//! - values per slot, folded into the probabilities: p'_j = p_j * v_scale_j is quantized per row
//!   and key tile to 0..=255 against the tile's largest p'_j, so o += (sum_j p8_j v8_j) * max /
//!   255. In base 2 that is one subtraction per key: with w_j = s_j + log2 v_scale_j (what the
//!   scores epilogue stores) and W the tile's largest w_j, p8_j = round(2^(w_j - W + log2 255)),
//!   and the row's sum of p_j is sum_j 2^(w_j - W + log2 255) / v_scale_j times
//!   2^(W - reference) / 255. Scaling per tile keeps small probabilities (a diffuse row, or a
//!   tile far below the row's maximum) at full resolution.
//!
//! The online softmax's running reference is the row's largest weighted score so far, not its
//! largest score: the softmax is the same for any reference, and this one keeps every term in
//! range (2^(s_j - reference) <= 1 / v_scale_j <= 2^64) while sparing the scores epilogue a
//! second maximum.
//!
//! `vpdpbusd` and `tdpbusd` multiply unsigned by signed bytes: probabilities are unsigned already; queries
//! are offset by +128 and 128 * sum_d k8 is subtracted per key (`k_offset`, which AMX products
//! start from).
//!
//! Layouts per KV head: keys `[head_dim / 4][pitch][4]` (16 slots x 4 dimensions are one 512-bit
//! load; rows `pitch` slots apart, not a power of two, so a tile's rows spread over the L1 sets),
//! values `[slots / 4][head_dim][4]` (16 dimensions x 4 slots are one load); both are AMX tile
//! operands in place, rows pitch x 4 and head_dim x 4 bytes apart. The portable twin
//! computes the same integers and the same float expressions in the same order, so both give the
//! same bits.

use rayon::prelude::*;

use super::{AttnShape, Task, AMX_ROWS, KEY_TILE, LANES, ROWS};
use crate::kernels::aligned::AlignedVec;
use crate::kernels::ops::{max_abs, max_of_simd, max_select, softcap, sum};
use crate::kernels::quantize::{quantize_row_offset, quantize_value, QMAX};

/// The int8 copy of one layer's cache, kept between attention calls so that each call
/// quantizes only the slots written since the one before (the cache says which:
/// `forget_from`). The keys' mean, which quantization takes out, is fixed when the copy starts
/// from slot 0: re-quantizing the whole cache for each chunk was O(length^2) and 2% of a
/// 2,048-token prefill.
#[derive(Default)]
pub struct Int8Kv {
    kv: Option<QuantizedKv>,
    /// Slots 0..valid are quantized from the cache's current contents.
    valid: usize,
}

impl Int8Kv {
    /// Slots from `slot` on were (or will be) rewritten: they are quantized again when next seen
    /// (from 0: the whole copy, with a new key mean).
    pub fn forget_from(&mut self, slot: usize) {
        self.valid = self.valid.min(slot);
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |kv| kv.heads.iter().map(HeadStore::bytes).sum())
    }

    /// Quantizes slots valid..n of every KV head (a new copy when the cache's layout changed)
    /// and returns the copy of slots 0..n.
    pub(super) fn update(&mut self, k_cache: &[f32], v_cache: &[f32], s: AttnShape, n: usize) -> &QuantizedKv {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let same_layout = |kv: &QuantizedKv| kv.stride == stride && kv.base == s.kv_base && kv.head_dim == hd && kv.heads.len() == s.n_kv_heads && kv.centered == s.softcap.is_none();
        if !self.kv.as_ref().is_some_and(same_layout) {
            self.kv = Some(QuantizedKv::empty(s));
            self.valid = 0;
        }
        let from = self.valid.min(n);
        let kv = self.kv.as_mut().expect("made above");
        kv.heads.par_iter_mut().enumerate().for_each(|(h, store)| {
            let (kt, v) = (&k_cache[h * hd * stride..(h + 1) * hd * stride], &v_cache[h * hd * stride..(h + 1) * hd * stride]);
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::simd_level() == crate::kernels::SimdLevel::Avx512 {
                // SAFETY: the CPU has avx512f and avx512bw (SimdLevel::Avx512).
                return unsafe { quantize_head_avx512(kt, v, s, from, n, store) };
            }
            quantize_head(kt, v, s, from, n, store)
        });
        self.valid = n;
        kv
    }
}

/// The quantized slots of every KV head, in the layout of a cache of `stride` slots per head
/// with position `base` in slot 0.
pub(super) struct QuantizedKv {
    heads: Vec<HeadStore>,
    groups: usize,
    pitch: usize,
    head_dim: usize,
    stride: usize,
    base: usize,
    /// Whether the keys' mean is taken out (not with a softcap, which is not shift-invariant).
    centered: bool,
}

/// Keys and values start on a cache line (AMX tile rows must not straddle two); values hold 64
/// slots more than the cache, as AMX reads whole steps of 64 keys.
struct HeadStore {
    /// Each key dimension's mean over the slots there were when the copy started.
    mean: Vec<f32>,
    k: AlignedVec<i8>,
    /// Per slot (pitch of them, 0 past the cache): -128 x the sum of its quantized key, which
    /// takes the queries' +128 offset out of a score (the start of AMX's products).
    k_offset: AlignedVec<i32>,
    k_scale: Vec<f32>,
    v: AlignedVec<i8>,
    /// log2 of each slot's value scale (0 past the cache), added to its scores: the weighted
    /// scores w_j whose largest sets a tile's probability scale.
    v_log2: Vec<f32>,
    /// 1 / each slot's value scale (0 past the cache): takes it back out of the weighted
    /// probabilities for the row's sum.
    v_inv: Vec<f32>,
}

impl HeadStore {
    fn bytes(&self) -> usize {
        self.k.len() + self.v.len() + 4 * (self.mean.len() + self.k_offset.len() + self.k_scale.len() + self.v_log2.len() + self.v_inv.len())
    }
}

/// One KV head's quantized keys and values.
#[derive(Clone, Copy)]
pub(super) struct HeadKv<'a> {
    k: &'a [i8],
    k_offset: &'a [i32],
    k_scale: &'a [f32],
    v: &'a [i8],
    v_log2: &'a [f32],
    v_inv: &'a [f32],
    groups: usize,
    pitch: usize,
}

impl QuantizedKv {
    /// No slots yet, room for the cache's.
    fn empty(s: AttnShape) -> Self {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let (groups, pitch) = (hd.div_ceil(4), stride + LANES);
        let heads = (0..s.n_kv_heads)
            .map(|_| HeadStore {
                mean: vec![0.0; hd],
                k: AlignedVec::filled(0, groups * pitch * 4),
                k_offset: AlignedVec::filled(0, pitch),
                k_scale: vec![0.0; stride],
                v: AlignedVec::filled(0, (stride + AMX_STEP_KEYS) * hd),
                v_log2: vec![0.0; stride],
                v_inv: vec![0.0; stride],
            })
            .collect();
        QuantizedKv { heads, groups, pitch, head_dim: hd, stride, base: s.kv_base, centered: s.softcap.is_none() }
    }

    pub(super) fn head(&self, h: usize) -> HeadKv<'_> {
        let st = &self.heads[h];
        debug_assert!(st.v.len() % (4 * self.head_dim.max(1)) == 0);
        HeadKv { k: &st.k, k_offset: &st.k_offset, k_scale: &st.k_scale, v: &st.v, v_log2: &st.v_log2, v_inv: &st.v_inv, groups: self.groups, pitch: self.pitch }
    }
}

/// Slots from..n of one KV head's keys and values quantized into `store` (`kt` [head_dim]
/// [kv_stride], `v` [kv_stride][head_dim]); from 0, the keys' mean is taken first.
#[inline(always)]
fn quantize_head(kt: &[f32], v: &[f32], s: AttnShape, from: usize, n: usize, store: &mut HeadStore) {
    let (hd, stride) = (s.head_dim, s.kv_stride);
    let pitch = stride + LANES;
    // Keys: dimension d of slot j at kt[d * stride + j]; slots are the inner loop.
    // Each dimension's mean over the slots is taken out first: q.(k - mean) differs
    // from q.k by the same amount for every key of a row, which the softmax ignores,
    // and keys share large offsets in a few dimensions that would otherwise set
    // every slot's scale. A softcap is not shift-invariant, so it keeps them.
    if from == 0 {
        for (d, m) in store.mean.iter_mut().enumerate() {
            *m = if s.softcap.is_some() || n == 0 { 0.0 } else { sum(&kt[d * stride..d * stride + n]) / n as f32 };
        }
    }
    let mean = &store.mean;
    let mut k_max = vec![0f32; n - from];
    for d in 0..hd {
        for (m, &x) in k_max.iter_mut().zip(&kt[d * stride + from..d * stride + n]) {
            *m = m.max((x - mean[d]).abs());
        }
    }
    let k_inv: Vec<f32> = k_max.iter().map(|&m| inverse_scale(m)).collect();
    for (sc, &m) in store.k_scale[from..n].iter_mut().zip(&k_max) {
        *sc = m / QMAX;
    }
    store.k_offset[from..n].fill(0);
    for d in 0..hd {
        let row = &mut store.k[(d / 4) * pitch * 4..(d / 4 + 1) * pitch * 4];
        for (j, (&x, &inv)) in (from..n).zip(kt[d * stride + from..d * stride + n].iter().zip(&k_inv)) {
            let q = quantize_value(x - mean[d], inv);
            row[j * 4 + d % 4] = q;
            store.k_offset[j] -= 128 * q as i32;
        }
    }
    // Values: slot j's dimensions contiguous at v[j * hd..]. A scale is at least V_SCALE_MIN
    // (an all-zero or non-finite slot gets it, with zeros), so that 1 / scale stays finite.
    for (j, vj) in (from..n).zip(v[from * hd..n * hd].chunks_exact(hd.max(1))) {
        let m = max_abs(vj);
        let (scale, inv) = if m.is_finite() && m / QMAX >= V_SCALE_MIN { (m / QMAX, QMAX / m) } else { (V_SCALE_MIN, if m.is_finite() { 1.0 / V_SCALE_MIN } else { 0.0 }) };
        store.v_log2[j] = scale.log2();
        store.v_inv[j] = 1.0 / scale;
        let group = &mut store.v[(j / 4) * hd * 4..(j / 4 + 1) * hd * 4];
        for (dd, &x) in vj.iter().enumerate() {
            group[dd * 4 + j % 4] = quantize_value(x, inv);
        }
    }
}

/// The smallest value scale (2^-64): a tile's weighted probabilities are at most 255, so the
/// row sum's terms p'_j / v_scale_j stay below 2^72.
const V_SCALE_MIN: f32 = f32::from_bits((127 - 64) << 23);

/// `quantize_head` compiled for AVX-512: the same scalar code, which the compiler vectorizes
/// 16 wide instead of 4 (it was 5% of a 2,048-token prefill, every chunk quantizing the cache).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_head_avx512(kt: &[f32], v: &[f32], s: AttnShape, from: usize, n: usize, store: &mut HeadStore) {
    quantize_head(kt, v, s, from, n, store)
}

/// 127 / max_abs, or 0 for an all-zero (or non-finite) vector, which then quantizes to zeros.
fn inverse_scale(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        QMAX / max_abs
    } else {
        0.0
    }
}

/// Per-thread working memory of the int8 path. Rows are allocated in whole AMX blocks of 32
/// (the rows past the task's are zero queries and probabilities), from a cache line on.
#[derive(Default)]
pub(super) struct Buffers {
    /// Query rows as unsigned bytes (int8 + 128), [rows][groups * 4].
    q: AlignedVec<u8>,
    /// Per row: its int8 scale times the attention scale.
    q_scale: Vec<f32>,
    /// Probabilities times value scales, quantized per row over the tile: [rows][KEY_TILE].
    p: AlignedVec<u8>,
    /// Per row: what one step of `p` is worth.
    p_scale: Vec<f32>,
    /// A block of rows' q.k sums over the key tile from AMX, [AMX_ROWS][C_PITCH] int32, which
    /// the epilogue overwrites in place with the weighted scores (f32): one buffer of the
    /// block's in L1 rather than two.
    c: AlignedVec<f32>,
}

impl Buffers {
    /// Readies the buffers for a task of `rows` rows and quantizes its queries ([rows][hd]
    /// floats), one scale per row.
    pub(super) fn start_task(&mut self, q: &[f32], rows: usize, hd: usize, scale: f32) {
        let (width, blocks) = (hd.div_ceil(4) * 4, rows.next_multiple_of(AMX_ROWS));
        self.q.refill(blocks * width, 128);
        self.p.refill(blocks * KEY_TILE, 0);
        self.p_scale.clear();
        self.p_scale.resize(rows, 0.0);
        if self.c.len() != AMX_ROWS * C_PITCH {
            self.c = AlignedVec::filled(0.0, AMX_ROWS * C_PITCH);
        }
        self.q_scale.clear();
        for (r, row) in q[..rows * hd].chunks_exact(hd).enumerate() {
            let m = max_abs(row);
            let inv = inverse_scale(m);
            self.q_scale.push(m / QMAX * (scale * std::f32::consts::LOG2_E));
            // The same rounding as `quantize_value`, vectorized where the CPU allows.
            quantize_row_offset(row, inv, 128, &mut self.q[r * width..r * width + hd]);
        }
    }
}

/// out_j = round(2^(w_j - c)) in 0..=255 (w_j - c is at most log2 255, give or take the
/// exponential's error: rounding saturates); adds sum_j 2^(w_j - c) * inv_j, summed in 16 lanes
/// (the last partial chunk's lanes like a whole one's) and times `scale`, to `sum`'s lanes.
#[inline(always)]
fn exp_quantize<const SIMD: bool>(w: &[f32], c: f32, inv: &[f32], out: &mut [u8], scale: f32, sum: &mut [f32; LANES]) {
    assert!(inv.len() == w.len() && out.len() == w.len());
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD is only set on the VNNI and AMX paths, whose CPUs have avx512f and bw.
        unsafe { exp_quantize_avx512(w, c, inv, out, scale, sum) };
        return;
    }
    let mut lane_sum = [0f32; LANES];
    for ((x, i), o) in w.chunks(LANES).zip(inv.chunks(LANES)).zip(out.chunks_mut(LANES)) {
        for l in 0..x.len() {
            let p = exp2_coarse(x[l] - c);
            lane_sum[l] = p.mul_add(i[l], lane_sum[l]);
            o[l] = round_unsigned(p);
        }
    }
    for (s, l) in sum.iter_mut().zip(lane_sum) {
        *s += l * scale;
    }
}

/// `exp_quantize` in registers: the same operations in the same order with the lane sums in a
/// register (the compiler keeps the portable loop's array on the stack, and a store feeding the
/// next load stalls every iteration).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn exp_quantize_avx512(w: &[f32], c: f32, inv: &[f32], out: &mut [u8], scale: f32, lane_sums: &mut [f32; LANES]) {
    use std::arch::x86_64::*;
    debug_assert!(inv.len() == w.len() && out.len() == w.len());
    let vc = _mm512_set1_ps(c);
    let mut sum = _mm512_setzero_ps();
    // The rounded 16 values from i on (the lanes of `mask`; the others add nothing), their
    // weighted exponentials added to `sum` in chunk order.
    let mut chunk = |i: usize, mask: u16| {
        let p = exp2_coarse_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, w.as_ptr().add(i)), vc));
        sum = _mm512_mask3_fmadd_ps(p, _mm512_maskz_loadu_ps(mask, inv.as_ptr().add(i)), sum, mask);
        // round_unsigned(p): p is never negative, and a value past 255 saturates in the
        // narrowing; rounded to nearest even (vcvtps2dq in the default rounding mode, which
        // nothing here changes).
        _mm512_cvtps_epi32(p)
    };
    // 64 at a time, narrowed by two saturating packs (which interleave the four chunks per
    // 128-bit lane, put back in order by one permute) and stored whole: a narrowing store per
    // 16 (vpmovusdb to memory) held the loop at its throughput.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let whole = w.len() / 64 * 64;
    for i in (0..whole).step_by(64) {
        let (q0, q1, q2, q3) = (chunk(i, u16::MAX), chunk(i + 16, u16::MAX), chunk(i + 32, u16::MAX), chunk(i + 48, u16::MAX));
        let bytes = _mm512_packus_epi16(_mm512_packus_epi32(q0, q1), _mm512_packus_epi32(q2, q3));
        _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, _mm512_permutexvar_epi32(order, bytes));
    }
    for i in (whole..w.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(w.len() - i);
        _mm512_mask_cvtusepi32_storeu_epi8(out.as_mut_ptr().add(i) as *mut i8, mask, chunk(i, mask));
    }
    let to = lane_sums.as_mut_ptr();
    _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), _mm512_mul_ps(sum, _mm512_set1_ps(scale))));
}

const EXP2_FLOOR: f32 = -126.0;
/// log2 255: the tile's largest weighted score quantizes to 255.
const LOG2_255: f32 = 7.994_353_4;
const EXP2_ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to a whole number
/// 2^f on |f| <= 1/2, fitted to the relative error: c0 + f (c1 + f (c2 + f c3)), each step one
/// fused multiply-add.
const EXP2_CUBIC: [f32; 4] = [0.999_928_95, 0.693_276_2, 0.242_604_05, 0.055_088_684];

/// 2^f on |f| <= 1/2 to f32's precision: e^(f ln 2)'s Taylor series to degree 7 (it leaves
/// out under 1e-8), for f32-accurate attention on bf16 tiles.
const EXP2_DEGREE7: [f32; 8] = [1.0, 0.693_147_2, 0.240_226_5, 0.055_504_11, 0.009_618_129, 0.001_333_355_8, 0.000_154_035_3, 0.000_015_252_734];

/// 2^y for y <= 0 within 8e-5 (relative): 2^n exactly from the exponent bits, 2^f on
/// |f| <= 1/2 by a cubic fitted to the relative error. Below 2^-126 it flushes to 2^-126 times
/// the cubic, which is nothing next to the row's maximum of 1. Fused multiply-adds (`mul_add`,
/// exactly rounded on every target) so the portable build gives the same bits as the vectorized
/// one, in three instructions instead of six.
#[inline(always)]
pub(super) fn exp2_coarse(y: f32) -> f32 {
    exp2_poly(y, EXP2_CUBIC)
}

/// `exp2_coarse` to f32's precision (within 3e-7), by a polynomial of degree 7.
#[inline(always)]
pub(super) fn exp2_fine(y: f32) -> f32 {
    exp2_poly(y, EXP2_DEGREE7)
}

/// 2^n times the polynomial `c` (lowest power first) of f, for y = n + f.
#[inline(always)]
fn exp2_poly<const N: usize>(y: f32, c: [f32; N]) -> f32 {
    let y = max_select(y, EXP2_FLOOR);
    let t = y + EXP2_ROUND;
    let f = y - (t - EXP2_ROUND);
    let p = c[..N - 1].iter().rev().fold(c[N - 1], |p, &k| p.mul_add(f, k));
    // t's low bits hold n (two's complement): 2^n has the exponent field n + 127.
    p * f32::from_bits(t.to_bits().wrapping_sub(EXP2_ROUND.to_bits() - 127) << 23)
}

/// `exp2_coarse` on 16 lanes, the same operations (so the same bits).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp2_coarse_avx512(y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    exp2_poly_avx512(y, EXP2_CUBIC)
}

/// `exp2_fine` on 16 lanes, the same operations (so the same bits).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp2_fine_avx512(y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    exp2_poly_avx512(y, EXP2_DEGREE7)
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp2_poly_avx512<const N: usize>(y: std::arch::x86_64::__m512, c: [f32; N]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // _mm512_max_ps(a, b) is a > b ? a : b, as max_select.
    let y = _mm512_max_ps(y, _mm512_set1_ps(EXP2_FLOOR));
    // n = y rounded to nearest even (what adding and taking away EXP2_ROUND gives), and
    // poly * 2^n by vscalefps: the same exactly rounded product as multiplying by 2^n's bits.
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
    let f = _mm512_sub_ps(y, n);
    let poly = c[..N - 1].iter().rev().fold(_mm512_set1_ps(c[N - 1]), |p, &k| _mm512_fmadd_ps(p, f, _mm512_set1_ps(k)));
    _mm512_scalef_ps(poly, n)
}

/// x (a weighted probability: never negative) rounded to nearest even, at most 255.
#[inline(always)]
fn round_unsigned(x: f32) -> u8 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23, as in kernels::quantize
    let y = x.clamp(0.0, 255.0);
    (y + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as u8
}

impl Task<'_> {
    /// `tile_scores` in int8: the same rows and blocks, scores into b.p.
    #[inline(always)]
    pub(super) fn tile_scores_i8<const VNNI: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, j0: usize, j1: usize) {
        let width = kv.groups * 4;
        let (q, q_scale, p) = (&b.int8.q, &b.int8.q_scale, &mut b.p);
        self.for_score_blocks(rows, j0, j1, |r, take, n, at| {
            let (qs, scales, out) = (&q[r * width..(r + take) * width], &q_scale[r..r + take], &mut p[r * KEY_TILE + at..]);
            let j = j0 + at;
            assert!(j + n * LANES <= kv.k_scale.len() && out.len() >= (take - 1) * KEY_TILE + n * LANES);
            #[cfg(target_arch = "x86_64")]
            if VNNI {
                // SAFETY: VNNI is only set when the CPU has avx512vnni and avx512bw; the assert
                // bounds the key slots and outputs, `q` holds `take` rows of `width` bytes, and
                // the key rows hold `pitch` >= kv_stride slots.
                unsafe {
                    match (take, n) {
                        (ROWS, 4) => scores_vnni::<ROWS, 4>(qs, scales, kv, j, out),
                        (ROWS, _) => scores_vnni::<ROWS, 1>(qs, scales, kv, j, out),
                        (_, 4) => scores_vnni::<1, 4>(qs, scales, kv, j, out),
                        _ => scores_vnni::<1, 1>(qs, scales, kv, j, out),
                    }
                }
                return;
            }
            scores_portable(take, n * LANES, qs, scales, kv, j, out);
        });
    }

    /// `tile_softmax` for the int8 path: each row's probabilities times the value scales,
    /// quantized over the tile into b.int8.p (0 for keys the row does not see), in one pass.
    /// The exponential is `exp2_coarse`: the probabilities keep 8 bits, so 1e-4 is exact enough,
    /// and it costs half of `exp_fast`. The quantization scale, the row's largest weighted score,
    /// comes before any exponential (from the AMX epilogue, `maxima`, one per row of `rows`,
    /// which stored the weighted scores already).
    #[inline(always)]
    pub(super) fn tile_softmax_i8<const VNNI: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: std::ops::Range<usize>, j0: usize, j1: usize, maxima: Option<&[f32]>) {
        let width = (j1 - j0).next_multiple_of(LANES);
        let b8 = &mut b.int8;
        for r in rows.clone() {
            let dst = &mut b8.p[r * KEY_TILE..r * KEY_TILE + width];
            let (a, e) = self.seen_in(r, j0, j1);
            if a >= e {
                dst.fill(0);
                continue;
            }
            let (weighted, weighted_max) = match maxima {
                // AMX's epilogue left the weighted scores in place of its sums.
                Some(m) => {
                    let at = (r - rows.start) * C_PITCH;
                    (&b8.c[at + a - j0..at + e - j0], m[r - rows.start])
                }
                None => {
                    let weighted = &mut b.p[r * KEY_TILE + a - j0..r * KEY_TILE + e - j0];
                    if let Some(cap) = self.s.softcap {
                        // cap tanh(s / cap) in base 2: the cap converted with the scores.
                        softcap(weighted, cap * std::f32::consts::LOG2_E);
                    }
                    weighted.iter_mut().zip(&kv.v_log2[a..e]).for_each(|(x, l)| *x += l);
                    let max = max_of_simd::<VNNI>(weighted);
                    (&*weighted, max)
                }
            };
            // The reference: see the module's notes. Its rescaling factor needs no more
            // precision than the probabilities (it multiplies the sum and the output alike).
            let max = self.raise_max(r, weighted_max, exp2_coarse, &mut b.max[r], &mut b.sum_lanes[r], &mut b.o);
            // One step of p8 is worth the largest p_j v_scale_j (to exp2_coarse's 1e-4) / 255.
            let p_scale = exp2_coarse(weighted_max - max) * (1.0 / 255.0);
            b8.p_scale[r] = p_scale;
            // Most rows see the whole tile: a memset call per empty fill cost more than the
            // row's test.
            if a > j0 {
                dst[..a - j0].fill(0);
            }
            if e - j0 < width {
                dst[e - j0..].fill(0);
            }
            exp_quantize::<VNNI>(weighted, weighted_max - LOG2_255, &kv.v_inv[a..e], &mut dst[a - j0..e - j0], p_scale, &mut b.sum_lanes[r]);
        }
        // AMX reads whole steps of 64 keys: the rest of the last one holds no probability.
        let step_end = width.next_multiple_of(AMX_STEP_KEYS);
        if step_end > width {
            for r in rows {
                b8.p[r * KEY_TILE + width..r * KEY_TILE + step_end].fill(0);
            }
        }
    }

    /// `tile_values` in int8: integer products of each row's quantized probabilities (from
    /// `tile_softmax_i8`) with the values, added to b.o.
    #[inline(always)]
    pub(super) fn tile_values_i8<const VNNI: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, j0: usize, j1: usize) {
        let hd = self.s.head_dim;
        let b8 = &mut b.int8;
        #[cfg(target_arch = "x86_64")]
        let dim_blocks = if VNNI && hd % LANES == 0 { hd / LANES } else { 0 };
        let mut r = 0;
        while r < rows {
            let take = if r + ROWS <= rows { ROWS } else { 1 };
            let (lo, count) = self.blocks_seen(r, take, j0, j1);
            if count > 0 {
                // Key groups of 4 slots, relative to j0 (a multiple of LANES).
                let (g0, g1) = ((lo - j0) / 4, (lo - j0 + count * LANES) / 4);
                let (p, p_scale, o) = (&b8.p[r * KEY_TILE..], &b8.p_scale[r..r + take], &mut b.o[r * hd..(r + take) * hd]);
                let v = &kv.v[(j0 / 4) * hd * 4..];
                assert!(g1 * hd * 4 <= v.len() && p.len() >= (take - 1) * KEY_TILE + g1 * 4);
                #[cfg(target_arch = "x86_64")]
                if dim_blocks > 0 {
                    let mut db = 0;
                    while db < dim_blocks {
                        let d = if db + 4 <= dim_blocks { 4 } else { 1 };
                        // SAFETY: as in tile_scores_i8; the assert bounds the key groups read.
                        unsafe {
                            match (take, d) {
                                (ROWS, 4) => values_vnni::<ROWS, 4>(p, p_scale, v, hd, g0, g1, db, o),
                                (ROWS, _) => values_vnni::<ROWS, 1>(p, p_scale, v, hd, g0, g1, db, o),
                                (_, 4) => values_vnni::<1, 4>(p, p_scale, v, hd, g0, g1, db, o),
                                _ => values_vnni::<1, 1>(p, p_scale, v, hd, g0, g1, db, o),
                            }
                        }
                        db += d;
                    }
                    r += take;
                    continue;
                }
                values_portable(take, p, p_scale, v, hd, g0, g1, o);
            }
            r += take;
        }
    }
}

/// Keys per AMX step in p.v (64 bytes of a probability row).
const AMX_STEP_KEYS: usize = 64;
/// int32 per row of `Buffers::c`: a tile's keys, plus the 16 a last 32-key product may add.
const C_PITCH: usize = KEY_TILE + 32;

/// Whether AMX can multiply this head size: q.k steps over whole 64-byte query rows.
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_fits(head_dim: usize) -> bool {
    head_dim > 0 && head_dim % 64 == 0
}

#[cfg(target_arch = "x86_64")]
use crate::kernels::amx::Start;

#[cfg(target_arch = "x86_64")]
impl Task<'_> {
    /// The int8 path's three steps on one key tile with AMX, 32 rows at a time (one block's
    /// scores, 32 x 256 floats, fit L1, where all of a task's rows do not; measured the same
    /// speed as taking every row through each step in turn).
    ///
    /// Safety: AMX is available, head_dim fits it (`amx_fits`) and `start_task` readied `b`.
    #[inline(always)]
    pub(super) unsafe fn tile_amx<const VNNI: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, j0: usize, j1: usize) {
        for rb in (0..rows).step_by(AMX_ROWS) {
            let take = AMX_ROWS.min(rows - rb);
            let maxima = self.tile_scores_amx(kv, b, rb, take, j0, j1);
            self.tile_softmax_i8::<VNNI>(kv, b, rb..rb + take, j0, j1, Some(&maxima[..take]));
            self.tile_values_amx(kv, b, rows, rb, take, j0, j1);
        }
    }

    /// `tile_scores_i8` on AMX tiles: 32 rows x 32 keys per product, the keys read in place
    /// (their `[head_dim / 4][pitch][4]` layout is a tile's B operand at a row stride of pitch
    /// x 4 bytes). The integer sums equal the VNNI kernel's and the same float expressions follow,
    /// so the scores are the same bits. Returns each row's largest weighted score over the keys it sees,
    /// taken while the scores are in registers (no softcap here: `causal_attention_in` keeps
    /// softcapped models off AMX).
    ///
    /// Safety: AMX is available, head_dim fits it (`amx_fits`) and `start_task` readied `b`.
    #[inline(always)]
    unsafe fn tile_scores_amx(&self, kv: &HeadKv, b: &mut super::Buffers, rb: usize, take: usize, j0: usize, j1: usize) -> [f32; AMX_ROWS] {
        debug_assert!(self.s.softcap.is_none());
        let width = kv.groups * 4;
        let b8 = &mut b.int8;
        let (lo, count) = self.blocks_seen(rb, take, j0, j1);
        let hi = lo + count * LANES;
        // Keys j..j + 32 of every group row: j + 32 <= kv_stride + 16 = pitch.
        assert!(hi <= kv.pitch - 16 && hi - j0 <= KEY_TILE && b8.q.len() >= (rb + AMX_ROWS) * width && b8.c.len() >= AMX_ROWS * C_PITCH);
        for j in (lo..hi).step_by(32) {
            crate::kernels::amx::tile_32x32(b8.q[rb * width..].as_ptr(), width, kv.k[j * 4..].as_ptr(), kv.pitch * 4, width / 64, b8.c.as_mut_ptr().add(j - j0) as *mut i32, C_PITCH, Start::Bias(kv.k_offset[j..j + 32].as_ptr()));
        }
        let keys = ScoreKeys { k_scale: &kv.k_scale[j0..], v_log2: &kv.v_log2[j0..] };
        std::array::from_fn(|i| {
            let (a, e) = if i < take { self.seen_in(rb + i, j0, j1) } else { (0, 0) };
            if a >= e {
                return f32::NEG_INFINITY;
            }
            let r = rb + i;
            scores_from_amx(&mut b8.c[i * C_PITCH..(i + 1) * C_PITCH], b8.q_scale[r], keys, a - j0, e - j0)
        })
    }

    /// `tile_values_i8` on AMX tiles: 32 rows x 32 dimensions per product over the tile's keys
    /// in steps of 64 (the values' `[slots / 4][head_dim][4]` layout is a B operand at a row
    /// stride of head_dim x 4 bytes). Row r's sum is added to its output when its group of ROWS
    /// rows sees the tile, as there.
    ///
    /// Safety: as `tile_scores_amx`.
    #[inline(always)]
    unsafe fn tile_values_amx(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, rb: usize, take: usize, j0: usize, j1: usize) {
        let hd = self.s.head_dim;
        let b8 = &mut b.int8;
        {
            let (lo, count) = self.blocks_seen(rb, take, j0, j1);
            if count == 0 {
                return;
            }
            // Rows as tile_values_i8 groups them: ROWS at a time, single rows at the end.
            let adds: [bool; AMX_ROWS] = std::array::from_fn(|i| {
                let r = rb + i;
                let (g, n) = if r < rows / ROWS * ROWS { (r / ROWS * ROWS, ROWS) } else { (r, 1) };
                i < take && self.blocks_seen(g, n, j0, j1).1 > 0
            });
            let (k_lo, k_hi) = ((lo - j0) / AMX_STEP_KEYS * AMX_STEP_KEYS, (lo - j0 + count * LANES).next_multiple_of(AMX_STEP_KEYS));
            // Values of slots j0 + k_lo..j0 + k_hi (<= kv_stride + 48, within the 64 extra).
            let v_at = (j0 + k_lo) * hd;
            assert!(k_hi <= KEY_TILE && v_at + (k_hi - k_lo) * hd <= kv.v.len() && b8.p.len() >= (rb + AMX_ROWS) * KEY_TILE);
            for d in (0..hd).step_by(32) {
                crate::kernels::amx::tile_32x32(b8.p[rb * KEY_TILE + k_lo..].as_ptr(), KEY_TILE, kv.v[v_at + d * 4..].as_ptr(), hd * 4, (k_hi - k_lo) / AMX_STEP_KEYS, b8.c.as_mut_ptr() as *mut i32, 32, Start::Zero);
                values_from_amx(&b8.c, &adds, &b8.p_scale[rb..rb + take], &mut b.o[rb * hd + d..], hd);
            }
        }
    }
}

/// Per-key data of a tile, from its first slot on.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct ScoreKeys<'a> {
    k_scale: &'a [f32],
    v_log2: &'a [f32],
}

/// One row's scores over the tile slots it sees (a..e, from the tile's start) from its AMX
/// sums in `c` (int32 bits, which started from the key offsets): both scales applied as in
/// `scores_vnni`, then weighted (+ log2 v_scale) as `tile_softmax_i8` weights the other paths'
/// scores, written over the sums in place (the blocks of 16 that hold a..e); returns the
/// largest over a..e, taken while the scores are in registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_from_amx(c: &mut [f32], q_scale: f32, keys: ScoreKeys, a: usize, e: usize) -> f32 {
    use std::arch::x86_64::*;
    let end = e.next_multiple_of(LANES);
    assert!(a < e && end <= c.len() && end <= keys.k_scale.len() && end <= keys.v_log2.len());
    let qs = _mm512_set1_ps(q_scale);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    // Weighted scores of slots col..col + 16 into `out`; the lanes in `mask` (those within
    // a..e) join the maximum.
    let mut block = |col: usize, mask: u16| {
        let at = c.as_mut_ptr().add(col);
        let x = _mm512_cvtepi32_ps(_mm512_loadu_si512(at as *const __m512i));
        let score = _mm512_mul_ps(_mm512_mul_ps(x, qs), _mm512_loadu_ps(keys.k_scale.as_ptr().add(col)));
        let weighted = _mm512_add_ps(score, _mm512_loadu_ps(keys.v_log2.as_ptr().add(col)));
        _mm512_storeu_ps(at, weighted);
        max = _mm512_mask_max_ps(max, mask, weighted, max);
    };
    let lanes_within = |col: usize| {
        let (from, to) = (a.saturating_sub(col).min(LANES), (e - col).min(LANES));
        ((1u32 << to) - (1u32 << from)) as u16
    };
    // Whole blocks inside a..e take every lane; only the first and last may be partial.
    let (first, whole_from, whole_to) = (a / LANES * LANES, a.next_multiple_of(LANES), e / LANES * LANES);
    if whole_from > whole_to {
        block(first, lanes_within(first));
    } else {
        if first < whole_from {
            block(first, lanes_within(first));
        }
        for col in (whole_from..whole_to).step_by(LANES) {
            block(col, u16::MAX);
        }
        if whole_to < end {
            block(whole_to, lanes_within(whole_to));
        }
    }
    _mm512_reduce_max_ps(max)
}

/// o[i][0..32] += c[i] * p_scale[i] for the rows `adds` marks (`c` int32 bits, `o` rows
/// head_dim apart).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values_from_amx(c: &[f32], adds: &[bool; AMX_ROWS], p_scale: &[f32], o: &mut [f32], hd: usize) {
    use std::arch::x86_64::*;
    assert!(c.len() >= AMX_ROWS * 32);
    for (i, &scale) in p_scale.iter().enumerate() {
        if !adds[i] {
            continue;
        }
        assert!(o.len() >= i * hd + 32);
        let scale = _mm512_set1_ps(scale);
        for h in 0..2 {
            let at = o.as_mut_ptr().add(i * hd + h * LANES);
            let x = _mm512_cvtepi32_ps(_mm512_load_si512(c.as_ptr().add(i * 32 + h * LANES) as *const __m512i));
            _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_mul_ps(x, scale)));
        }
    }
}

/// Scores of `rows` query rows for `keys` slots from `j` on: the integer dot products, minus the
/// query offset, times the row's and the key's scale (in that order, as the SIMD kernel).
fn scores_portable(rows: usize, keys: usize, q: &[u8], q_scale: &[f32], kv: &HeadKv, j: usize, out: &mut [f32]) {
    let width = kv.groups * 4;
    for i in 0..rows {
        for jj in j..j + keys {
            let mut acc = 0i32;
            for g in 0..kv.groups {
                for c in 0..4 {
                    acc += q[i * width + g * 4 + c] as i32 * kv.k[(g * kv.pitch + jj) * 4 + c] as i32;
                }
            }
            out[i * KEY_TILE + jj - j] = ((acc + kv.k_offset[jj]) as f32) * q_scale[i] * kv.k_scale[jj];
        }
    }
}

/// o[i] += (sum over key groups g0..g1 of p8[i][j] v8[j]) * p_scale[i], every dimension.
#[allow(clippy::too_many_arguments)]
fn values_portable(rows: usize, p: &[u8], p_scale: &[f32], v: &[i8], hd: usize, g0: usize, g1: usize, o: &mut [f32]) {
    for i in 0..rows {
        for dd in 0..hd {
            let mut acc = 0i32;
            for g in g0..g1 {
                for c in 0..4 {
                    acc += p[i * KEY_TILE + g * 4 + c] as i32 * v[(g * hd + dd) * 4 + c] as i32;
                }
            }
            o[i * hd + dd] += (acc as f32) * p_scale[i];
        }
    }
}

/// `scores_portable` for R rows and N blocks of 16 keys, accumulators in registers: per group of
/// 4 dimensions, N key loads and R query broadcasts feed R x N `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_vnni<const R: usize, const N: usize>(q: &[u8], q_scale: &[f32], kv: &HeadKv, j: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let width = kv.groups * 4;
    let mut acc = [[_mm512_setzero_si512(); N]; R];
    let (kp, qp) = (kv.k.as_ptr(), q.as_ptr());
    for g in 0..kv.groups {
        let keys: [__m512i; N] = std::array::from_fn(|b| _mm512_loadu_si512(kp.add((g * kv.pitch + j + b * LANES) * 4) as *const __m512i));
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_epi32((qp.add(i * width + g * 4) as *const i32).read_unaligned());
            for b in 0..N {
                acc_i[b] = _mm512_dpbusd_epi32(acc_i[b], a, keys[b]);
            }
        }
    }
    for b in 0..N {
        let offset = _mm512_loadu_si512(kv.k_offset.as_ptr().add(j + b * LANES) as *const __m512i);
        let k_scale = _mm512_loadu_ps(kv.k_scale.as_ptr().add(j + b * LANES));
        for (i, acc_i) in acc.iter().enumerate() {
            let x = _mm512_cvtepi32_ps(_mm512_add_epi32(acc_i[b], offset));
            let y = _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(q_scale[i])), k_scale);
            _mm512_storeu_ps(out.as_mut_ptr().add(i * KEY_TILE + b * LANES), y);
        }
    }
}

/// `values_portable` for R rows and dimension blocks db..db+D (16 each): per group of 4 keys, D
/// value loads and R probability broadcasts feed R x D `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn values_vnni<const R: usize, const D: usize>(p: &[u8], p_scale: &[f32], v: &[i8], hd: usize, g0: usize, g1: usize, db: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); D]; R];
    let (vp, pp) = (v.as_ptr().add(db * LANES * 4), p.as_ptr());
    for g in g0..g1 {
        let vals: [__m512i; D] = std::array::from_fn(|c| _mm512_loadu_si512(vp.add((g * hd + c * LANES) * 4) as *const __m512i));
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_epi32((pp.add(i * KEY_TILE + g * 4) as *const i32).read_unaligned());
            for c in 0..D {
                acc_i[c] = _mm512_dpbusd_epi32(acc_i[c], a, vals[c]);
            }
        }
    }
    let op = o.as_mut_ptr().add(db * LANES);
    for (i, acc_i) in acc.iter().enumerate() {
        let scale = _mm512_set1_ps(p_scale[i]);
        for (c, &a) in acc_i.iter().enumerate() {
            let at = op.add(i * hd + c * LANES);
            _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_mul_ps(_mm512_cvtepi32_ps(a), scale)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest relative error of `exp2` against f64 from 2^-126 to 2^32 (bf16 attention's
    /// lazy max takes positive powers up to 2^32).
    fn worst_relative_error(exp2: fn(f32) -> f32) -> f64 {
        (-320_000..=1_260_000)
            .map(|i| {
                let y = -(i as f32) * 1e-4;
                (exp2(y) as f64 / (y as f64).exp2() - 1.0).abs()
            })
            .fold(0f64, f64::max)
    }

    #[test]
    fn exp2_coarse_is_within_1e4_of_the_power_of_two() {
        let worst = worst_relative_error(exp2_coarse);
        assert!(worst < 1e-4, "relative error {worst}");
        assert_eq!(exp2_coarse(-1e9), exp2_coarse(-126.0), "very small scores flush to 2^-126");
    }

    #[test]
    fn exp2_fine_is_as_accurate_as_f32() {
        let worst = worst_relative_error(exp2_fine);
        assert!(worst < 3e-7, "relative error {worst}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            for i in -2_000..=500 {
                let y = i as f32 * 0.0637;
                let mut lanes = [0f32; 16];
                // SAFETY: avx512f was detected.
                unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), exp2_fine_avx512(std::arch::x86_64::_mm512_set1_ps(y))) };
                assert_eq!(lanes[0].to_bits(), exp2_fine(y).to_bits(), "2^{y}");
            }
        }
    }
}
