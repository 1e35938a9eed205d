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
//! The same tiles run `Precision::F32` where they exist, as accurately as f32 FMA: every
//! operand split into `SPLIT_PARTS` bf16 parts (largest first, each the rest of the ones before
//! rounded; together exactly the f32), the products of the `SPLIT_PAIRS` of parts summed on the
//! tiles, and an exponential to f32's precision (`exp2_fine`). Six tile products where bf16 has
//! one, at 16x the multiply-adds per instruction of an AVX-512 FMA.
//!
//! Layouts per KV head, tile operands in place: keys in blocks of 32 slots,
//! `[slots / 32][head_dim / 2][32][2]` (a pair of dimensions of 16 slots is one 64-byte tile
//! row, and a step's 16 rows are 2 KB in one piece: with every dimension pair a whole cache row
//! apart, a tile's rows fell in 16 pages), values `[slots / 2][head_dim][2]` (a pair of slots
//! of 16 dimensions). The probabilities' row sums add the bf16-rounded values that p.v
//! multiplies, so numerator and denominator see the same weights.
//!
//! The portable twin computes the same products in the same order (k in order, each rounded
//! sum of an exact product) and the same exponential.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::int8::{exp2_coarse_avx512, exp2_fine_avx512};
use super::int8::{exp2_coarse, exp2_fine};
use super::{AttnShape, Task, AMX_ROWS, KEY_TILE, LANES};
use crate::kernels::aligned::AlignedVec;
#[cfg(target_arch = "x86_64")]
use crate::kernels::bf16_split::{bf16_parts_32_avx512, bf16_parts_avx512};
use crate::kernels::bf16_split::{bf16_bits, bf16_parts, bf16_value, part_pairs, simd_conversions, to_bf16_parts_scaled};
#[cfg(target_arch = "x86_64")]
use crate::kernels::bf16_split::SPLIT_PAIRS;
pub(super) use crate::kernels::bf16_split::SPLIT_PARTS;
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
/// out[p * plane + 2i] = part p of even[i], out[p * plane + 2i + 1] = part p of odd[i]
/// (`bf16_parts`): two rows of the cache into the pairs the tiles read (a copy's keys per pair
/// of dimensions, values per pair of slots). `simd` only where `simd_conversions()`.
fn interleave_bf16_parts(simd: bool, even: &[f32], odd: &[f32], parts: usize, out: &mut [u16], plane: usize) {
    assert!((1..=SPLIT_PARTS).contains(&parts) && even.len() == odd.len() && 2 * even.len() <= plane && out.len() >= (parts - 1) * plane + 2 * even.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked avx512f, bw, vl and bf16 (`simd_conversions`); the assert
        // bounds every store.
        return unsafe { interleave_bf16_parts_avx512(even, odd, parts, out, plane) };
    }
    let _ = simd;
    for (i, (&e, &d)) in even.iter().zip(odd).enumerate() {
        bf16_parts(e, parts, |part, bits| out[part * plane + 2 * i] = bits);
        bf16_parts(d, parts, |part, bits| out[part * plane + 2 * i + 1] = bits);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn interleave_bf16_parts_avx512(even: &[f32], odd: &[f32], parts: usize, out: &mut [u16], plane: usize) {
    use std::arch::x86_64::*;
    let mut odd_parts = [_mm256_setzero_si256(); SPLIT_PARTS];
    for i in (0..even.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(even.len() - i);
        let load = |row: &[f32]| _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
        bf16_parts_avx512(load(odd), parts, |part, bits| odd_parts[part] = bits);
        bf16_parts_avx512(load(even), parts, |part, bits| {
            // Little-endian 32-bit lanes: the even row's bf16 first, the odd row's after it.
            let pairs = _mm512_or_si512(_mm512_cvtepu16_epi32(bits), _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(odd_parts[part])));
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(part * plane + 2 * i) as *mut i32, mask, pairs);
        });
    }
}

/// Where dimension d (even for the pair's start) of slot j sits in a plane of the kept keys
/// (`[slots / 32][head_dim / 2][32][2]`).
#[inline(always)]
fn key_index(hd: usize, j: usize, d: usize) -> usize {
    (j / STEP_KEYS) * hd * STEP_KEYS + (d / 2) * 2 * STEP_KEYS + (j % STEP_KEYS) * 2 + d % 2
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

    /// Converts slots valid..n of every KV head into `parts` bf16 parts (a new copy when the
    /// cache's layout or the parts changed) and returns the copy of slots 0..n.
    pub(super) fn update(&mut self, k_cache: &[f32], v_cache: &[f32], s: AttnShape, n: usize, parts: usize) -> &Bf16Cache {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let same_layout = |kv: &Bf16Cache| kv.stride == stride && kv.base == s.kv_base && kv.head_dim == hd && kv.heads.len() == s.n_kv_heads && kv.parts == parts;
        if !self.kv.as_ref().is_some_and(same_layout) {
            self.kv = Some(Bf16Cache::empty(s, parts));
            self.valid = 0;
        }
        let from = self.valid.min(n);
        let kv = self.kv.as_mut().expect("made above");
        let plane = kv.plane;
        debug_assert!(fits(hd), "pairs of dimensions");
        let simd = simd_conversions();
        kv.heads.par_iter_mut().enumerate().for_each(|(h, store)| {
            let (kt, v) = (&k_cache[h * hd * stride..(h + 1) * hd * stride], &v_cache[h * hd * stride..(h + 1) * hd * stride]);
            // Keys: dimension d of slot j at kt[d * stride + j] -> `key_index(j, d)`, a block's
            // slots of a pair of dimensions at a time. Part p of each in plane p (`plane` apart).
            for d in (0..hd).step_by(2) {
                let mut j = from;
                while j < n {
                    let to = n.min((j / STEP_KEYS + 1) * STEP_KEYS);
                    let (even, odd) = (&kt[d * stride + j..d * stride + to], &kt[(d + 1) * stride + j..(d + 1) * stride + to]);
                    interleave_bf16_parts(simd, even, odd, parts, &mut store.k[key_index(hd, j, d)..], plane);
                    j = to;
                }
            }
            // Values: slot j at v[j * hd..] -> [j / 2][d][j % 2]; a pair of slots at once, an odd
            // first or last slot alone.
            let one_slot = |store_v: &mut [u16], j: usize| {
                let pair = (j / 2) * hd * 2;
                for (d, &x) in v[j * hd..(j + 1) * hd].iter().enumerate() {
                    bf16_parts(x, parts, |part, bits| store_v[part * plane + pair + d * 2 + j % 2] = bits);
                }
            };
            let mut j = from;
            if j % 2 == 1 && j < n {
                one_slot(&mut store.v, j);
                j += 1;
            }
            while j + 1 < n {
                interleave_bf16_parts(simd, &v[j * hd..(j + 1) * hd], &v[(j + 1) * hd..(j + 2) * hd], parts, &mut store.v[j * hd..], plane);
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
/// position `base` in slot 0, each value in `parts` parts (one plane each).
pub(super) struct Bf16Cache {
    heads: Vec<HeadStore>,
    head_dim: usize,
    pitch: usize,
    stride: usize,
    base: usize,
    parts: usize,
    /// u16 per part's plane, of keys and of values alike: pitch x head_dim (keys in pitch / 32
    /// blocks of 32 slots x head_dim, values in pitch slots x head_dim).
    plane: usize,
}

/// Keys and values start on a cache line (tile rows must not straddle two), and so does each
/// plane; keys hold 32 slots more than the cache per dimension pair and values 32 more slots,
/// as tiles read whole steps.
struct HeadStore {
    k: AlignedVec<u16>,
    v: AlignedVec<u16>,
}

/// One KV head's bf16 keys and values, `parts` planes of each.
#[derive(Clone, Copy)]
pub(super) struct HeadKv<'a> {
    k: &'a [u16],
    v: &'a [u16],
    pitch: usize,
    head_dim: usize,
    parts: usize,
    /// u16 per part's plane (`Bf16Cache::plane`).
    plane: usize,
}

impl HeadKv<'_> {
    /// bf16 parts per value: 1, or `SPLIT_PARTS` for f32-accurate products.
    pub(super) fn parts(&self) -> usize {
        self.parts
    }
}

impl Bf16Cache {
    fn empty(s: AttnShape, parts: usize) -> Self {
        let (hd, stride) = (s.head_dim, s.kv_stride);
        let pitch = stride + STEP_KEYS;
        let plane = pitch * hd;
        // Whole cache lines per plane (fits: head_dim a multiple of 32).
        assert!(plane % 32 == 0);
        let heads = (0..s.n_kv_heads).map(|_| HeadStore { k: AlignedVec::filled(0, parts * plane), v: AlignedVec::filled(0, parts * plane) }).collect();
        Bf16Cache { heads, head_dim: hd, pitch, stride, base: s.kv_base, parts, plane }
    }

    pub(super) fn head(&self, h: usize) -> HeadKv<'_> {
        let st = &self.heads[h];
        HeadKv { k: &st.k, v: &st.v, pitch: self.pitch, head_dim: self.head_dim, parts: self.parts, plane: self.plane }
    }
}

/// Per-thread working memory of the bf16 path.
#[derive(Default)]
pub(super) struct Buffers {
    /// The task's query rows times the attention scale, in `parts` planes of [rows, padded to
    /// AMX_ROWS][hd].
    q: AlignedVec<u16>,
    /// A block of rows' scores over the key tile, [AMX_ROWS][S_PITCH].
    s: AlignedVec<f32>,
    /// The block's probabilities, `parts` planes of [AMX_ROWS][KEY_TILE].
    p: AlignedVec<u16>,
    /// Unnormalized outputs, [rows, padded][hd] (AMX adds onto them in place).
    o: AlignedVec<f32>,
    /// bf16 parts per operand in this task: 1, or `SPLIT_PARTS` for f32-accurate products.
    parts: usize,
}

/// u16 per plane of the probabilities.
const P_PLANE: usize = AMX_ROWS * KEY_TILE;

impl Buffers {
    /// Readies the buffers for a task of `rows` rows ([rows][hd] floats in `q`) whose operands
    /// have `parts` bf16 parts. Scores come out in base 2: the scale carries log2(e).
    pub(super) fn start_task(&mut self, q: &[f32], rows: usize, hd: usize, scale: f32, parts: usize) {
        let padded = rows.next_multiple_of(AMX_ROWS);
        let scale = scale * std::f32::consts::LOG2_E;
        self.parts = parts;
        self.q.refill(parts * padded * hd, 0);
        to_bf16_parts_scaled(simd_conversions(), &q[..rows * hd], scale, parts, &mut self.q, padded * hd);
        self.o.refill(padded * hd, 0.0);
        if self.s.len() != AMX_ROWS * S_PITCH {
            self.s = AlignedVec::filled(0.0, AMX_ROWS * S_PITCH);
        }
        if self.p.len() != parts * P_PLANE {
            self.p = AlignedVec::filled(0, parts * P_PLANE);
        }
    }

    /// The unnormalized outputs of the task's rows, [rows][hd].
    pub(super) fn outputs(&self, rows: usize, hd: usize) -> &[f32] {
        &self.o[..rows * hd]
    }

    /// u16 per plane of the query rows.
    fn q_plane(&self) -> usize {
        self.q.len() / self.parts
    }
}

impl Task<'_> {
    /// One key tile (j0..j1) for every row, 32 rows at a time: scores, the online softmax's
    /// step (the f32 path's), probabilities to bf16 parts, and their products with the values
    /// added onto the outputs. On AMX tiles (and AVX-512 for the rest) when AMX is set, else
    /// portable.
    ///
    /// Safety: with AMX, AMX-BF16 and AVX512-BF16 are available and head_dim fits (`fits`).
    #[inline(always)]
    pub(super) unsafe fn tile_bf16<const AMX: bool>(&self, kv: &HeadKv, b: &mut super::Buffers, rows: usize, j0: usize, j1: usize) {
        let hd = self.s.head_dim;
        let parts = kv.parts;
        #[cfg(target_arch = "x86_64")]
        let pairs = part_pairs(parts);
        // The exponential to the probabilities' precision: 8e-5 where they keep 8 bits. A
        // closure, not a function pointer: inlined here, its multiply-adds are the CPU's own (an
        // out-of-line copy, built without FMA, called the library's software fmaf, 0.7% of pp512).
        let exp2 = |y: f32| if parts == 1 { exp2_coarse(y) } else { exp2_fine(y) };
        let q_plane = b.bf16.q_plane();
        assert_eq!(b.bf16.parts, parts, "start_task readied the buffers for these parts");
        #[cfg(target_arch = "x86_64")]
        let mut operands = [(std::ptr::null(), std::ptr::null()); SPLIT_PAIRS.len()];
        for rb in (0..rows).step_by(AMX_ROWS) {
            let take = AMX_ROWS.min(rows - rb);
            let (lo, count) = self.blocks_seen(rb, take, j0, j1);
            if count == 0 {
                continue;
            }
            let hi = lo + count * LANES;
            // Whole blocks of kept keys (j0 is a multiple of 32: `attend`).
            let lo = lo / STEP_KEYS * STEP_KEYS;
            debug_assert!(j0 % STEP_KEYS == 0 && lo >= j0);
            let b16 = &mut b.bf16;
            assert!(hi <= kv.pitch - STEP_KEYS && hi - j0 <= KEY_TILE && q_plane >= (rb + AMX_ROWS) * hd && b16.o.len() >= (rb + AMX_ROWS) * hd);
            for j in (lo..hi).step_by(STEP_KEYS) {
                #[cfg(target_arch = "x86_64")]
                if AMX {
                    // The block's keys: a step's 16 pair rows of 32 slots 128 bytes apart.
                    let operands = part_operands(pairs, &mut operands, |qp, kp| (b16.q[qp * q_plane + rb * hd..].as_ptr(), kv.k[kp * kv.plane + key_index(hd, j, 0)..].as_ptr()));
                    crate::kernels::amx::tile_32x32_bf16(operands, hd * 2, STEP_KEYS * 4, hd / 32, b16.s.as_mut_ptr().add(j - j0), S_PITCH, crate::kernels::amx::Start::Zero);
                    continue;
                }
                scores_portable(&b16.q[rb * hd..], q_plane, take, hd, kv, j, (j + STEP_KEYS).min(hi), &mut b16.s[j - j0..]);
            }
            // Probabilities over the slots p.v reads (whole steps of 32), zero where unseen.
            let (k_lo, k_hi) = ((lo - j0) / STEP_KEYS * STEP_KEYS, (hi - j0).next_multiple_of(STEP_KEYS));
            for i in 0..AMX_ROWS {
                let row = i * KEY_TILE;
                let (a, e) = if i < take { self.seen_in(rb + i, j0, j1) } else { (0, 0) };
                if a >= e {
                    (0..parts).for_each(|part| b16.p[part * P_PLANE + row + k_lo..part * P_PLANE + row + k_hi].fill(0));
                    continue;
                }
                let r = rb + i;
                let (a, e) = (a - j0, e - j0);
                let seen = &mut b16.s[i * S_PITCH + a..i * S_PITCH + e];
                // Scores are in base 2: a softcap scales with them.
                if let Some(cap) = self.s.softcap {
                    softcap(seen, cap * std::f32::consts::LOG2_E);
                }
                for part in 0..parts {
                    let p = &mut b16.p[part * P_PLANE + row..part * P_PLANE + row + KEY_TILE];
                    p[k_lo..a].fill(0);
                    p[e..k_hi].fill(0);
                }
                // The running max is only a reference (`LAZY_HEADROOM`): the exponentials start
                // from it and the max is taken and raised only when a score passes the headroom.
                let reference = b.max[r];
                let out = &mut b16.p[row + a..];
                if reference == f32::NEG_INFINITY || !exp2_to_parts_summed::<AMX>(seen, reference, reference + LAZY_HEADROOM, parts, out, P_PLANE, &mut b.sum_lanes[r]) {
                    let max = self.raise_max(r, max_of_simd::<AMX>(seen), exp2, &mut b.max[r], &mut b.sum_lanes[r], &mut b16.o);
                    let done = exp2_to_parts_summed::<AMX>(seen, max, f32::INFINITY, parts, out, P_PLANE, &mut b.sum_lanes[r]);
                    debug_assert!(done, "no score exceeds infinity");
                }
            }
            let v_at = (j0 + k_lo) * hd;
            assert!(v_at + (k_hi - k_lo) * hd <= kv.plane);
            for d in (0..hd).step_by(32) {
                #[cfg(target_arch = "x86_64")]
                if AMX {
                    let operands = part_operands(pairs, &mut operands, |pp, vp| (b16.p[pp * P_PLANE + k_lo..].as_ptr(), kv.v[vp * kv.plane + v_at + d * 2..].as_ptr()));
                    crate::kernels::amx::tile_32x32_bf16(operands, KEY_TILE * 2, hd * 4, (k_hi - k_lo) / STEP_KEYS, b16.o.as_mut_ptr().add(rb * hd + d), hd, crate::kernels::amx::Start::Accumulate);
                    continue;
                }
                values_portable(&b16.p, take, k_lo, k_hi, kv, v_at, hd, d, &mut b16.o[rb * hd..]);
            }
        }
    }
}

/// The tile operands (a, b) of each part pair, from `operand(part of a, part of b)`, into
/// `out` (filled in place: an array returned by value was copied by vector loads of its
/// pointers just stored, a store-forwarding stall perf put at 40% of the attention task's own
/// time).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn part_operands<'a>(pairs: &[(usize, usize)], out: &'a mut [(*const u16, *const u16); SPLIT_PAIRS.len()], mut operand: impl FnMut(usize, usize) -> (*const u16, *const u16)) -> &'a [(*const u16, *const u16)] {
    for (o, &(x, y)) in out.iter_mut().zip(pairs) {
        *o = operand(x, y);
    }
    &out[..pairs.len()]
}

/// Scores of `take` rows of queries (`q`: row i at i * hd, part p a plane further) for slots
/// j..end: sum over d of q_d k_d as the tiles add it, 32 dimensions at a time, each over the
/// part pairs in order, a pair's 32 products summed (in order) before they join the rest.
#[allow(clippy::too_many_arguments)]
fn scores_portable(q: &[u16], q_plane: usize, take: usize, hd: usize, kv: &HeadKv, j: usize, end: usize, out: &mut [f32]) {
    for i in 0..take {
        for slot in j..end {
            let mut acc = 0f32;
            for d0 in (0..hd).step_by(32) {
                for &(qp, kp) in part_pairs(kv.parts) {
                    acc += (d0..d0 + 32).map(|d| bf16_value(q[qp * q_plane + i * hd + d]) * bf16_value(kv.k[kp * kv.plane + key_index(kv.head_dim, slot, d)])).sum::<f32>();
                }
            }
            out[i * S_PITCH + slot - j] = acc;
        }
    }
}

/// o[i][d..d + 32] += sum over slots k_lo..k_hi of p[i][slot] v[slot][..] for the first `take`
/// rows, as the tiles add it: 32 slots at a time, each over the part pairs in order, a pair's
/// 32 products summed (in order) before they join the rest (values from v_at, slot k_lo's
/// pair, on; `o` rows hd apart).
#[allow(clippy::too_many_arguments)]
fn values_portable(p: &[u16], take: usize, k_lo: usize, k_hi: usize, kv: &HeadKv, v_at: usize, hd: usize, d: usize, o: &mut [f32]) {
    for i in 0..take {
        for dd in d..d + 32 {
            let mut acc = o[i * hd + dd];
            for s0 in (k_lo..k_hi).step_by(STEP_KEYS) {
                for &(pp, vp) in part_pairs(kv.parts) {
                    acc += (s0..s0 + STEP_KEYS)
                        .map(|slot| {
                            let k = slot - k_lo;
                            bf16_value(p[pp * P_PLANE + i * KEY_TILE + slot]) * bf16_value(kv.v[vp * kv.plane + v_at + ((k / 2) * hd + dd) * 2 + k % 2])
                        })
                        .sum::<f32>();
                }
            }
            o[i * hd + dd] = acc;
        }
    }
}

/// out[p * plane + i] = part p of 2^(x[i] - reference) (`bf16_parts`), the exponential
/// `exp2_coarse` for one part (its 8e-5 is well inside bf16's 2^-9), `exp2_fine` for more; the
/// values added to the row's lane sums (value i to lane i % 16): the bf16-rounded ones for one
/// part (what p.v multiplies), the f32 ones (their parts' exact sum) for more. False, with the
/// sums untouched and out unspecified, when a score exceeds `limit`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn exp2_to_parts_summed<const SIMD: bool>(x: &[f32], reference: f32, limit: f32, parts: usize, out: &mut [u16], plane: usize, lanes: &mut [f32; LANES]) -> bool {
    assert!((1..=SPLIT_PARTS).contains(&parts) && x.len() <= plane && out.len() >= (parts - 1) * plane + x.len());
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD is set on the AMX path only, whose CPUs have avx512f, bw, vl and bf16;
        // the assert bounds every store.
        return unsafe { exp2_to_parts_summed_avx512(x, reference, limit, parts, out, plane, lanes) };
    }
    if x.iter().any(|&v| v > limit) {
        return false;
    }
    let mut tile = [0f32; LANES];
    for (i, &v) in x.iter().enumerate() {
        if parts == 1 {
            out[i] = bf16_bits(exp2_coarse(v - reference));
            tile[i % LANES] += bf16_value(out[i]);
        } else {
            let e = exp2_fine(v - reference);
            bf16_parts(e, parts, |part, bits| out[part * plane + i] = bits);
            tile[i % LANES] += e;
        }
    }
    lanes.iter_mut().zip(tile).for_each(|(l, t)| *l += t);
    true
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn exp2_to_parts_summed_avx512(x: &[f32], reference: f32, limit: f32, parts: usize, out: &mut [u16], plane: usize, lanes: &mut [f32; LANES]) -> bool {
    use std::arch::x86_64::*;
    let (vref, vlimit) = (_mm512_set1_ps(reference), _mm512_set1_ps(limit));
    // Lanes above the limit, gathered as the scores go by (a compare per 16, off the exponential's chain).
    let mut over: __mmask16 = 0;
    let mut exp2 = |i: usize, mask: u16| {
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        over |= _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(mask, v, vlimit);
        if parts == 1 {
            exp2_coarse_avx512(_mm512_sub_ps(v, vref))
        } else {
            exp2_fine_avx512(_mm512_sub_ps(v, vref))
        }
    };
    let mut sum = _mm512_setzero_ps();
    let whole = x.len() / 32 * 32;
    if parts == 1 {
        // 32 at a time: one conversion of two vectors, one store, and their sum by one dot
        // product with bf16 ones (each lane adds a pair), instead of widening them back to f32.
        let ones: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
        for i in (0..whole).step_by(32) {
            // The second operand becomes the low half: slots i..i + 16.
            let (hi, lo) = (exp2(i + 16, u16::MAX), exp2(i, u16::MAX));
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(packed));
            sum = _mm512_dpbf16_ps(sum, packed, ones);
        }
    } else {
        // 32 at a time: each part of two vectors in one conversion and one full store.
        // (Rounding the rest in the integer unit instead of converting the part back, off the
        // conversion's chain, measured no faster, and a denormal rest's zero took the other
        // sign.)
        for i in (0..whole).step_by(32) {
            let (lo, hi) = (exp2(i, u16::MAX), exp2(i + 16, u16::MAX));
            sum = _mm512_add_ps(_mm512_add_ps(sum, lo), hi);
            bf16_parts_32_avx512(lo, hi, parts, |part, packed| _mm512_storeu_si512(out.as_mut_ptr().add(part * plane + i) as *mut __m512i, packed));
        }
    }
    for i in (whole..x.len()).step_by(LANES) {
        let mask = crate::kernels::ops::first_lanes(x.len() - i);
        let e = exp2(i, mask);
        let mut back = e;
        bf16_parts_avx512(e, parts, |part, bits| {
            _mm256_mask_storeu_epi16(out.as_mut_ptr().add(part * plane + i) as *mut i16, mask, bits);
            if parts == 1 {
                // The rounded value back as f32: each bf16 in the high half of a lane.
                back = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)));
            }
        });
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
    fn simd_interleaving_into_pairs_equals_the_portable_one() {
        if !simd_conversions() {
            eprintln!("SKIPPED: no AVX512-BF16 on this CPU");
            return;
        }
        let x: Vec<f32> = (0..100).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.7).chain([1.0 + 1.0 / 256.0, f32::from_bits(1), f32::NAN, f32::INFINITY]).collect();
        for len in [0usize, 1, 15, 16, 17, 40, 52] {
            for parts in [1, SPLIT_PARTS] {
                let (even, odd, plane) = (&x[..len], &x[x.len() - len..], 2 * len + 3);
                let (mut simd, mut portable) = (vec![7u16; parts * plane], vec![7u16; parts * plane]);
                interleave_bf16_parts(true, even, odd, parts, &mut simd, plane);
                interleave_bf16_parts(false, even, odd, parts, &mut portable, plane);
                assert_eq!(simd, portable, "length {len}, {parts} parts");
            }
        }
    }

    #[test]
    fn simd_exponentials_into_parts_equal_the_portable_ones() {
        if !simd_conversions() {
            eprintln!("SKIPPED: no AVX512-BF16 on this CPU");
            return;
        }
        // Scores from 2^-140 (rests below f32's normal range) to 2^30 (the lazy max's headroom)
        // of the reference, lengths with and without a partial last vector.
        let x: Vec<f32> = (0..300).map(|i| ((i * 7919 % 1000) as f32 / 1000.0) * 170.0 - 140.0).collect();
        for parts in [1, SPLIT_PARTS] {
            for len in [0usize, 5, 16, 32, 47, 64, 300] {
                let plane = len + 3;
                let (mut simd, mut portable) = (vec![7u16; parts * plane], vec![7u16; parts * plane]);
                let (mut simd_sums, mut portable_sums) = ([0.5f32; LANES], [0.5f32; LANES]);
                assert!(exp2_to_parts_summed::<true>(&x[..len], 0.0, 31.0, parts, &mut simd, plane, &mut simd_sums));
                assert!(exp2_to_parts_summed::<false>(&x[..len], 0.0, 31.0, parts, &mut portable, plane, &mut portable_sums));
                assert_eq!(simd, portable, "{parts} parts, length {len}");
                if parts > 1 {
                    assert_eq!(simd_sums, portable_sums, "{parts} parts, length {len}");
                } else {
                    // One part adds its bf16 values in pairs (a dot product with ones).
                    let (a, b): (f32, f32) = (simd_sums.iter().sum(), portable_sums.iter().sum());
                    assert!((a - b).abs() <= 1e-6 * b.abs(), "{parts} part, length {len}: {a} against {b}");
                }
                let mut over = [0f32; LANES];
                assert!(len == 0 || x[..len].iter().all(|&v| v <= 20.0) || !exp2_to_parts_summed::<true>(&x[..len], 0.0, 20.0, parts, &mut simd, plane, &mut over), "a score over the limit");
            }
        }
    }
}
