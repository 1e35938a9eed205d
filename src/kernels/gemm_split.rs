//! The f32 GEMM on AMX-BF16 tiles: y[m, n] = x[m, k] . w[n, k]^T as accurate as f32 FMA, with
//! every operand split into three bf16 parts and the six products of parts that matter summed
//! on the tiles (`bf16_split`; f32 attention does the same). `tdpbf16ps` does 16x the
//! multiply-adds of an AVX-512 FMA per instruction, so even six of them per f32 product leave
//! the tiles ahead of the FMA kernel's peak.
//!
//! The weights are the tiles' A operand, rows of k as they are stored: each task takes `NC`
//! weight rows (output columns) and, per block of `BLOCK_STEPS` k steps, splits their slices
//! into rows of three parts (no reordering at all). The activations are the B operand: split
//! once per call into, per 32-token tile and part, 16 group rows per step of the 32 tokens'
//! pairs of k (a row holds each pair side by side already, so the group rows are transposes of
//! 32-bit pairs, 16 x 16 at a time). The results come out transposed (weight rows by tokens) and
//! wait in a per-thread buffer between blocks, as the int8 AMX GEMM's do; at the end each 16 x
//! 16 block is transposed into y (added with `accumulate`): activations and results are
//! transposed once per call, never the weights (each weight is read once per call, from memory).

use std::cell::RefCell;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::amx::{self, Start};
use super::bf16_split::{SPLIT_PAIRS, SPLIT_PARTS};
use super::disjoint::DisjointWrites;

/// Rows of a tile call (two 16-row tiles) and its columns (two 16-column tiles).
const TILE: usize = 32;
/// k per tile step: 32 bf16, 64 bytes.
const STEP_K: usize = amx::K_STEP / 2;
/// Steps per k block: a weight tile's three parts of a block (32 rows x 384 bytes) stay in L1
/// while the token tiles pass over it, their B operands fetched ahead by the tile routine. f32
/// pp512, 3 rounds alternating: 2 steps 152-168 tokens/s, 4 steps 151-161, 1 step 138-152 (the
/// results' round trip through L1 each step), 4 and 8 steps with the token tiles outermost
/// 144-155.
const BLOCK_STEPS: usize = 2;
/// Output columns (weight rows) per parallel task (a multiple of TILE): with 512 tokens the
/// task's results (512 KB) stay in L2 beside the next block's weights asked for ahead (512
/// columns, 1 MB of results, measured slower in gemm_speed).
const NC: usize = 8 * TILE;
/// bf16 per step of one part of one token tile: 16 group rows of 32 tokens x 2.
const TILE_STEP: usize = 16 * TILE * 2;
/// bf16 per part of a weight row's block.
const PLANE: usize = BLOCK_STEPS * STEP_K;
/// bf16 per weight row of a block: the three parts' `BLOCK_STEPS` steps side by side.
const BLOCK_ROW: usize = SPLIT_PARTS * PLANE;

/// Below this many tokens the FMA kernel is faster: splitting each weight costs the same for
/// few tokens as for many (`gemm_speed`, two runs of each: at 64 tokens split 0.4-0.9x FMA, at
/// 128 0.45-0.98x, at 256 1.07-1.25x but for one run at 0.48x).
pub const MIN_TOKENS: usize = 256;

/// Activations split into bf16 parts as B operands: `[token tile][part][step][pair][token][2]`,
/// tokens zero-padded to whole tiles and k to whole steps.
pub struct SplitActs {
    data: AlignedVec<u16>,
    pub m: usize,
    pub k: usize,
    steps: usize,
}

impl SplitActs {
    /// `tiles_run()` must be true (the split uses AVX512-BF16's conversion).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert!(super::bf16_split::tiles_run(), "the split GEMM needs AMX-BF16 and AVX512-BF16");
        assert_eq!(x.len(), m * k);
        let steps = k.div_ceil(STEP_K);
        let tile = SPLIT_PARTS * steps * TILE_STEP;
        let mut data = AlignedVec::filled(0u16, m.div_ceil(TILE) * tile);
        if k > 0 {
            data.par_chunks_mut(tile).enumerate().for_each(|(t, out)| {
                let rows = &x[t * TILE * k..(m.min((t + 1) * TILE)) * k];
                split_to_pairs(rows, k, rows.len() / k, steps, out);
            });
        }
        SplitActs { data, m, k, steps }
    }

    /// Part `part` of token tile `t` from step `step` on (group rows 128 bytes apart).
    fn operand(&self, t: usize, part: usize, step: usize) -> *const u16 {
        self.data[((t * SPLIT_PARTS + part) * self.steps + step) * TILE_STEP..].as_ptr()
    }
}

/// y = x . w^T (or y += with `accumulate`) for split activations and f32 weights [n, k].
/// `tiles_run()` must be true.
pub fn gemm(xs: &SplitActs, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    gemm_many(xs, &[(w, n)], &mut [y], accumulate)
}

/// Several products of the same activations (q/k/v, gate/up): outs[i] = x . ws[i].0^T (or +=)
/// for ws[i] = (weights [n, k], n), in one parallel loop over all their column blocks (a lone
/// k or v projection of 256 columns would be one task for two threads).
pub fn gemm_many(xs: &SplitActs, ws: &[(&[f32], usize)], outs: &mut [&mut [f32]], accumulate: bool) {
    assert!(super::bf16_split::tiles_run(), "the split GEMM needs AMX-BF16 and AVX512-BF16");
    assert_eq!(ws.len(), outs.len());
    let (m, k) = (xs.m, xs.k);
    for ((w, n), y) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.len(), n * k);
        assert_eq!(y.len(), m * n);
    }
    if k == 0 || m == 0 {
        // No block would run to write y: the empty sum is 0.
        if !accumulate {
            outs.iter_mut().for_each(|y| y.fill(0.0));
        }
        return;
    }
    let ys: Vec<DisjointWrites> = outs.iter_mut().map(|y| DisjointWrites::new(y)).collect();
    // Narrower tasks when there are few columns (a 256-row panel of decoded weights), so that
    // every thread gets two.
    let columns_in_all: usize = ws.iter().map(|&(_, n)| n).sum();
    let nc = NC.min(columns_in_all.div_ceil(2 * rayon::current_num_threads()).next_multiple_of(TILE)).max(TILE);
    let blocks: Vec<(usize, usize)> = ws.iter().enumerate().flat_map(|(i, &(_, n))| (0..n.div_ceil(nc)).map(move |b| (i, b * nc))).collect();
    blocks.into_par_iter().for_each(|(i, n0)| {
        let (w, n) = ws[i];
        // SAFETY: the task writes only columns n0..n0 + nc of output i, which no other task does.
        unsafe { columns(xs, &w[n0 * k..], nc.min(n - n0), ys[i], n, n0, accumulate) };
    });
}

thread_local! {
    /// A task's split weights of one block and its results: made once per thread (made per
    /// task they were page faults).
    static BUFFERS: RefCell<(AlignedVec<u16>, AlignedVec<f32>)> = RefCell::new(Default::default());
}

/// One task: weight rows `w[..rows]` (output columns n0.. of y, row stride `ldy`), every token.
///
/// # Safety
/// Columns n0..n0 + rows of y must be this task's alone; `tiles_run()`.
unsafe fn columns(xs: &SplitActs, w: &[f32], rows: usize, y: DisjointWrites, ldy: usize, n0: usize, accumulate: bool) {
    let (m, k) = (xs.m, xs.k);
    let (weight_tiles, token_tiles) = (rows.div_ceil(TILE), m.div_ceil(TILE));
    // Results: a row per weight row, a column per token; one cache line more than the tokens,
    // so that a tile's 16 rows do not share a few L1 sets at a power-of-two stride.
    let ldc = token_tiles * TILE + 16;
    BUFFERS.with_borrow_mut(|(wsplit, acc)| {
        if wsplit.len() < weight_tiles * TILE * BLOCK_ROW {
            *wsplit = AlignedVec::filled(0, weight_tiles * TILE * BLOCK_ROW);
        }
        if acc.len() < weight_tiles * TILE * ldc {
            *acc = AlignedVec::filled(0.0, weight_tiles * TILE * ldc);
        }
        for s0 in (0..xs.steps).step_by(BLOCK_STEPS) {
            let steps = BLOCK_STEPS.min(xs.steps - s0);
            let (k0, len) = (s0 * STEP_K, (k - s0 * STEP_K).min(PLANE));
            // Row r's parts at r * BLOCK_ROW + part * PLANE; past k (in the last step) and past
            // `rows` zeros, not what an earlier block or task left.
            for (r, out) in wsplit.chunks_exact_mut(BLOCK_ROW).take(weight_tiles * TILE).enumerate() {
                if r < rows {
                    let next = w.get(r * k + k0 + PLANE..(r + 1) * k).unwrap_or_default();
                    split_row(&w[r * k + k0..][..len], &next[..next.len().min(PLANE)], steps, out);
                } else {
                    out.fill(0);
                }
            }
            let start = if s0 == 0 { Start::Zero } else { Start::Accumulate };
            for j in 0..weight_tiles {
                let a: [*const u16; SPLIT_PARTS] = std::array::from_fn(|part| wsplit[j * TILE * BLOCK_ROW + part * PLANE..].as_ptr());
                for t in 0..token_tiles {
                    // The pairs' operands by hand: `SPLIT_PAIRS.map` was a call per tile call (1.6%
                    // of f32 pp512 in perf).
                    let mut operands = [(std::ptr::null(), std::ptr::null()); SPLIT_PAIRS.len()];
                    for (o, &(pw, px)) in operands.iter_mut().zip(&SPLIT_PAIRS) {
                        *o = (a[pw], xs.operand(t, px, s0));
                    }
                    // SAFETY: tiles_run(); each A operand holds 32 rows of `steps` whole steps at
                    // stride BLOCK_ROW bf16, each B operand `steps` x 16 group rows of 128 bytes,
                    // and acc 32 rows of ldc from this tile's corner.
                    amx::tile_32x32_bf16(&operands, BLOCK_ROW * 2, TILE * 4, steps, acc.as_mut_ptr().add(j * TILE * ldc + t * TILE), ldc, start);
                }
            }
        }
        write_transposed(acc, ldc, rows, m, y, ldy, n0, accumulate);
    });
}

/// One weight row's block (`x`, up to `steps` steps) into its three parts, each `BLOCK_STEPS`
/// steps long in `out`, zeros past x up to `steps` steps; the row's next block (`next`) asked
/// of L2. (The weights come from memory once per call. Asked for a few lines per tile call
/// instead, spread over the block's tile work, f32 pp512 was 12% slower: 134-137 against
/// 153-156 tokens/s, and 145-156 without asking.)
fn split_row(x: &[f32], next: &[f32], steps: usize, out: &mut [u16]) {
    assert!(x.len() <= steps * STEP_K && steps <= BLOCK_STEPS && out.len() >= BLOCK_ROW);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: tiles_run() (the caller's) includes AVX-512 BW and BF16; reads stay in x
    // (masked), prefetches in `next`, writes in `out` (asserted).
    unsafe {
        split_row_avx512(x, next, steps, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("tiles_run() is false off x86-64");
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn split_row_avx512(x: &[f32], next: &[f32], steps: usize, out: &mut [u16]) {
    use super::ops::first_lanes;
    use std::arch::x86_64::*;
    for s in 0..steps {
        let at = s * STEP_K;
        let len = x.len().saturating_sub(at).min(STEP_K);
        let lo = _mm512_maskz_loadu_ps(first_lanes(len), x.as_ptr().add(at.min(x.len())));
        let hi = _mm512_maskz_loadu_ps(first_lanes(len.saturating_sub(16)), x.as_ptr().add((at + 16).min(x.len())));
        super::bf16_split::bf16_parts_32_avx512(lo, hi, SPLIT_PARTS, |part, packed| _mm512_store_si512(out.as_mut_ptr().add(part * PLANE + at) as *mut _, packed));
    }
    for line in (0..next.len()).step_by(16) {
        _mm_prefetch::<_MM_HINT_T1>(next.as_ptr().add(line) as *const i8);
    }
}

/// y[t][n0 + r] (+)= acc[r][t] for r < rows, t < m, 16 x 16 at a time.
///
/// # Safety
/// As `columns`; acc holds rows.next_multiple_of(16) rows of ldc >= m.next_multiple_of(16).
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_transposed(acc: &[f32], ldc: usize, rows: usize, m: usize, y: DisjointWrites, ldy: usize, n0: usize, accumulate: bool) {
    use super::ops::first_lanes;
    #[repr(C, align(64))]
    struct Block([f32; 256]);
    let mut block = Block([0.0; 256]);
    // A block of 16 tokens at a time, all their columns: each token's row of y is written in
    // one run. (Column blocks outermost touched all m rows of y per 16 columns; at a row stride
    // of 8 KB (2,048 columns) those lines fell into a few L2 sets, and the GEMM ran at half its
    // speed on some runs, as the pages happened to land.)
    for t0 in (0..m).step_by(16) {
        for r0 in (0..rows).step_by(16) {
            let cols = 16.min(rows - r0);
            debug_assert!((r0 + 15) * ldc + t0 + 16 <= acc.len() && t0 + 16 <= ldc);
            super::gemm::transpose16_avx512(acc.as_ptr().add(r0 * ldc + t0), ldc, 16, block.0.as_mut_ptr(), 16, 0xFFFF);
            for t in t0..m.min(t0 + 16) {
                // SAFETY (caller): row t's columns n0 + r0.. are this task's.
                add_or_copy_avx512(&block.0[(t - t0) * 16..], y.ptr().add(t * ldy + n0 + r0), first_lanes(cols), accumulate);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_or_copy_avx512(v: &[f32], y: *mut f32, mask: u16, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut x = _mm512_loadu_ps(v.as_ptr());
    if accumulate {
        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, y));
    }
    _mm512_mask_storeu_ps(y, mask, x);
}

/// `rows` rows of x (k each, row stride k) split into B operands of `steps` steps: for each
/// part, per step, 16 group rows of 32 columns (a column per row of x; columns past `rows` and
/// k past the end zeros) x 2 k (`[part][step][pair][column][2]`).
fn split_to_pairs(x: &[f32], k: usize, rows: usize, steps: usize, out: &mut [u16]) {
    assert!(rows <= TILE && x.len() >= rows * k && out.len() >= SPLIT_PARTS * steps * TILE_STEP);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: tiles_run() (the caller's) includes AVX-512 BW and BF16; reads stay in rows <
    // `rows` and k < k (masked), writes in `out` (asserted length).
    unsafe {
        split_to_pairs_avx512(x, k, rows, steps, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("tiles_run() is false off x86-64");
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn split_to_pairs_avx512(x: &[f32], k: usize, rows: usize, steps: usize, out: &mut [u16]) {
    use super::ops::first_lanes;
    use std::arch::x86_64::*;
    // Each part of 16 rows x 32 k: a row's 16 pairs per line, to be transposed.
    #[repr(C, align(64))]
    struct Block([[u32; 16]; 16 * SPLIT_PARTS]);
    let mut block = Block([[0; 16]; 16 * SPLIT_PARTS]);
    for half in 0..2 {
        let live = rows.saturating_sub(half * 16).min(16);
        for s in 0..steps {
            let kk = s * STEP_K;
            let len = k.saturating_sub(kk).min(STEP_K);
            let (lo_mask, hi_mask) = (first_lanes(len), first_lanes(len.saturating_sub(16)));
            for r in 0..16 {
                let (lo, hi) = if r < live {
                    let row = x.as_ptr().add((half * 16 + r) * k + kk);
                    (_mm512_maskz_loadu_ps(lo_mask, row), _mm512_maskz_loadu_ps(hi_mask, row.add(16)))
                } else {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                };
                super::bf16_split::bf16_parts_32_avx512(lo, hi, SPLIT_PARTS, |part, pairs| _mm512_store_si512(block.0[part * 16 + r].as_mut_ptr() as *mut _, pairs));
            }
            for part in 0..SPLIT_PARTS {
                let dst = out.as_mut_ptr().add((part * steps + s) * TILE_STEP + half * 16 * 2);
                // Group row p (pair p of the step) gets each of the 16 rows' pair p: 64 bytes
                // per group row of 128.
                super::gemm::transpose16_avx512(block.0[part * 16].as_ptr() as *const f32, 16, 16, dst as *mut f32, TILE, 0xFFFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::tests::rand_vec;
    use super::*;

    /// Against f64, the split tiles stay within the FMA GEMM's own error (on shapes around every
    /// blocking edge: tiles, panels, tasks, steps, blocks), with and without accumulating.
    #[test]
    fn split_gemm_is_as_accurate_as_the_fma_gemm() {
        if !super::super::bf16_split::tiles_run() {
            eprintln!("SKIPPED: no AMX-BF16 and AVX512-BF16 on this CPU");
            return;
        }
        let shapes = [(1, 1, 1), (2, 3, 5), (31, 17, 13), (32, 256, 32), (33, 257, 97), (64, 512, 160), (5, 300, 200), (70, 64, 130), (40, 31, 129), (13, 600, 33)];
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let x = rand_vec(m * k, si as u64);
            let w = rand_vec(n * k, 100 + si as u64);
            let y0 = rand_vec(m * n, 200 + si as u64);
            let exact: Vec<f64> = (0..m * n).map(|i| (0..k).map(|kk| x[i / n * k + kk] as f64 * w[i % n * k + kk] as f64).sum()).collect();
            let mut fma = vec![0f32; m * n];
            use super::super::gemm::{gemm_packed, F32Kernel, PackedF32Acts};
            gemm_packed(&PackedF32Acts::with_kernel(&x, m, k, F32Kernel::Fma), &w, n, &mut fma, false);
            let xs = SplitActs::new(&x, m, k);
            let mut split = vec![f32::NAN; m * n];
            gemm(&xs, &w, n, &mut split, false);
            let mut sum = y0.clone();
            gemm(&xs, &w, n, &mut sum, true);
            // In a group beside another product, each comes out as it does alone.
            let half = n.div_ceil(2);
            let (mut first, mut second) = (vec![f32::NAN; m * n], vec![f32::NAN; m * half]);
            gemm_many(&xs, &[(&w, n), (&w[..half * k], half)], &mut [&mut first, &mut second], false);
            assert_eq!(first, split, "{m}x{k}x{n} grouped");
            assert!(second.iter().enumerate().all(|(i, &v)| v == split[i / half * n + i % half]), "{m}x{k}x{n} grouped second");
            let err = |y: &[f32], base: &[f32]| y.iter().zip(base).zip(&exact).map(|((&v, &b), &e)| (v as f64 - b as f64 - e).abs()).fold(0.0, f64::max);
            let zeros = vec![0f32; m * n];
            let (e_fma, e_split, e_sum) = (err(&fma, &zeros), err(&split, &zeros), err(&sum, &y0));
            // A bound of 2x the FMA GEMM's error (plus a floor for exact cases).
            assert!(e_split <= 2.0 * e_fma + 1e-6, "{m}x{k}x{n}: split {e_split:e} against FMA {e_fma:e}");
            assert!(e_sum <= 2.0 * e_fma + 4e-6, "{m}x{k}x{n} accumulate: {e_sum:e} against FMA {e_fma:e}");
        }
    }

    #[test]
    fn activations_split_into_their_tile_layout() {
        if !super::super::bf16_split::tiles_run() {
            eprintln!("SKIPPED: no AMX-BF16 and AVX512-BF16 on this CPU");
            return;
        }
        use super::super::bf16_split::bf16_parts;
        for (rows, k) in [(32, 64), (17, 100), (5, 33), (1, 1), (20, 256)] {
            let x = rand_vec(rows * k, rows as u64);
            let steps = k.div_ceil(STEP_K);
            let mut got = vec![7u16; SPLIT_PARTS * steps * TILE_STEP];
            split_to_pairs(&x, k, rows, steps, &mut got);
            for r in 0..TILE {
                for kk in 0..steps * STEP_K {
                    let v = if r < rows && kk < k { x[r * k + kk] } else { 0.0 };
                    bf16_parts(v, SPLIT_PARTS, |part, bits| {
                        let at = (part * steps + kk / STEP_K) * TILE_STEP + (kk % STEP_K / 2) * TILE * 2 + r * 2 + kk % 2;
                        assert_eq!(got[at], bits, "rows {rows} k {k} r {r} k {kk} part {part}");
                    });
                }
            }
        }
    }
}

