//! A rank-r approximation A ~ U V of a [rows, cols] matrix, as BitStack needs for the magnitude
//! of each residual (the paper takes the top r singular triplets of a full SVD).
//!
//! A full SVD of a 5632 x 2048 matrix sixteen times per weight would dominate the decomposition,
//! so this is a randomized subspace iteration (Halko, Martinsson and Tropp 2011): the range of A
//! is found from A times r + OVERSAMPLE random vectors, refined by POWER_ITERATIONS passes of
//! A A^T, and the small projected matrix is diagonalized exactly (Jacobi on its Gram matrix, in
//! f64). All large products run through the f32 GEMM. `tests` compare the result with the best
//! rank-r error, known exactly for matrices built from chosen singular values.

use crate::kernels::{self, sign_blocks::transpose};
use crate::util::Rng;

/// Extra random directions beyond the rank: they catch what the top r miss on a first look.
const OVERSAMPLE: usize = 8;
/// Passes of A A^T: each sharpens the found subspace by the ratio of singular values again.
const POWER_ITERATIONS: usize = 2;

/// The factors of a rank-`rank` approximation: `u` [rows][rank] and `v` [rank][cols], with the
/// singular values split evenly between them (U sqrt(S), sqrt(S) V^T, as the paper stores them).
pub struct LowRank {
    pub u: Vec<f32>,
    pub v: Vec<f32>,
}

/// The rank-`rank` approximation of `a` ([rows][cols], row-major); `rank` is at most
/// min(rows, cols).
pub fn approximate(a: &[f32], rows: usize, cols: usize, rank: usize, seed: u64) -> LowRank {
    assert!(rank >= 1 && rank <= rows.min(cols) && a.len() == rows * cols);
    let l = (rank + OVERSAMPLE).min(rows.min(cols));
    let at = transpose(a, rows, cols);
    // Y^T = (A Omega)^T = Omega^T A^T: l random rows of length cols, times A's rows.
    let mut rng = Rng::new(seed);
    let omega: Vec<f32> = (0..l * cols).map(|_| gaussian(&mut rng)).collect();
    let mut qt = vec![0f32; l * rows];
    kernels::linear(&omega, l, cols, a, rows, &mut qt);
    orthonormalize_rows(&mut qt, rows);
    let mut zt = vec![0f32; l * cols];
    for _ in 0..POWER_ITERATIONS {
        kernels::linear(&qt, l, rows, &at, cols, &mut zt); // (A^T Q)^T
        orthonormalize_rows(&mut zt, cols);
        kernels::linear(&zt, l, cols, a, rows, &mut qt); // (A Z)^T
        orthonormalize_rows(&mut qt, rows);
    }
    // B = Q^T A ([l][cols]); B B^T = E diag(lambda) E^T, so A ~ Q B = (Q E S^1/2)(S^-1/2 E^T B).
    let mut b = vec![0f32; l * cols];
    kernels::linear(&qt, l, rows, &at, cols, &mut b);
    let mut gram = vec![0f64; l * l];
    for i in 0..l {
        for j in 0..=i {
            let g: f64 = b[i * cols..(i + 1) * cols].iter().zip(&b[j * cols..(j + 1) * cols]).map(|(&x, &y)| x as f64 * y as f64).sum();
            gram[i * l + j] = g;
            gram[j * l + i] = g;
        }
    }
    let (lambda, e) = symmetric_eigen(&mut gram, l);
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&x, &y| lambda[y].total_cmp(&lambda[x]));
    let mut u = vec![0f32; rows * rank];
    let mut v = vec![0f32; rank * cols];
    for (c, &k) in order.iter().take(rank).enumerate() {
        let sigma = lambda[k].max(0.0).sqrt();
        if sigma == 0.0 {
            continue; // A has rank below c: that component is 0
        }
        let (up, down) = (sigma.sqrt(), 1.0 / sigma.sqrt());
        for i in 0..rows {
            let x: f64 = (0..l).map(|a| qt[a * rows + i] as f64 * e[a * l + k]).sum();
            u[i * rank + c] = (x * up) as f32;
        }
        for j in 0..cols {
            let x: f64 = (0..l).map(|a| e[a * l + k] * b[a * cols + j] as f64).sum();
            v[c * cols + j] = (x * down) as f32;
        }
    }
    LowRank { u, v }
}

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut Rng) -> f32 {
    let u1 = (rng.next_f32() as f64).max(1e-12);
    let u2 = rng.next_f32() as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Gram-Schmidt (twice, for f32 accuracy) over the rows of `m` ([n][len]); a row that falls to
/// zero (the matrix has lower rank) is left zero.
fn orthonormalize_rows(m: &mut [f32], len: usize) {
    let n = m.len() / len;
    for i in 0..n {
        for _pass in 0..2 {
            for j in 0..i {
                let (done, rest) = m.split_at_mut(i * len);
                let (qj, qi) = (&done[j * len..(j + 1) * len], &mut rest[..len]);
                let d: f64 = qi.iter().zip(qj).map(|(&x, &y)| x as f64 * y as f64).sum();
                qi.iter_mut().zip(qj).for_each(|(x, &y)| *x -= (d as f32) * y);
            }
        }
        let qi = &mut m[i * len..(i + 1) * len];
        let norm = qi.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let inv = if norm > 1e-30 { (1.0 / norm) as f32 } else { 0.0 };
        qi.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Eigenvalues and eigenvectors (columns of the returned [n][n]) of the symmetric `a`
/// (destroyed), by cyclic Jacobi rotations.
fn symmetric_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut e = vec![0f64; n * n];
    (0..n).for_each(|i| e[i * n + i] = 1.0);
    for _sweep in 0..60 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt()); // signum(0) = 1
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (ekp, ekq) = (e[k * n + p], e[k * n + q]);
                    e[k * n + p] = c * ekp - s * ekq;
                    e[k * n + q] = s * ekp + c * ekq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A = P diag(s) Q^T with orthonormal P, Q: the best rank-r error is sqrt(sum of s_i^2, i >= r).
    fn with_singular_values(rows: usize, cols: usize, s: &[f32], seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let k = s.len();
        let mut p: Vec<f32> = (0..k * rows).map(|_| gaussian(&mut rng)).collect();
        let mut q: Vec<f32> = (0..k * cols).map(|_| gaussian(&mut rng)).collect();
        orthonormalize_rows(&mut p, rows);
        orthonormalize_rows(&mut q, cols);
        let mut a = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                a[i * cols + j] = (0..k).map(|c| p[c * rows + i] * s[c] * q[c * cols + j]).sum();
            }
        }
        a
    }

    fn error(a: &[f32], lr: &LowRank, rows: usize, cols: usize, rank: usize) -> f64 {
        let mut e = 0f64;
        for i in 0..rows {
            for j in 0..cols {
                let x: f32 = (0..rank).map(|c| lr.u[i * rank + c] * lr.v[c * cols + j]).sum();
                e += ((a[i * cols + j] - x) as f64).powi(2);
            }
        }
        e.sqrt()
    }

    #[test]
    fn reaches_the_best_rank_r_error() {
        let (rows, cols) = (90, 70);
        let s: Vec<f32> = (0..40).map(|i| 10.0 * 0.8f32.powi(i)).collect();
        let a = with_singular_values(rows, cols, &s, 3);
        for rank in [1, 4, 16] {
            let best = s[rank..].iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let lr = approximate(&a, rows, cols, rank, 7);
            let got = error(&a, &lr, rows, cols, rank);
            assert!(got <= best * 1.02 + 1e-4, "rank {rank}: error {got}, best possible {best}");
        }
        // An exactly low-rank matrix is recovered, and a rank beyond it adds zeros, not noise.
        let a = with_singular_values(rows, cols, &[5.0, 3.0, 1.0], 4);
        let lr = approximate(&a, rows, cols, 3, 1);
        assert!(error(&a, &lr, rows, cols, 3) < 1e-4);
        let lr = approximate(&a, rows, cols, 6, 1);
        assert!(error(&a, &lr, rows, cols, 6) < 1e-4);
        // The smallest shapes: a single row or column, rank 1.
        let row = [3.0f32, -1.0, 2.0];
        assert!(error(&row, &approximate(&row, 1, 3, 1, 0), 1, 3, 1) < 1e-5);
        assert!(error(&row, &approximate(&row, 3, 1, 1, 0), 3, 1, 1) < 1e-5);
    }
}
