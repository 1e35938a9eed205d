//! bf16 prefill attention on AMX tiles (`Precision::Bf16`): q.k and p.v as `tdpbf16ps`
//! products (a 16x32 by 32x16 bf16 tile product per instruction, into f32), the online softmax
//! in f32 as the f32 path's but for a lazy max (`LAZY_HEADROOM`). Queries (times the attention
//! scale), keys, values and the probabilities are rounded to bf16 (8 significant bits, the f32
//! exponent range); every product of two bf16 is exact in f32 and the sums are f32, as flash
//! attention runs on GPUs. Scores are in base 2 (log2 e folded into the queries' scale) for
//! int8's coarse `exp2`, whose 8e-5 is far inside the probabilities' bf16 rounding. Where the
//! CPU has no AMX-BF16, `Precision::Bf16` runs the f32 kernels (AVX-512's `vdpbf16ps` measured no
//! more products per second than f32 FMA here).
//!
//! Layouts per KV head, tile operands in place: keys `[head_dim / 2][pitch][2]` (a pair of
//! dimensions of 16 slots is one 64-byte tile row), values `[slots / 2][head_dim][2]` (a pair of
//! slots of 16 dimensions). The probabilities' row sums add the bf16-rounded values that p.v
//! multiplies, so numerator and denominator see the same weights.
//!
//! The portable twin computes the same products in the same order (k in order, each rounded
//! sum of an exact product) and the same exponential.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::int8::exp2_coarse_avx512;
use super::int8::exp2_coarse;
use super::{AttnShape, Task, AMX_ROWS, KEY_TILE, LANES};
use crate::kernels::aligned::AlignedVec;
use crate::kernels::ops::{max_of_simd, softcap};

/// Slots per AMX step of p.v: 64 bytes of a bf16 probability row.
const STEP_KEYS: usize = 32;
/// How far (in base 2) a row's scores may rise above its running max before the max is
/// raised: bf16 has f32's exponent range, so probabilities of up to 2^32 times the f32 path's
/// keep their 8 bits, and sums of them stay far from f32's 2^128. Most tiles then skip the
/// row's max (a pass and a reduction per row: perf showed its latency chain as the hottest
/// instructions of the attention task outside the tiles) and the rescaling; FlashAttention-4
/// skips rescaling the same way. `attention_bench`, one layer at 2,048 / 4,096: 10.3-10.6 ->
/// 7.9-9.1 ms and 19.2-22.0 -> 15.5-17.6 ms.
const LAZY_HEADROOM: f32 = 32.0;
/// f32 per row of the scores buffer: a tile's keys plus the 16 a last 32-key product may add.
const S_PITCH: usize = KEY_TILE + 32;

/// x rounded to the nearest bf16 (ties to even), as `vcvtneps2bf16` does: denormals become
/// zeros of their sign, NaNs stay NaNs.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
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
pub(super) fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// out = x * scale rounded to bf16 (`bf16_bits`; with `simd`, `vcvtneps2bf16`, the same
/// rounding: the portable loop was 1.7% of a 512-token prefill). `simd` only where
/// `simd_conversions()`.
fn to_bf16_scaled(simd: bool, x: &[f32], scale: f32, out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked avx512f, bw, vl and bf16 (`simd_conversions`).
        return unsafe { to_bf16_scaled_avx512(x, scale, out) };
    }
    let _ = simd;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16_bits(v * scale);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn to_bf16_scaled_avx512(x: &[f32], scale: f32, out: &mut [u16]) {
    use std::arch::x86_64::*;
    let vs = _mm512_set1_ps(scale);
    for i in (0..x.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(x.len() - i);
        let bits: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)), vs)));
        _mm256_mask_storeu_epi16(out.as_mut_ptr().add(i) as *mut i16, mask, bits);
    }
}

/// Whether `vcvtneps2bf16` is here (asked once); it rounds as `bf16_bits`, so the choice never
/// changes a bit.
fn simd_conversions() -> bool {
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

/// out[2i] = bf16(even[i]), out[2i + 1] = bf16(odd[i]): two rows of the cache into the pairs the
/// tiles read (a copy's keys per pair of dimensions, values per pair of slots). `simd` only
/// where `simd_conversions()`.
fn interleave_bf16(simd: bool, even: &[f32], odd: &[f32], out: &mut [u16]) {
    assert!(even.len() == odd.len() && out.len() == 2 * even.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked avx512f, bw, vl and bf16 (`simd_conversions`).
        return unsafe { interleave_bf16_avx512(even, odd, out) };
    }
    let _ = simd;
    for ((o, &e), &d) in out.chunks_exact_mut(2).zip(even).zip(odd) {
        o[0] = bf16_bits(e);
        o[1] = bf16_bits(d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn interleave_bf16_avx512(even: &[f32], odd: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    for i in (0..even.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(even.len() - i);
        let bf16 = |row: &[f32]| _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, row.as_ptr().add(i)))));
        // Little-endian 32-bit lanes: the even row's bf16 first, the odd row's after it.
        let pairs = _mm512_or_si512(bf16(even), _mm512_slli_epi32::<16>(bf16(odd)));
        _mm512_mask_storeu_epi32(out.as_mut_ptr().add(2 * i) as *mut i32, mask, pairs);
    }
}

/// Whether the tiles can multiply this head size: q.k steps over 32 dimensions at a time.
pub(super) fn fits(head_dim: usize) -> bool {
    head_dim > 0 && head_dim % 32 == 0
}

/// The bf16 copy of one layer's cache, kept between attention calls so that each call
/// converts only the slots written since the one before (`forget_from`, as `Int8Kv`).
#[derive(Default)]
pub struct Bf16Kv {
    kv: Option<Bf16Cache>,
    /// Slots 0..valid hold the cache's current contents.
    valid: usize,
}

impl Bf16Kv {
    /// Slots from `slot` on were (or will be) rewritten.
    pub fn forget_from(&mut self, slot: usize) {
        self.valid = self.valid.min(slot);
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |kv| kv.heads.iter().map(|h| 2 * (h.k.len() + h.v.len())).sum())
    }

    /// Converts slots valid..n of every KV head (a new copy when the cache's layout changed)
    /// and returns the copy of slots 0..n.
    pub(super) fn update(&mut self, k_cache: &[f32], v_cache: &[f32], s: AttnShape, n: usize) -> &Bf16Cache {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let same_layout = |kv: &Bf16Cache| kv.stride == stride && kv.base == s.kv_base && kv.head_dim == hd && kv.heads.len() == s.n_kv_heads;
        if !self.kv.as_ref().is_some_and(same_layout) {
            self.kv = Some(Bf16Cache::empty(s));
            self.valid = 0;
        }
        let from = self.valid.min(n);
        let kv = self.kv.as_mut().expect("made above");
        let pitch = kv.pitch;
        debug_assert!(fits(hd), "pairs of dimensions");
        let simd = simd_conversions();
        kv.heads.par_iter_mut().enumerate().for_each(|(h, store)| {
            let (kt, v) = (&k_cache[h * hd * stride..(h + 1) * hd * stride], &v_cache[h * hd * stride..(h + 1) * hd * stride]);
            // Keys: dimension d of slot j at kt[d * stride + j] -> [d / 2][j][d % 2].
            for d in (0..hd).step_by(2) {
                let row = &mut store.k[(d / 2) * pitch * 2..(d / 2 + 1) * pitch * 2];
                let (even, odd) = (&kt[d * stride + from..d * stride + n], &kt[(d + 1) * stride + from..(d + 1) * stride + n]);
                interleave_bf16(simd, even, odd, &mut row[from * 2..n * 2]);
            }
            // Values: slot j at v[j * hd..] -> [j / 2][d][j % 2]; a pair of slots at once, an odd
            // first or last slot alone.
            let one_slot = |store_v: &mut [u16], j: usize| {
                let pair = &mut store_v[(j / 2) * hd * 2..(j / 2 + 1) * hd * 2];
                for (d, &x) in v[j * hd..(j + 1) * hd].iter().enumerate() {
                    pair[d * 2 + j % 2] = bf16_bits(x);
                }
            };
            let mut j = from;
            if j % 2 == 1 && j < n {
                one_slot(&mut store.v, j);
                j += 1;
            }
            while j + 1 < n {
                interleave_bf16(simd, &v[j * hd..(j + 1) * hd], &v[(j + 1) * hd..(j + 2) * hd], &mut store.v[j * hd..(j + 2) * hd]);
                j += 2;
            }
            if j < n {
                one_slot(&mut store.v, j);
            }
        });
        self.valid = n;
        kv
    }
}

/// The bf16 slots of every KV head, in the layout of a cache of `stride` slots per head with
/// position `base` in slot 0.
pub(super) struct Bf16Cache {
    heads: Vec<HeadStore>,
    head_dim: usize,
    pitch: usize,
    stride: usize,
    base: usize,
}

/// Keys and values start on a cache line (tile rows must not straddle two); keys hold 32 slots
/// more than the cache per dimension pair and values 32 more slots, as tiles read whole steps.
struct HeadStore {
    k: AlignedVec<u16>,
    v: AlignedVec<u16>,
}

/// One KV head's bf16 keys and values.
#[derive(Clone, Copy)]
pub(super) struct HeadKv<'a> {
    k: &'a [u16],
    v: &'a [u16],
    pitch: usize,
}

impl Bf16Cache {
    fn empty(s: AttnShape) -> Self {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let pitch = stride + STEP_KEYS;
        let heads = (0..s.n_kv_heads).map(|_| HeadStore { k: AlignedVec::filled(0, hd.div_ceil(2) * pitch * 2), v: AlignedVec::filled(0, (stride + STEP_KEYS) * hd) }).collect();
        Bf16Cache { heads, head_dim: hd, pitch, stride, base: s.kv_base }
    }

    pub(super) fn head(&self, h: usize) -> HeadKv<'_> {
        let st = &self.heads[h];
        HeadKv { k: &st.k, v: &st.v, pitch: self.pitch }
    }
}

/// Per-thread working memory of the bf16 path.
#[derive(Default)]
pub(super) struct Buffers {
    /// The task's query rows times the attention scale, [rows, padded to AMX_ROWS][hd].
    q: AlignedVec<u16>,
    /// A block of rows' scores over the key tile, [AMX_ROWS][S_PITCH].
    s: AlignedVec<f32>,
    /// The block's probabilities, [AMX_ROWS][KEY_TILE].
    p: AlignedVec<u16>,
    /// Unnormalized outputs, [rows, padded][hd] (AMX adds onto them in place).
    o: AlignedVec<f32>,
}

impl Buffers {
    /// Readies the buffers for a task of `rows` rows ([rows][hd] floats in `q`).
    /// Scores come out in base 2: the scale carries log2(e).
    pub(super) fn start_task(&mut self, q: &[f32], rows: usize, hd: usize, scale: f32) {
        let padded = rows.next_multiple_of(AMX_ROWS);
        let scale = scale * std::f32::consts::LOG2_E;
        self.q.refill(padded * hd, 0);
        to_bf16_scaled(simd_conversions(), &q[..rows * hd], scale, &mut self.q[..rows * hd]);
        self.o.refill(padded * hd, 0.0);
        if self.s.len() != AMX_ROWS * S_PITCH {
            self.s = AlignedVec::filled(0.0, AMX_ROWS * S_PITCH);
            self.p = AlignedVec::filled(0, AMX_ROWS * KEY_TILE);
        }
    }

    /// The unnormalized outputs of the task's rows, [rows][hd].
    pub(super) fn outputs(&self, rows: usize, hd: usize) -> &[f32] {
        &self.o[..rows * hd]
    }
}

impl Task<'_> {
    /// One key tile (j0..j1) for every row, 32 rows at a time: scores, the online softmax's
    /// step (the f32 path's), probabilities to bf16, and their products with the values added
    /// onto the outputs. On AMX tiles (and AVX-512 for the rest) when AMX is set, else portable.
    ///
    /// Safety: with AMX, AMX-BF16 and AVX512-BF16 are available and head_dim fits (`fits`).
    #[inline(always)]
    pub(super) unsafe fn tile_bf16<const AMX: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, j0: usize, j1: usize) {
        let hd = self.s.head_dim;
        for rb in (0..rows).step_by(AMX_ROWS) {
            let take = AMX_ROWS.min(rows - rb);
            let (lo, count) = self.blocks_seen(rb, take, j0, j1);
            if count == 0 {
                continue;
            }
            let hi = lo + count * LANES;
            let b16 = &mut b.bf16;
            assert!(hi <= kv.pitch - STEP_KEYS && hi - j0 <= KEY_TILE && b16.q.len() >= (rb + AMX_ROWS) * hd && b16.o.len() >= (rb + AMX_ROWS) * hd);
            for j in (lo..hi).step_by(STEP_KEYS) {
                #[cfg(target_arch = "x86_64")]
                if AMX {
                    crate::kernels::amx::tile_32x32_bf16(b16.q[rb * hd..].as_ptr(), hd * 2, kv.k[j * 2..].as_ptr(), kv.pitch * 4, hd / 32, b16.s.as_mut_ptr().add(j - j0), S_PITCH, crate::kernels::amx::Start::Zero);
                    continue;
                }
                scores_portable(&b16.q[rb * hd..(rb + take) * hd], hd, kv, j, (j + STEP_KEYS).min(hi), &mut b16.s[j - j0..]);
            }
            // Probabilities over the slots p.v reads (whole steps of 32), zero where unseen.
            let (k_lo, k_hi) = ((lo - j0) / STEP_KEYS * STEP_KEYS, (hi - j0).next_multiple_of(STEP_KEYS));
            for i in 0..AMX_ROWS {
                let p = &mut b16.p[i * KEY_TILE..(i + 1) * KEY_TILE];
                let (a, e) = if i < take { self.seen_in(rb + i, j0, j1) } else { (0, 0) };
                if a >= e {
                    p[k_lo..k_hi].fill(0);
                    continue;
                }
                let r = rb + i;
                let (a, e) = (a - j0, e - j0);
                let seen = &mut b16.s[i * S_PITCH + a..i * S_PITCH + e];
                // Scores are in base 2: a softcap scales with them.
                if let Some(cap) = self.s.softcap {
                    softcap(seen, cap * std::f32::consts::LOG2_E);
                }
                p[k_lo..a].fill(0);
                p[e..k_hi].fill(0);
                // The running max is only a reference (`LAZY_HEADROOM`): the exponentials start
                // from it and the max is taken and raised only when a score passes the headroom.
                let reference = b.max[r];
                if reference == f32::NEG_INFINITY || !exp2_to_bf16_summed::<AMX>(seen, reference, reference + LAZY_HEADROOM, &mut p[a..e], &mut b.sum_lanes[r]) {
                    let max = self.raise_max(r, max_of_simd::<AMX>(seen), exp2_coarse, &mut b.max[r], &mut b.sum_lanes[r], &mut b16.o);
                    let done = exp2_to_bf16_summed::<AMX>(seen, max, f32::INFINITY, &mut p[a..e], &mut b.sum_lanes[r]);
                    debug_assert!(done, "no score exceeds infinity");
                }
            }
            let v_at = (j0 + k_lo) * hd;
            assert!(v_at + (k_hi - k_lo) * hd <= kv.v.len());
            for d in (0..hd).step_by(32) {
                #[cfg(target_arch = "x86_64")]
                if AMX {
                    crate::kernels::amx::tile_32x32_bf16(b16.p[k_lo..].as_ptr(), KEY_TILE * 2, kv.v[v_at + d * 2..].as_ptr(), hd * 4, (k_hi - k_lo) / STEP_KEYS, b16.o.as_mut_ptr().add(rb * hd + d), hd, crate::kernels::amx::Start::Accumulate);
                    continue;
                }
                values_portable(&b16.p, take, k_lo, k_hi, &kv.v[v_at..], hd, d, &mut b16.o[rb * hd..]);
            }
        }
    }
}

/// Scores of rows `q` ([rows][hd] bf16) for slots j..end: sum over d of q_d k_d in order.
fn scores_portable(q: &[u16], hd: usize, kv: &HeadKv, j: usize, end: usize, out: &mut [f32]) {
    for (i, qr) in q.chunks_exact(hd).enumerate() {
        for slot in j..end {
            let mut acc = 0f32;
            for (d, &qd) in qr.iter().enumerate() {
                acc += bf16_value(qd) * bf16_value(kv.k[((d / 2) * kv.pitch + slot) * 2 + d % 2]);
            }
            out[i * S_PITCH + slot - j] = acc;
        }
    }
}

/// o[i][d..d + 32] += sum over slots k_lo..k_hi of p[i][slot] v[slot][..] for the first `take`
/// rows, slots in order (`v` from slot k_lo's pair on, `o` rows hd apart).
#[allow(clippy::too_many_arguments)]
fn values_portable(p: &[u16], take: usize, k_lo: usize, k_hi: usize, v: &[u16], hd: usize, d: usize, o: &mut [f32]) {
    for i in 0..take {
        for dd in d..d + 32 {
            let mut acc = o[i * hd + dd];
            for slot in k_lo..k_hi {
                let k = slot - k_lo;
                acc += bf16_value(p[i * KEY_TILE + slot]) * bf16_value(v[((k / 2) * hd + dd) * 2 + k % 2]);
            }
            o[i * hd + dd] = acc;
        }
    }
}

/// out = 2^(x - reference) rounded to bf16 (`exp2_coarse`: its 8e-5 is well inside bf16's
/// 2^-9), the rounded values added to the row's lane sums (value i to lane i % 16); false, with
/// the sums untouched and out unspecified, when a score exceeds `limit`.
#[inline(always)]
fn exp2_to_bf16_summed<const SIMD: bool>(x: &[f32], reference: f32, limit: f32, out: &mut [u16], lanes: &mut [f32; LANES]) -> bool {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD is set on the AMX path only, whose CPUs have avx512f, bw, vl and bf16.
        return unsafe { exp2_to_bf16_summed_avx512(x, reference, limit, out, lanes) };
    }
    if x.iter().any(|&v| v > limit) {
        return false;
    }
    let mut tile = [0f32; LANES];
    for (i, (&v, o)) in x.iter().zip(out.iter_mut()).enumerate() {
        *o = bf16_bits(exp2_coarse(v - reference));
        tile[i % LANES] += bf16_value(*o);
    }
    lanes.iter_mut().zip(tile).for_each(|(l, t)| *l += t);
    true
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn exp2_to_bf16_summed_avx512(x: &[f32], reference: f32, limit: f32, out: &mut [u16], lanes: &mut [f32; LANES]) -> bool {
    use std::arch::x86_64::*;
    let (vref, vlimit) = (_mm512_set1_ps(reference), _mm512_set1_ps(limit));
    // Lanes above the limit, gathered as the scores go by (a compare per 16, off the exponential's chain).
    let mut over: __mmask16 = 0;
    let mut exp2 = |i: usize, mask: u16| {
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        over |= _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(mask, v, vlimit);
        exp2_coarse_avx512(_mm512_sub_ps(v, vref))
    };
    // 32 at a time: one conversion of two vectors, one store, and their sum by one dot
    // product with bf16 ones (each lane adds a pair), instead of widening them back to f32.
    let ones: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
    let mut sum = _mm512_setzero_ps();
    let whole = x.len() / 32 * 32;
    for i in (0..whole).step_by(32) {
        // The second operand becomes the low half: slots i..i + 16.
        let (hi, lo) = (exp2(i + 16, u16::MAX), exp2(i, u16::MAX));
        let packed = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(packed));
        sum = _mm512_dpbf16_ps(sum, packed, ones);
    }
    for i in (whole..x.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(x.len() - i);
        let bits: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(exp2(i, mask)));
        _mm256_mask_storeu_epi16(out.as_mut_ptr().add(i) as *mut i16, mask, bits);
        // The rounded values back as f32: each bf16 in the high half of a lane.
        let back = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)));
        sum = _mm512_mask_add_ps(sum, mask, sum, back);
    }
    if over != 0 {
        return false;
    }
    let to = lanes.as_mut_ptr();
    _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), sum));
    true
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
            let (mut simd, mut portable) = (vec![0u16; x.len()], vec![0u16; x.len()]);
            to_bf16_scaled(true, &x, scale, &mut simd);
            to_bf16_scaled(false, &x, scale, &mut portable);
            assert_eq!(simd, portable, "scale {scale}");
        }
    }

    #[test]
    fn simd_interleaving_into_pairs_equals_the_portable_one() {
        if !simd_conversions() {
            eprintln!("SKIPPED: no AVX512-BF16 on this CPU");
            return;
        }
        let x: Vec<f32> = (0..100).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.7).chain([1.0 + 1.0 / 256.0, f32::from_bits(1), f32::NAN, f32::INFINITY]).collect();
        for len in [0usize, 1, 15, 16, 17, 40, 52] {
            let (even, odd) = (&x[..len], &x[x.len() - len..]);
            let (mut simd, mut portable) = (vec![7u16; 2 * len], vec![9u16; 2 * len]);
            interleave_bf16(true, even, odd, &mut simd);
            interleave_bf16(false, even, odd, &mut portable);
            assert_eq!(simd, portable, "length {len}");
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
