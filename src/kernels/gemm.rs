//! Blocked f32 GEMM for linear layers: y[m, n] = sum_k x[m, k] * w[n, k]. Where AMX-BF16 is, the
//! same product runs on split bf16 tiles (`gemm_split`, as accurate, faster); this file is the
//! AVX-512 FMA kernel used elsewhere, and the choice (`best_f32_kernel`).
//!
//! The weights stay exactly as stored ([out, in] rows, possibly memory-mapped): no prepacked copy
//! of the model. The activations are packed once per call into panels of `MR` tokens, k-major
//! (`packed[p][k][i] = x[p*MR + i][k]`). Each task takes `NC` weight rows and, per k-block,
//! packs their `KC`-long slices into micro-panels of `NR` rows, k-major (`[k][j]`: row j's
//! element k), which the microkernel loads as two 16-lane vectors. The microkernel broadcasts the
//! MR tokens' values one by one against them: its 2 x MR accumulators are MR rows of 32 outputs,
//! stored straight into y (masked at the edges). Threads split the weight rows, so each writes
//! its own columns of y.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::disjoint::DisjointWrites;
use super::{simd_level, SimdLevel};

/// Tokens per microkernel tile (broadcast operand).
pub const MR: usize = 12;
/// Output features per microkernel tile (two 16-lane registers).
pub const NR: usize = 32;
/// Weight rows per parallel task (a multiple of NR).
#[cfg(target_arch = "x86_64")]
const NC: usize = 4 * NR;
/// Depth of one k-block.
#[cfg(target_arch = "x86_64")]
const KC: usize = 256;

/// The f32 GEMM's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Kernel {
    Portable,
    /// AVX-512 FMA, the 12 x 32 microkernel below.
    Fma,
    /// AMX-BF16 tiles on operands split into bf16 parts (`gemm_split`), as accurate.
    SplitTiles,
}

/// The best f32 GEMM here (detected once): split tiles where they run (`bf16_split::tiles_run`),
/// else FMA on AVX-512. `LLM_NPU_F32_GEMM=fma` keeps the FMA kernel on an AMX machine, to
/// compare them.
pub fn best_f32_kernel() -> F32Kernel {
    static K: std::sync::OnceLock<F32Kernel> = std::sync::OnceLock::new();
    *K.get_or_init(|| match simd_level() {
        SimdLevel::Portable => F32Kernel::Portable,
        SimdLevel::Avx512 if super::bf16_split::tiles_run() && std::env::var("LLM_NPU_F32_GEMM").map_or(true, |v| v != "fma") => F32Kernel::SplitTiles,
        SimdLevel::Avx512 => F32Kernel::Fma,
    })
}

/// Activations packed once for the GEMM kernel that will use them (several weights can share one
/// packing).
pub struct PackedF32Acts(Packed);

enum Packed {
    /// The rows as given, for the portable GEMM (the only one off x86-64).
    Portable { x: Vec<f32>, m: usize, k: usize },
    #[cfg(target_arch = "x86_64")]
    Fma(FmaActs),
    #[cfg(target_arch = "x86_64")]
    Split(super::gemm_split::SplitActs),
}

impl PackedF32Acts {
    /// For the best kernel for m tokens here (`best_f32_kernel()`, FMA below the split tiles'
    /// `MIN_TOKENS`).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let kernel = match best_f32_kernel() {
            #[cfg(target_arch = "x86_64")]
            F32Kernel::SplitTiles if m < super::gemm_split::MIN_TOKENS => F32Kernel::Fma,
            best => best,
        };
        Self::with_kernel(x, m, k, kernel)
    }

    /// For `kernel`, which must run here (tests and benches compare them).
    pub fn with_kernel(x: &[f32], m: usize, k: usize, kernel: F32Kernel) -> Self {
        assert_eq!(x.len(), m * k);
        PackedF32Acts(match kernel {
            F32Kernel::Portable => Packed::Portable { x: x.to_vec(), m, k },
            #[cfg(target_arch = "x86_64")]
            F32Kernel::SplitTiles => Packed::Split(super::gemm_split::SplitActs::new(x, m, k)),
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Fma => Packed::Fma(FmaActs::new(x, m, k)),
            #[cfg(not(target_arch = "x86_64"))]
            F32Kernel::SplitTiles | F32Kernel::Fma => panic!("the {kernel:?} f32 GEMM needs x86-64"),
        })
    }
}

/// Activations packed into MR-token panels, k-major, zero-padded to a whole panel.
#[cfg(target_arch = "x86_64")]
struct FmaActs {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

#[cfg(target_arch = "x86_64")]
impl FmaActs {
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k);
        let panels = m.div_ceil(MR);
        let mut data = vec![0f32; panels * k * MR];
        let simd = simd_level() == SimdLevel::Avx512;
        // k = 0 leaves nothing to pack (and chunks of 0 would panic).
        data.par_chunks_mut((k * MR).max(1)).enumerate().for_each(|(p, panel)| {
            let tokens = MR.min(m - p * MR);
            let rows = &x[p * MR * k..(p * MR + tokens) * k];
            // 16 k-columns at a time through the transpose (12 of its 16 lanes stored), the rest one by one.
            let full_k = if simd { k - k % 16 } else { 0 };
            for kk0 in (0..full_k).step_by(16) {
                // SAFETY: `tokens` rows hold columns kk0..kk0+16; the 16 masked stores of MR floats
                // at kk0*MR + c*MR stay inside the panel; avx512f was detected.
                unsafe { transpose16_avx512(rows.as_ptr().add(kk0), k, tokens, panel.as_mut_ptr().add(kk0 * MR), MR, (1 << MR) - 1) };
            }
            for i in 0..tokens {
                for kk in full_k..k {
                    panel[kk * MR + i] = rows[i * k + kk];
                }
            }
        });
        FmaActs { data, m, k }
    }

    fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * MR..(p + 1) * self.k * MR]
    }
}

/// y[m, n] = x[m, k] . w[n, k]^T with the best kernel for this CPU.
/// With `accumulate`, y += x . w^T (a fused residual add).
pub fn gemm_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    match best_f32_kernel() {
        // No packing to share: spare the copy.
        F32Kernel::Portable => gemm_nt_portable(x, m, k, w, n, y, accumulate),
        _ => gemm_packed(&PackedF32Acts::new(x, m, k), w, n, y, accumulate),
    }
}

/// Portable reference: one dot product per output element, threads over weight rows.
pub fn gemm_nt_portable(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    assert_eq!(y.len(), m * n);
    let mut yt = vec![0f32; n * m];
    // m = 0: nothing to compute (and chunks of 0 would panic).
    yt.par_chunks_mut(m.max(1)).enumerate().for_each(|(r, col)| {
        let wr = &w[r * k..(r + 1) * k];
        for (i, c) in col.iter_mut().enumerate() {
            *c = super::matvec::dot_portable(&x[i * k..(i + 1) * k], wr);
        }
    });
    for r in 0..n {
        for c in 0..m {
            y[c * n + r] = if accumulate { y[c * n + r] + yt[r * m + c] } else { yt[r * m + c] };
        }
    }
}

/// outs[i] = x . ws[i].0^T for ws[i] = (weights, n): a linear group (q/k/v, gate/up) on one
/// packing (the split tiles in one parallel loop over all the group's columns).
pub fn gemm_packed_many(xp: &PackedF32Acts, ws: &[(&[f32], usize)], outs: &mut [&mut [f32]]) {
    match &xp.0 {
        #[cfg(target_arch = "x86_64")]
        Packed::Split(xs) => super::gemm_split::gemm_many(xs, ws, outs, false),
        _ => {
            for ((w, n), y) in ws.iter().zip(outs.iter_mut()) {
                gemm_packed(xp, w, *n, y, false);
            }
        }
    }
}

/// y = x . w^T (or y += with `accumulate`) for already packed activations (lets several weights share one packing).
pub fn gemm_packed(xp: &PackedF32Acts, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    match &xp.0 {
        Packed::Portable { x, m, k } => gemm_nt_portable(x, *m, *k, w, n, y, accumulate),
        #[cfg(target_arch = "x86_64")]
        Packed::Fma(xp) => gemm_fma(xp, w, n, y, accumulate),
        #[cfg(target_arch = "x86_64")]
        Packed::Split(xs) => super::gemm_split::gemm(xs, w, n, y, accumulate),
    }
}

#[cfg(target_arch = "x86_64")]
fn gemm_fma(xp: &FmaActs, w: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
    // The microkernel and packing below are AVX-512 code: never run them on another CPU.
    assert_eq!(simd_level(), SimdLevel::Avx512, "gemm_packed needs AVX-512; use gemm_nt");
    let (m, k) = (xp.m, xp.k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), m * n);
    if k == 0 {
        // No k-block would run to write y: the empty sum is 0.
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    let y_out = DisjointWrites::new(y);
    (0..n.div_ceil(NC)).into_par_iter().for_each_init(Vec::new, |wpack: &mut Vec<f32>, b| {
        let n0 = b * NC;
        let rows = NC.min(n - n0);
        block(xp, &w[n0 * k..(n0 + rows) * k], rows, wpack, y_out, n, n0, accumulate);
    });
}

/// One task: `rows` weight rows (output columns n0..n0+rows of y) against all token panels.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn block(xp: &FmaActs, w: &[f32], rows: usize, wpack: &mut Vec<f32>, y: DisjointWrites, ldy: usize, n0: usize, accumulate: bool) {
    let (m, k) = (xp.m, xp.k);
    let micro = rows.div_ceil(NR);
    wpack.clear();
    wpack.resize(micro * NR * KC.min(k), 0.0);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        pack_weights(&w[k0..], k, rows, kc, &mut wpack[..micro * NR * kc]);
        for p in 0..xp.panels() {
            let xpanel = &xp.panel(p)[k0 * MR..(k0 + kc) * MR];
            let tokens = MR.min(m - p * MR);
            for j in 0..micro {
                let cols = NR.min(rows - j * NR);
                let wt = &wpack[j * kc * NR..(j + 1) * kc * NR];
                // SAFETY: the panels hold kc x MR and kc x NR floats; the tile's `tokens` rows and
                // `cols` columns lie inside y and belong to this task; avx512f was detected.
                unsafe {
                    let out = y.ptr().add(p * MR * ldy + n0 + j * NR);
                    kernel_avx512(xpanel.as_ptr(), wt.as_ptr(), kc, out, ldy, tokens, cols, accumulate || k0 > 0)
                }
            }
        }
    }
}

/// wpack[j][kk][r] = w[j*NR + r][kk] for kk < kc (w rows have stride `ldw`); rows past `rows`
/// stay zero. Full 16 x 16 blocks go through an AVX-512 transpose, the edges element by element.
#[cfg(target_arch = "x86_64")]
fn pack_weights(w: &[f32], ldw: usize, rows: usize, kc: usize, wpack: &mut [f32]) {
    let (full_rows, full_k) = (rows - rows % 16, kc - kc % 16);
    for r0 in (0..full_rows).step_by(16) {
        let (j, half) = (r0 / NR, (r0 % NR) / 16);
        for kk0 in (0..full_k).step_by(16) {
            let dst = j * kc * NR + kk0 * NR + half * 16;
            // SAFETY: rows r0..r0+16 hold columns kk0..kk0+16 (< kc <= ldw), and the 16 stores of
            // 16 floats at dst + c*NR stay inside micro-panel j; avx512f was detected.
            unsafe { transpose16_avx512(w.as_ptr().add(r0 * ldw + kk0), ldw, 16, wpack.as_mut_ptr().add(dst), NR, 0xFFFF) };
        }
    }
    let mut scalar = |r: usize, ks: std::ops::Range<usize>| {
        let (j, rr) = (r / NR, r % NR);
        for kk in ks {
            wpack[j * kc * NR + kk * NR + rr] = w[r * ldw + kk];
        }
    };
    for r in 0..full_rows {
        scalar(r, full_k..kc);
    }
    for r in full_rows..rows {
        scalar(r, 0..kc);
    }
    // Rows between `rows` and the end of the last micro-panel must be zero, not stale.
    for r in rows..rows.next_multiple_of(NR) {
        let (j, rr) = (r / NR, r % NR);
        for kk in 0..kc {
            wpack[j * kc * NR + kk * NR + rr] = 0.0;
        }
    }
}

/// Transposes a 16 x 16 block: row i of `src` (stride `lds`) becomes column i of `dst` (stride
/// `ldd`). Rows from `rows` on read as zero; only the lanes in `mask` of each output row are stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16_avx512(src: *const f32, lds: usize, rows: usize, dst: *mut f32, ldd: usize, mask: u16) {
    use std::arch::x86_64::*;
    let r: [__m512; 16] = std::array::from_fn(|i| if i < rows { _mm512_loadu_ps(src.add(i * lds)) } else { _mm512_setzero_ps() });
    // Per 128-bit lane: interleave rows in pairs, then in fours: u[4g + c] holds, in lane L,
    // column 4L + c of rows 4g..4g+4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);
        let t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
        let t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
        let t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
        let pd = |a: __m512, b: __m512, hi: bool| {
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_castpd_ps(if hi { _mm512_unpackhi_pd(a, b) } else { _mm512_unpacklo_pd(a, b) })
        };
        u[4 * g] = pd(t0, t2, false);
        u[4 * g + 1] = pd(t0, t2, true);
        u[4 * g + 2] = pd(t1, t3, false);
        u[4 * g + 3] = pd(t1, t3, true);
    }
    // Gather lane L of u[c], u[4+c], u[8+c], u[12+c] into output column 4L + c.
    for c in 0..4 {
        let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let w = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        _mm512_mask_storeu_ps(dst.add(c * ldd), mask, _mm512_shuffle_f32x4::<0x88>(v, v2));
        _mm512_mask_storeu_ps(dst.add((4 + c) * ldd), mask, _mm512_shuffle_f32x4::<0x88>(w, w2));
        _mm512_mask_storeu_ps(dst.add((8 + c) * ldd), mask, _mm512_shuffle_f32x4::<0xDD>(v, v2));
        _mm512_mask_storeu_ps(dst.add((12 + c) * ldd), mask, _mm512_shuffle_f32x4::<0xDD>(w, w2));
    }
}

/// The MR x NR microkernel: per k step, two 16-lane loads of packed weights and MR broadcasts
/// of token values; 2 x MR = 24 accumulators + 2 weight registers fit the 32 zmm registers.
/// Stores `tokens` rows of `cols` outputs (adding to what is there when `acc`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512(xp: *const f32, wp: *const f32, kc: usize, y: *mut f32, ldy: usize, tokens: usize, cols: usize, acc: bool) {
    use std::arch::x86_64::*;
    use super::ops::first_lanes;
    let (mask0, mask1) = (first_lanes(cols), first_lanes(cols.saturating_sub(16)));
    let mut c0 = [_mm512_setzero_ps(); MR];
    let mut c1 = [_mm512_setzero_ps(); MR];
    if acc {
        for i in 0..MR {
            if i < tokens {
                c0[i] = _mm512_maskz_loadu_ps(mask0, y.add(i * ldy));
                c1[i] = _mm512_maskz_loadu_ps(mask1, y.add(i * ldy + 16));
            }
        }
    }
    // One k step: two weight vectors against MR broadcast token values.
    let mut step = |kk: usize| {
        let b0 = _mm512_loadu_ps(wp.add(kk * NR));
        let b1 = _mm512_loadu_ps(wp.add(kk * NR + 16));
        let xk = xp.add(kk * MR);
        for i in 0..MR {
            let a = _mm512_set1_ps(*xk.add(i));
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
    };
    // Four steps per loop trip: the loop's own scalar work no longer takes issue slots from the
    // FMAs (12x32 in L1: 178 -> 191-204 GFLOP/s on one thread with weights streaming from L2).
    let unrolled = kc - kc % 4;
    for kk in (0..unrolled).step_by(4) {
        step(kk);
        step(kk + 1);
        step(kk + 2);
        step(kk + 3);
    }
    for kk in unrolled..kc {
        step(kk);
    }
    for i in 0..MR {
        if i < tokens {
            _mm512_mask_storeu_ps(y.add(i * ldy), mask0, c0[i]);
            _mm512_mask_storeu_ps(y.add(i * ldy + 16), mask1, c1[i]);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// n values in -1..1 from a seeded generator (the split GEMM's tests use it too).
    pub(in crate::kernels) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn simd_gemm_matches_portable_on_edge_shapes() {
        if simd_level() != SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU; only the portable GEMM runs here");
            return;
        }
        // Shapes around every blocking boundary: MR, NR, NC, KC tails, and tiny ones.
        let shapes = [(2, 1, 1), (2, 3, 5), (31, 17, 13), (32, 256, 12), (33, 257, 97), (64, 512, 96), (5, 300, 200), (70, 64, 130), (12, 40, 128), (13, 513, 161), (24, 16, 32)];
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let x = rand_vec(m * k, si as u64);
            let w = rand_vec(n * k, 100 + si as u64);
            let mut y_simd = vec![0f32; m * n];
            let mut y_ref = vec![0f32; m * n];
            gemm_packed(&PackedF32Acts::with_kernel(&x, m, k, F32Kernel::Fma), &w, n, &mut y_simd, false);
            gemm_nt_portable(&x, m, k, &w, n, &mut y_ref, false);
            for (a, b) in y_simd.iter().zip(&y_ref) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "shape {m}x{k}x{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn every_linear_path_matches_the_portable_gemm() {
        // m = 1 (matvec), 2..SMALL_BATCH (multi-row matvec), larger (GEMM) against one reference.
        for m in [1, 2, 5, crate::kernels::SMALL_BATCH, 40] {
            let (k, n) = (70, 33);
            let x = rand_vec(m * k, m as u64);
            let w = rand_vec(n * k, 99);
            let mut y = vec![0f32; m * n];
            let mut y_ref = vec![0f32; m * n];
            crate::kernels::linear(&x, m, k, &w, n, &mut y);
            gemm_nt_portable(&x, m, k, &w, n, &mut y_ref, false);
            // Accumulating adds the product to what y holds: the fused residual.
            let mut z: Vec<f32> = y_ref.iter().map(|v| v * 0.5 - 1.0).collect();
            let z0 = z.clone();
            crate::kernels::linear_accumulate(&x, m, k, &w, n, &mut z);
            for ((zi, z0i), yi) in z.iter().zip(&z0).zip(&y_ref) {
                assert!((zi - (z0i + yi)).abs() <= 1e-4 * (1.0 + yi.abs()), "m={m} accumulate: {zi} vs {}", z0i + yi);
            }
            for (a, b) in y.iter().zip(&y_ref) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "m={m}: {a} vs {b}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn weight_packing_matches_its_definition() {
        if simd_level() != SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        for (rows, kc, ldw) in [(128, 256, 300), (37, 19, 40), (16, 16, 16), (5, 33, 33), (100, 48, 48)] {
            let w = rand_vec(rows * ldw, rows as u64);
            let mut got = vec![f32::NAN; rows.div_ceil(NR) * NR * kc];
            pack_weights(&w, ldw, rows, kc, &mut got);
            for r in 0..rows.next_multiple_of(NR) {
                for kk in 0..kc {
                    let want = if r < rows { w[r * ldw + kk] } else { 0.0 };
                    assert_eq!(got[(r / NR) * kc * NR + kk * NR + r % NR], want, "rows={rows} kc={kc} r={r} kk={kk}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_dot_matches_portable() {
        if simd_level() != SimdLevel::Avx512 {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        for n in [0, 1, 15, 16, 17, 63, 64, 65, 200, 2048] {
            let a = rand_vec(n, n as u64);
            let b = rand_vec(n, 7 + n as u64);
            let s = unsafe { crate::kernels::matvec::dot_avx512(&a, &b) };
            let r = crate::kernels::matvec::dot_portable(&a, &b);
            assert!((s - r).abs() <= 1e-4 * (1.0 + r.abs()), "n={n}: {s} vs {r}");
        }
    }
}
