//! Blocked f32 GEMM for linear layers: y[m, n] = sum_k x[m, k] * w[n, k].
//!
//! The weights stay exactly as stored ([out, in] rows, possibly memory-mapped): no prepacked copy
//! of the model. The activations are packed once per call into panels of `NR` tokens laid out
//! k-major (`packed[p][k][j] = x[p*NR + j][k]`). Each task takes `NC` weight rows and, per k-block,
//! copies their `MR x KC` slices into a small contiguous buffer (k-major, MR-interleaved): reading
//! 12 rows straight from the matrix would touch 12 addresses 4*K bytes apart, which fall into the
//! same L1 set and evict each other. The microkernel computes an `MR x NR` tile of y^T: one packed
//! weight column broadcast against one 32-token panel row per k step. Tiles accumulate in a
//! per-task buffer (contiguous along tokens) that is transposed into y at the end.

use rayon::prelude::*;

use super::{simd_level, SimdLevel};

/// Weight rows per microkernel tile.
pub const MR: usize = 12;
/// Tokens per panel (two 16-lane registers).
pub const NR: usize = 32;
/// Weight rows per parallel task (a multiple of MR).
const NC: usize = 8 * MR;
/// Depth of one k-block: the panel slice (KC x NR floats) stays in L1 across the tile loop.
const KC: usize = 256;

/// Activations packed into NR-token panels, k-major, zero-padded to a whole panel.
pub struct PackedActs {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedActs {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k);
        let panels = m.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        data.par_chunks_mut(k * NR).enumerate().for_each(|(p, panel)| {
            for j in 0..NR.min(m - p * NR) {
                let row = &x[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        });
        PackedActs { data, m, k }
    }

    fn panels(&self) -> usize {
        self.m.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// y[m, n] = x[m, k] . w[n, k]^T with the best kernel for this CPU.
pub fn gemm_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    match simd_level() {
        SimdLevel::Avx512 => gemm_packed(&PackedActs::new(x, m, k), w, n, y),
        SimdLevel::Portable => gemm_nt_portable(x, m, k, w, n, y),
    }
}

/// Portable reference: one dot product per output element, threads over weight rows.
pub fn gemm_nt_portable(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(y.len(), m * n);
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(m).enumerate().for_each(|(r, col)| {
        let wr = &w[r * k..(r + 1) * k];
        for (i, c) in col.iter_mut().enumerate() {
            *c = super::matvec::dot_portable(&x[i * k..(i + 1) * k], wr);
        }
    });
    transpose_into(&yt, n, m, y, n, 0);
}

/// y[:, col0 .. col0 + rows] = src^T for src [rows, cols] (cols = tokens).
fn transpose_into(src: &[f32], rows: usize, cols: usize, y: &mut [f32], ldy: usize, col0: usize) {
    for r in 0..rows {
        for c in 0..cols {
            y[c * ldy + col0 + r] = src[r * cols + c];
        }
    }
}

/// y = x . w^T for already packed activations (lets several weights share one packing).
pub fn gemm_packed(xp: &PackedActs, w: &[f32], n: usize, y: &mut [f32]) {
    let (m, k) = (xp.m, xp.k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), m * n);
    let m_pad = xp.panels() * NR;
    let y_out = SharedOut(y.as_mut_ptr());
    // Each task computes its block of y^T (rows padded to MR) and writes it into its own columns
    // of y, so no serial pass over y remains after the join.
    (0..n.div_ceil(NC)).into_par_iter().for_each_init(Vec::new, |ct: &mut Vec<f32>, b| {
        let n0 = b * NC;
        let rows = NC.min(n - n0);
        ct.clear();
        ct.resize(rows.next_multiple_of(MR) * m_pad, 0.0);
        block(xp, &w[n0 * k..(n0 + rows) * k], rows, ct, m_pad);
        for c in 0..m {
            for r in 0..rows {
                // SAFETY: y has m * n elements; column ranges n0..n0+rows are disjoint per task.
                unsafe { *y_out.at(c * n + n0 + r) = ct[r * m_pad + c] };
            }
        }
    });
}

/// The output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements only (see gemm_packed).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` must be in bounds and no other task may access element `i` concurrently.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// One block of `rows` weight rows against all token panels, k-blocked.
fn block(xp: &PackedActs, w: &[f32], rows: usize, ct: &mut [f32], ldc: usize) {
    let k = xp.k;
    let tiles = rows.div_ceil(MR);
    let mut wpack = vec![0f32; tiles * MR * KC.min(k)];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        // wpack[t][kk][i] = w[t*MR + i][k0 + kk]; rows past `rows` stay zero.
        for r in 0..rows {
            let (t, i) = (r / MR, r % MR);
            let dst = &mut wpack[t * kc * MR..(t + 1) * kc * MR];
            for (kk, &v) in w[r * k + k0..r * k + k0 + kc].iter().enumerate() {
                dst[kk * MR + i] = v;
            }
        }
        for p in 0..xp.panels() {
            let panel = &xp.panel(p)[k0 * NR..(k0 + kc) * NR];
            for t in 0..tiles {
                let wt = &wpack[t * kc * MR..(t + 1) * kc * MR];
                let c = &mut ct[t * MR * ldc + p * NR..];
                // SAFETY: wt holds kc x MR floats, the panel kc x NR, and c has MR rows of
                // ldc >= NR floats from here; the CPU has avx512f (checked by simd_level).
                unsafe { kernel_avx512(wt.as_ptr(), panel.as_ptr(), kc, c.as_mut_ptr(), ldc, k0 > 0) };
            }
        }
    }
}

/// The MR x NR microkernel: one packed weight column (MR values, broadcast one by one) times one
/// 32-token panel row per k step. 2*MR = 24 accumulators + 2 panel registers fit the 32 zmm.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(w: *const f32, xp: *const f32, kc: usize, c: *mut f32, ldc: usize, acc: bool) {
    use std::arch::x86_64::*;
    let mut c0 = [_mm512_setzero_ps(); MR];
    let mut c1 = [_mm512_setzero_ps(); MR];
    if acc {
        for i in 0..MR {
            c0[i] = _mm512_loadu_ps(c.add(i * ldc));
            c1[i] = _mm512_loadu_ps(c.add(i * ldc + 16));
        }
    }
    for kk in 0..kc {
        let b0 = _mm512_loadu_ps(xp.add(kk * NR));
        let b1 = _mm512_loadu_ps(xp.add(kk * NR + 16));
        let wk = w.add(kk * MR);
        for i in 0..MR {
            let a = _mm512_set1_ps(*wk.add(i));
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
    }
    for i in 0..MR {
        _mm512_storeu_ps(c.add(i * ldc), c0[i]);
        _mm512_storeu_ps(c.add(i * ldc + 16), c1[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
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
        let shapes = [(2, 1, 1), (2, 3, 5), (31, 17, 13), (32, 256, 12), (33, 257, 97), (64, 512, 96), (5, 300, 200), (70, 64, 130)];
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let x = rand_vec(m * k, si as u64);
            let w = rand_vec(n * k, 100 + si as u64);
            let mut y_simd = vec![0f32; m * n];
            let mut y_ref = vec![0f32; m * n];
            gemm_packed(&PackedActs::new(&x, m, k), &w, n, &mut y_simd);
            gemm_nt_portable(&x, m, k, &w, n, &mut y_ref);
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
            gemm_nt_portable(&x, m, k, &w, n, &mut y_ref);
            for (a, b) in y.iter().zip(&y_ref) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "m={m}: {a} vs {b}");
            }
        }
    }

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
