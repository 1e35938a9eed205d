//! Prefill from ggml blocks: an integer GEMM (AVX-512 VNNI). A panel of 16 weight rows is
//! unpacked once into unsigned bytes laid out so that each 32-bit lane of a vector belongs to one
//! row (4 consecutive weights of it), with its scales per group; then every token's int8
//! activation streams past it: one vpdpbusd with a broadcast of 4 activation bytes does 16 rows x
//! 4 weights. Lanes are rows, so the per-block float expression and the 16-lane summation order of
//! the portable dot product apply lane-wise unchanged: the result equals `row_dot_portable` for
//! every (row, token), bit for bit (tests check it).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::QuantizedActs;
use crate::tensor::dtype::{f16_at, unpack_k, unpack_legacy, DType, KBlock, QK};
use crate::tensor::Encoded;

/// Rows per panel: one per 32-bit lane of a 512-bit vector.
const ROWS: usize = 16;
/// Tokens per pass over a panel (independent accumulator chains).
const TOKENS: usize = 4;

/// How a type's blocks map onto the kernel.
#[derive(Clone, Copy)]
struct Layout {
    /// Weights per unit (a legacy block or a K-quant superblock) and per scale group.
    unit: usize,
    group: usize,
    /// What the stored unsigned value exceeds the weight by (`DType::offset`; taken off as
    /// offset * sum(a)).
    offset: i32,
    /// K-quants: integer scales per group and `(da d) isum - (da dmin) imin`; legacy types:
    /// `isum (d da) [+ min (da sum(a))]`.
    k_quant: bool,
    /// K-quants with mins (Q2_K, Q4_K, Q5_K); legacy types with a float min (Q4_1, Q5_1).
    mins: bool,
}

fn layout(dtype: DType) -> Layout {
    let offset = dtype.offset();
    let k = |group, mins| Layout { unit: 256, group, offset, k_quant: true, mins };
    let legacy = |mins| Layout { unit: QK, group: QK, offset, k_quant: false, mins };
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => legacy(false),
        DType::Q4_1 | DType::Q5_1 => legacy(true),
        DType::Q2K => k(16, true),
        DType::Q3K | DType::Q6K => k(16, false),
        DType::Q4K | DType::Q5K => k(32, true),
        _ => unreachable!("not a block type"),
    }
}

/// 16 rows unpacked: `q` [k / 4][row][4] unsigned bytes; per unit and row `d` and `dmin` (legacy:
/// the min); per group and row the integer scale and min.
struct Panel {
    q: Vec<u8>,
    scales: Vec<i32>,
    mins: Vec<i32>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Panel {
    fn new(w: &Encoded, lay: Layout, r0: usize) -> Panel {
        let k = w.cols;
        let (units, groups) = (k / lay.unit, k / lay.group);
        let mut p = Panel { q: vec![0; k * ROWS], scales: vec![0; groups * ROWS], mins: vec![0; groups * ROWS], d: vec![0.0; units * ROWS], dmin: vec![0.0; units * ROWS] };
        let size = w.dtype.block().1;
        let mut blk = KBlock::default();
        for row in 0..ROWS.min(w.rows - r0) {
            let bytes = w.row(r0 + row);
            // Stored values of unit u, 4 at a time, into this row's lane of the panel.
            let mut put = |u: usize, q: &[u8]| {
                let lanes = p.q[u * lay.unit * ROWS..(u + 1) * lay.unit * ROWS].chunks_exact_mut(4 * ROWS);
                for (dst, four) in lanes.zip(q.chunks_exact(4)) {
                    dst[row * 4..row * 4 + 4].copy_from_slice(four);
                }
            };
            for (u, b) in bytes.chunks_exact(size).enumerate() {
                if lay.k_quant {
                    unpack_k(w.dtype, b, &f16_at, &mut blk);
                    put(u, &blk.q);
                    let per = lay.group / 16;
                    for g in 0..lay.unit / lay.group {
                        p.scales[(u * lay.unit / lay.group + g) * ROWS + row] = blk.scales[g * per];
                        p.mins[(u * lay.unit / lay.group + g) * ROWS + row] = blk.mins[g * per];
                    }
                    (p.d[u * ROWS + row], p.dmin[u * ROWS + row]) = (blk.d, blk.dmin);
                } else {
                    let legacy = unpack_legacy(w.dtype, b, &f16_at);
                    put(u, &legacy.q);
                    p.scales[u * ROWS + row] = 1;
                    (p.d[u * ROWS + row], p.dmin[u * ROWS + row]) = (legacy.d, legacy.min.unwrap_or(0.0));
                }
            }
        }
        // Rows past the matrix stay all-zero weights (q = offset), scale 0: they compute 0.
        if w.rows - r0 < ROWS {
            for row in w.rows - r0..ROWS {
                for i in 0..k {
                    p.q[(i / 4) * 4 * ROWS + row * 4 + i % 4] = lay.offset as u8;
                }
            }
        }
        p
    }
}

/// y[t, r] = dot(w[r, :], x[t, :]) (or y += that) for all m tokens, with `acts` their quantized rows.
/// Safety: the CPU has AVX-512 F, BW and VNNI; the activations' format fits `w` (checked by the caller).
pub unsafe fn matmul(w: Encoded, acts: &[QuantizedActs], y: &mut [f32], accumulate: bool) {
    let (n, m) = (w.rows, acts.len());
    let lay = layout(w.dtype);
    let panels = n.div_ceil(ROWS);
    // Each token's activation sum per scale group, computed once for all panels.
    let group_sums: Vec<Vec<i32>> = acts.iter().map(|a| a.sums.chunks_exact(lay.group / 16).map(|s| s.iter().map(|&v| v as i32).sum()).collect()).collect();
    let kernel = match (lay.k_quant, lay.mins, lay.group) {
        (true, true, 32) => panel_tokens::<true, true, 32>,
        (true, true, 16) => panel_tokens::<true, true, 16>,
        (true, false, 16) => panel_tokens::<true, false, 16>,
        (false, true, 32) => panel_tokens::<false, true, 32>,
        (false, false, 32) => panel_tokens::<false, false, 32>,
        _ => unreachable!("no such layout"),
    };
    // Results per panel as [token][16 rows], then copied into y's [token][n].
    let mut yt = vec![0f32; panels * m * ROWS];
    yt.par_chunks_mut(m * ROWS).enumerate().for_each(|(pi, out)| {
        let panel = Panel::new(&w, lay, pi * ROWS);
        for (t0, out) in (0..m).step_by(TOKENS).zip(out.chunks_mut(TOKENS * ROWS)) {
            let t1 = (t0 + TOKENS).min(m);
            // SAFETY: the caller's contract.
            unsafe { kernel(&panel, lay, w.cols, &acts[t0..t1], &group_sums[t0..t1], out) };
        }
    });
    y.par_chunks_mut(n).enumerate().for_each(|(t, yr)| {
        for (pi, ys) in yr.chunks_mut(ROWS).enumerate() {
            let src = &yt[(pi * m + t) * ROWS..][..ys.len()];
            for (o, &v) in ys.iter_mut().zip(src) {
                *o = if accumulate { *o + v } else { v };
            }
        }
    });
}

/// One panel times up to TOKENS tokens: `out` [token][16 rows]. Specialized per type family
/// (K-quant or legacy, with mins or not, scale group size) so no branch sits in the loops.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panel_tokens<const K_QUANT: bool, const MINS: bool, const GROUP: usize>(
    p: &Panel,
    lay: Layout,
    k: usize,
    acts: &[QuantizedActs],
    group_sums: &[Vec<i32>],
    out: &mut [f32],
) {
    let nt = acts.len();
    // A short final group of tokens repeats its last one (results not stored).
    let a: [&QuantizedActs; TOKENS] = std::array::from_fn(|t| &acts[t.min(nt - 1)]);
    let gs: [&[i32]; TOKENS] = std::array::from_fn(|t| group_sums[t.min(nt - 1)].as_slice());
    let mut lanes = [[_mm512_setzero_ps(); 16]; TOKENS];
    let groups_per_unit = lay.unit / GROUP;
    let mut q = p.q.as_ptr();
    for u in 0..k / lay.unit {
        let mut isum = [_mm512_setzero_si512(); TOKENS];
        let mut imin = [_mm512_setzero_si512(); TOKENS];
        for g in 0..groups_per_unit {
            let gi = u * groups_per_unit + g;
            let k0 = gi * GROUP;
            // Two accumulator chains per token (even and odd steps), all in registers.
            let mut even = [_mm512_setzero_si512(); TOKENS];
            let mut odd = [_mm512_setzero_si512(); TOKENS];
            let x: [*const i8; TOKENS] = std::array::from_fn(|t| a[t].qs.as_ptr().add(k0));
            for s in (0..GROUP / 4).step_by(2) {
                let w0 = _mm512_loadu_si512(q as *const _);
                let w1 = _mm512_loadu_si512(q.add(4 * ROWS) as *const _);
                q = q.add(8 * ROWS);
                for t in 0..TOKENS {
                    let x0 = std::ptr::read_unaligned(x[t].add(4 * s) as *const i32);
                    let x1 = std::ptr::read_unaligned(x[t].add(4 * s + 4) as *const i32);
                    even[t] = _mm512_dpbusd_epi32(even[t], w0, _mm512_set1_epi32(x0));
                    odd[t] = _mm512_dpbusd_epi32(odd[t], w1, _mm512_set1_epi32(x1));
                }
            }
            let sc = _mm512_loadu_si512(p.scales.as_ptr().add(gi * ROWS) as *const _);
            let mn = _mm512_loadu_si512(p.mins.as_ptr().add(gi * ROWS) as *const _);
            for t in 0..TOKENS {
                let gsum = gs[t][gi];
                let dot = _mm512_sub_epi32(_mm512_add_epi32(even[t], odd[t]), _mm512_set1_epi32(lay.offset * gsum));
                isum[t] = if K_QUANT { _mm512_add_epi32(isum[t], _mm512_mullo_epi32(dot, sc)) } else { dot };
                if K_QUANT && MINS {
                    imin[t] = _mm512_add_epi32(imin[t], _mm512_mullo_epi32(mn, _mm512_set1_epi32(gsum)));
                }
            }
        }
        let d = _mm512_loadu_ps(p.d.as_ptr().add(u * ROWS));
        let dmin = _mm512_loadu_ps(p.dmin.as_ptr().add(u * ROWS));
        for t in 0..TOKENS {
            let da = a[t].d[u];
            // The portable expressions (block_dot_portable), lane-wise.
            let c = if K_QUANT {
                let c = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(da), d), _mm512_cvtepi32_ps(isum[t]));
                _mm512_sub_ps(c, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(da), dmin), _mm512_cvtepi32_ps(imin[t])))
            } else {
                let c = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, _mm512_set1_ps(da)));
                if MINS {
                    _mm512_add_ps(c, _mm512_mul_ps(dmin, _mm512_set1_ps(da * a[t].block_sum(u) as f32)))
                } else {
                    c
                }
            };
            let l = &mut lanes[t][u % 16];
            *l = _mm512_add_ps(*l, c);
        }
    }
    for (t, lanes) in lanes.iter_mut().enumerate().take(nt) {
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                lanes[i] = _mm512_add_ps(lanes[i], lanes[i + w]);
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr().add(t * ROWS), lanes[0]);
    }
}
