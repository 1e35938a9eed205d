//! Shadow outlier execution (llm.npu's tensor-level idea). A linear input quantized with a
//! static scale s loses the elements with |x / s| > 127 to clipping. The accelerator computes
//! dequant(clip(round(x / s)) . W_int8) as always; at the same time the CPU finds the clipped
//! elements with a plain compare and multiplies their float remainder x - s * clip(round(x / s))
//! with the matching float weight columns. The sum is the unclipped product up to rounding.
//!
//! - Outliers are rare (0.1% of elements at a p99.9 scale), so the shadow is a sparse product:
//!   per row with outliers, a few rank-1 updates of length n.
//! - Hot channels (the few that cause most outliers, from calibration) keep their weight columns
//!   resident and contiguous; any other channel's column is read from the (memory-mapped) float
//!   weights when an outlier needs it.
//! - `plan` decides per input which scale and whether shadow work is done at all (layer pruning).

pub mod plan;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use crate::kernels::disjoint::DisjointWrites;
use crate::kernels::ops::{axpy, find_beyond, weighted_sum};
use crate::kernels::quantize::{quantize_value, QMAX};
use crate::tensor::Tensor;
pub use plan::{LayerPlan, PointPlan, ScaleRule, ShadowOptions, ShadowPlan};

/// The clipped elements of a [rows, k] input, grouped by row (CSR over the rows that have any).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outliers {
    /// Rows with at least one outlier, ascending.
    pub rows: Vec<u32>,
    /// Row i's outliers are `cols[start[i]..start[i + 1]]`.
    pub start: Vec<u32>,
    pub cols: Vec<u32>,
    /// x - s * clip(round(x / s)): what the accelerator's int8 input misses.
    pub remainders: Vec<f32>,
}

impl Outliers {
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Finds the elements of `x` ([rows][k]) that `scale` clips, keeping those `keep` accepts.
    /// Blocks of rows are searched in parallel (a serial search left the second core idle for 2%
    /// of a prefill) and joined in row order.
    pub fn extract(x: &[f32], k: usize, scale: f32, keep: impl Fn(u32) -> bool + Sync) -> Self {
        const ROWS_PER_TASK: usize = 16;
        let inv = 1.0 / scale;
        let blocks: Vec<Outliers> = x
            .par_chunks((ROWS_PER_TASK * k).max(1))
            .enumerate()
            .map(|(b, rows)| {
                let mut o = Outliers { start: vec![0], ..Default::default() };
                let mut found = Vec::new();
                for (r, row) in rows.chunks_exact(k.max(1)).enumerate() {
                    found.clear();
                    find_beyond(row, inv, QMAX, &mut found);
                    let before = o.cols.len();
                    for &c in found.iter().filter(|&&c| keep(c)) {
                        let v = row[c as usize];
                        o.cols.push(c);
                        // The same quantization the accelerator applies, so the two parts add up.
                        o.remainders.push(v - scale * quantize_value(v, inv) as f32);
                    }
                    if o.cols.len() > before {
                        o.rows.push((b * ROWS_PER_TASK + r) as u32);
                        o.start.push(o.cols.len() as u32);
                    }
                }
                o
            })
            .collect();
        let mut all = Outliers { start: vec![0], ..Default::default() };
        for o in blocks {
            let base = all.cols.len() as u32;
            all.rows.extend(o.rows);
            all.start.extend(o.start[1..].iter().map(|s| s + base));
            all.cols.extend(o.cols);
            all.remainders.extend(o.remainders);
        }
        all
    }

    /// Indices (into `cols` and `remainders`) of row slot i's outliers.
    fn row(&self, i: usize) -> std::ops::Range<usize> {
        self.start[i] as usize..self.start[i + 1] as usize
    }
}

/// The float weights of one linear layer that reads a shadowed input.
struct ShadowWeights {
    /// [n, k], PyTorch layout; memory-mapped as stored (f32 or encoded), never copied.
    weight: Tensor,
    n: usize,
    k: usize,
    /// Column c of the weight for every hot channel, contiguous: [hot][n].
    hot_columns: Vec<f32>,
}

impl ShadowWeights {
    fn new(weight: &Tensor, hot: &[u32]) -> Self {
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let mut hot_columns = vec![0f32; hot.len() * n];
        weight.gather_columns(hot, &mut hot_columns);
        ShadowWeights { weight: weight.clone(), n, k, hot_columns }
    }
}

const COLD: u32 = u32::MAX;

/// Running totals of shadow work at one input.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    outliers: AtomicU64,
    cold: AtomicU64,
    dropped: AtomicU64,
}

/// What shadow work an input (or a layer) has done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShadowWork {
    /// Executions that found at least one outlier.
    pub calls: u64,
    /// Outlier elements computed in float.
    pub outliers: u64,
    /// Of those, the ones whose weight column was read from the float weights on demand.
    pub cold: u64,
    /// Outliers clipped without shadow work (hot-only mode).
    pub dropped: u64,
}

impl std::ops::AddAssign for ShadowWork {
    fn add_assign(&mut self, o: Self) {
        self.calls += o.calls;
        self.outliers += o.outliers;
        self.cold += o.cold;
        self.dropped += o.dropped;
    }
}

/// The shadow side of one quantized linear input: its static scale, its hot set and the float
/// weights of every linear reading it (q/k/v share one input, gate/up another).
pub struct ShadowPoint {
    scale: f32,
    k: usize,
    /// Per input channel: its row in every `hot_columns`, or COLD.
    hot_slot: Vec<u32>,
    hot_only: bool,
    linears: Vec<ShadowWeights>,
    counters: Counters,
    /// Columns of cold channels kept once read (every linear's, concatenated), up to
    /// `WARM_CHANNELS` channels: a cold channel's column is n reads a cache line (and often a
    /// page) apart, 5% of a prefill when read anew at every call, and the same channels recur.
    warm: Vec<OnceLock<Box<[f32]>>>,
    warm_count: AtomicUsize,
    /// Where each linear's column starts in a warm entry.
    warm_offsets: Vec<usize>,
}

/// Cold channels per input whose columns are kept after their first use.
const WARM_CHANNELS: usize = 32;

/// Shadow results waiting to be merged: for each linear, one dense row per input row with
/// outliers.
pub struct ShadowDelta {
    rows: Vec<u32>,
    per_linear: Vec<Vec<f32>>,
}

/// Buffers for shadow results, reused from call to call: a prefill chunk's results are
/// megabytes, and fresh allocations would fault in zeroed pages every time.
#[derive(Default)]
pub struct BufferPool(Mutex<Vec<Vec<f32>>>);

impl BufferPool {
    /// A buffer of at least `len` values (contents unspecified).
    fn take(&self, len: usize) -> Vec<f32> {
        let mut v = self.0.lock().unwrap().pop().unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        v
    }

    fn give(&self, v: Vec<f32>) {
        self.0.lock().unwrap().push(v);
    }
}

impl ShadowPoint {
    /// `weights` are the [n_i, k] float weights of the linears reading this input, in the order
    /// of the accelerator graph's outputs.
    pub fn new(plan: &PointPlan, weights: &[&Tensor], hot_only: bool) -> Self {
        let k = weights[0].shape()[1];
        let mut hot_slot = vec![COLD; k];
        for (slot, &c) in plan.hot.iter().enumerate() {
            hot_slot[c as usize] = slot as u32;
        }
        let linears: Vec<ShadowWeights> = weights.iter().map(|w| ShadowWeights::new(w, &plan.hot)).collect();
        let warm_offsets = linears.iter().scan(0, |at, l| Some(std::mem::replace(at, *at + l.n))).collect();
        ShadowPoint { scale: plan.scale, k, hot_slot, hot_only, linears, counters: Counters::default(), warm: (0..k).map(|_| OnceLock::new()).collect(), warm_count: AtomicUsize::new(0), warm_offsets }
    }

    /// Bytes of float weight columns kept resident (the hot set, and the cold channels' columns
    /// kept so far).
    pub fn resident_bytes(&self) -> usize {
        let hot: usize = self.linears.iter().map(|l| l.hot_columns.len() * 4).sum();
        let per_warm: usize = self.linears.iter().map(|l| l.n * 4).sum();
        hot + self.warm_count.load(Relaxed) * per_warm
    }

    /// Keeps the columns of `cold` channels not yet kept, while the budget lasts; returns the
    /// channels still to be read for this call alone.
    fn warm_up(&self, mut cold: Vec<u32>) -> Vec<u32> {
        let room = WARM_CHANNELS.saturating_sub(self.warm_count.load(Relaxed)).min(cold.len());
        let rest = cold.split_off(room);
        let new = cold;
        if new.is_empty() {
            return rest;
        }
        let gathered: Vec<Vec<f32>> = self
            .linears
            .iter()
            .map(|lin| {
                let mut columns = vec![0f32; new.len() * lin.n];
                lin.weight.gather_columns(&new, &mut columns);
                columns
            })
            .collect();
        for (i, &ch) in new.iter().enumerate() {
            let entry: Box<[f32]> = self.linears.iter().zip(&gathered).flat_map(|(lin, g)| g[i * lin.n..(i + 1) * lin.n].iter().copied()).collect();
            // Two calls racing to keep the same channel: the first one's copy stays.
            if self.warm[ch as usize].set(entry).is_ok() {
                self.warm_count.fetch_add(1, Relaxed);
            }
        }
        rest
    }

    /// Bytes that keeping every channel's columns resident would take (all the float weights).
    pub fn all_columns_bytes(&self) -> usize {
        self.linears.iter().map(|l| l.n * l.k * 4).sum()
    }

    pub fn work(&self) -> ShadowWork {
        let c = &self.counters;
        ShadowWork { calls: c.calls.load(Relaxed), outliers: c.outliers.load(Relaxed), cold: c.cold.load(Relaxed), dropped: c.dropped.load(Relaxed) }
    }

    /// The clipped elements of `x` ([m][k]) that this input computes in float.
    pub fn outliers(&self, x: &[f32]) -> Outliers {
        Outliers::extract(x, self.k, self.scale, |c| {
            let keep = !self.hot_only || self.hot_slot[c as usize] != COLD;
            if !keep {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
            keep
        })
    }

    /// The outliers of `x` ([m][k]) and, sorted and distinct, the cold channels among them
    /// (counted in the work totals). None when nothing was clipped.
    fn find(&self, x: &[f32]) -> Option<(Outliers, Vec<u32>)> {
        let o = self.outliers(x);
        if o.is_empty() {
            return None;
        }
        let mut cold: Vec<u32> = o.cols.iter().copied().filter(|&c| self.hot_slot[c as usize] == COLD && self.warm[c as usize].get().is_none()).collect();
        let cold_elems = cold.len();
        cold.sort_unstable();
        cold.dedup();
        let c = &self.counters;
        c.calls.fetch_add(1, Relaxed);
        c.outliers.fetch_add(o.len() as u64, Relaxed);
        c.cold.fetch_add(cold_elems as u64, Relaxed);
        let cold = self.warm_up(cold);
        Some((o, cold))
    }

    /// For every linear li and row slot i with outliers, `sum(li, i, terms)` with the row's
    /// (remainder, weight column) pairs, all linears' rows in one parallel loop (one wait for
    /// the threads per input, not per linear); the `cold` channels' columns are gathered here.
    fn each_row(&self, o: &Outliers, cold: &[u32], sum: impl Fn(usize, usize, &[(f32, &[f32])]) + Sync) {
        let cold_columns: Vec<Vec<f32>> = self
            .linears
            .iter()
            .map(|lin| {
                let mut columns = vec![0f32; cold.len() * lin.n];
                lin.weight.gather_columns(cold, &mut columns);
                columns
            })
            .collect();
        let column = |li: usize, ch: u32| -> &[f32] {
            let lin = &self.linears[li];
            let n = lin.n;
            match self.hot_slot[ch as usize] {
                COLD => match self.warm[ch as usize].get() {
                    Some(kept) => &kept[self.warm_offsets[li]..self.warm_offsets[li] + n],
                    None => {
                        let i = cold.binary_search(&ch).expect("cold channel gathered");
                        &cold_columns[li][i * n..(i + 1) * n]
                    }
                },
                slot => &lin.hot_columns[slot as usize * n..(slot as usize + 1) * n],
            }
        };
        let rows = o.rows.len();
        (0..self.linears.len() * rows).into_par_iter().for_each_init(Vec::new, |terms, at| {
            let (li, i) = (at / rows, at % rows);
            terms.clear();
            terms.extend(o.row(i).map(|e| (o.remainders[e], column(li, o.cols[e]))));
            sum(li, i, terms);
        });
    }

    /// The shadow product of `x` ([m][k], the same input the accelerator quantizes): for each
    /// linear, remainder . W over the outliers, as dense rows for the rows that have any, to be
    /// merged when the accelerator is done. None when nothing was clipped.
    pub fn compute(&self, x: &[f32], pool: &BufferPool) -> Option<ShadowDelta> {
        let (o, cold) = self.find(x)?;
        let mut per_linear: Vec<Vec<f32>> = self.linears.iter().map(|lin| pool.take(o.rows.len() * lin.n)).collect();
        let deltas: Vec<DisjointWrites> = per_linear.iter_mut().map(|d| DisjointWrites::new(d)).collect();
        // The sum writes the whole row, so reused buffers need no clearing.
        // SAFETY: each (linear, row slot) is visited once, and its n values lie inside that
        // linear's delta (o.rows.len() rows of n).
        self.each_row(&o, &cold, |li, i, terms| {
            let n = self.linears[li].n;
            weighted_sum(unsafe { deltas[li].slice(i * n, n) }, terms, false)
        });
        Some(ShadowDelta { rows: o.rows, per_linear })
    }

    /// Adds the shadow results into the accelerator's outputs (`outputs[i]`: [m][n_i]).
    pub fn merge(&self, delta: ShadowDelta, outputs: &mut [&mut [f32]], pool: &BufferPool) {
        // Output row -> its row in the delta, or COLD (no outliers).
        let rows = outputs.first().map_or(0, |o| o.len() / self.linears[0].n);
        let mut slot = vec![COLD; rows];
        for (i, &r) in delta.rows.iter().enumerate() {
            slot[r as usize] = i as u32;
        }
        for ((lin, out), d) in self.linears.iter().zip(outputs.iter_mut()).zip(delta.per_linear) {
            let n = lin.n;
            out.par_chunks_mut(n).zip(slot.par_iter()).filter(|(_, &s)| s != COLD).for_each(|(row, &s)| {
                axpy(row, 1.0, &d[s as usize * n..(s as usize + 1) * n]);
            });
            pool.give(d);
        }
    }

    /// The shadow product added straight into the accelerator's finished outputs (`outputs[i]`:
    /// [m][n_i]), for when nothing runs meanwhile (decode, or an accelerator on the CPU's own
    /// cores): each output row is read and written once, with no delta buffer between.
    pub fn apply(&self, x: &[f32], outputs: &mut [&mut [f32]]) {
        let Some((o, cold)) = self.find(x) else { return };
        assert_eq!(outputs.len(), self.linears.len(), "one output per linear");
        for (lin, out) in self.linears.iter().zip(outputs.iter()) {
            assert!(o.rows.last().is_none_or(|&r| (r as usize + 1) * lin.n <= out.len()), "shadow rows beyond the output");
        }
        let outs: Vec<DisjointWrites> = outputs.iter_mut().map(|out| DisjointWrites::new(out)).collect();
        // SAFETY: the outlier rows are distinct and inside each output (checked above).
        self.each_row(&o, &cold, |li, i, terms| {
            let n = self.linears[li].n;
            weighted_sum(unsafe { outs[li].slice(o.rows[i] as usize * n, n) }, terms, true)
        });
    }
}


#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kernels::int8_gemm::best_kernel;
    use crate::model::LinearGroup;
    use crate::quant::{w8a8, Int8Linear, WeightGranularity};

    /// Pseudo-random integer in -r..=r.
    fn int(i: usize, r: i64) -> f32 {
        let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((h >> 33) as i64 % (2 * r + 1) - r) as f32
    }

    fn plan_with_hot(group: LinearGroup, scale: f32, hot: Vec<u32>) -> PointPlan {
        PointPlan { group, rule: ScaleRule::P999Shadow, scale, clip: 127.0 * scale, max_abs: 0.0, p999: 0.0, outlier_channels: hot.len(), hot, hot_share: 1.0 }
    }

    #[test]
    fn extraction_finds_exactly_the_planted_elements() {
        let (m, k, s) = (7, 300, 0.5f32);
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 127) * s * 0.99).collect();
        let planted = [(0usize, 0usize, 64.0f32), (0, 299, -100.0), (3, 17, 63.6), (3, 18, -63.6), (6, 150, 1e4)];
        for &(r, c, v) in &planted {
            x[r * k + c] = v;
        }
        // Exactly at the limit (127 * s) is not clipped.
        x[5 * k + 5] = 63.5;
        let o = Outliers::extract(&x, k, s, |_| true);
        assert_eq!(o.rows, vec![0, 3, 6]);
        assert_eq!(o.start, vec![0, 2, 4, 5]);
        assert_eq!(o.cols, vec![0, 299, 17, 18, 150]);
        for (e, &(_, _, v)) in planted.iter().enumerate() {
            let want = v - v.signum() * 127.0 * s;
            assert!((o.remainders[e] - want).abs() <= 1e-6 * v.abs(), "{e}: {} vs {want}", o.remainders[e]);
        }
        let hot_only = Outliers::extract(&x, k, s, |c| c == 150);
        assert_eq!((hot_only.rows, hot_only.cols), (vec![6], vec![150]));
    }

    #[test]
    fn extraction_over_many_row_blocks_keeps_row_order() {
        // Rows in several parallel blocks (16 rows each), outliers in some of them.
        let (m, k, s) = (50, 40, 1.0f32);
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 100)).collect();
        let planted: Vec<(usize, usize)> = vec![(0, 1), (15, 39), (16, 0), (16, 5), (31, 7), (33, 33), (49, 20)];
        for (e, &(r, c)) in planted.iter().enumerate() {
            x[r * k + c] = 200.0 + e as f32;
        }
        let o = Outliers::extract(&x, k, s, |_| true);
        assert_eq!(o.rows, vec![0, 15, 16, 31, 33, 49]);
        assert_eq!(o.start, vec![0, 1, 2, 4, 5, 6, 7]);
        assert_eq!(o.cols, planted.iter().map(|&(_, c)| c as u32).collect::<Vec<_>>());
        for (e, r) in o.remainders.iter().enumerate() {
            assert_eq!(*r, 200.0 + e as f32 - 127.0);
        }
    }

    #[test]
    fn int8_part_plus_shadow_part_equals_the_float_product() {
        // Normal activations and weights are exact multiples of their scales, so the int8 part is
        // exact and the only thing W8A8 loses is the clipped outliers: the shadow must restore them.
        let (m, k, n) = (9, 96, 40);
        let (s, sw) = (0.25f32, 1.0 / 64.0);
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 127) * s).collect();
        for &(r, c, v) in &[(1usize, 3usize, 200.0f32), (1, 50, -75.25), (4, 3, 33.0), (8, 95, -1000.0), (8, 0, 40.0)] {
            x[r * k + c] = v;
        }
        let mut w: Vec<f32> = (0..n * k).map(|i| int(i + 7, 127) * sw).collect();
        w[5] = 127.0 * sw; // the weight max, so the per-tensor weight scale is exactly sw
        let reference: Vec<f32> = (0..m * n).map(|i| (0..k).map(|c| x[(i / n) * k + c] as f64 * w[(i % n) * k + c] as f64).sum::<f64>() as f32).collect();

        let lin = Arc::new(Int8Linear::new(&w, n, k, None, WeightGranularity::PerTensor));
        let mut y = vec![0f32; m * n];
        w8a8(best_kernel(), &x, m, s, &[lin], false, &mut [&mut y]);
        let int8_only = y.clone();
        let weight = Tensor::from_vec(vec![n, k], w.clone());
        for hot in [vec![], vec![3], vec![3, 50, 95, 0]] {
            let sp = ShadowPoint::new(&plan_with_hot(LinearGroup::Qkv, s, hot.clone()), &[&weight], false);
            let mut z = int8_only.clone();
            sp.apply(&x, &mut [&mut z]);
            let err = z.iter().zip(&reference).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
            assert!(err < 1e-5, "hot {hot:?}: relative error {err}");
            let work = sp.work();
            assert_eq!((work.calls, work.outliers), (1, 5));
            assert_eq!(work.cold, [5, 3, 0][hot.len().min(2)], "hot {hot:?}");
        }
        let clipped_err = int8_only.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(clipped_err > 1.0, "the planted outliers must matter ({clipped_err})");

        // Hot-only: the cold outliers stay clipped and are counted as dropped.
        let sp = ShadowPoint::new(&plan_with_hot(LinearGroup::Qkv, s, vec![3]), &[&weight], true);
        let mut z = int8_only.clone();
        sp.apply(&x, &mut [&mut z]);
        assert_eq!(sp.work(), ShadowWork { calls: 1, outliers: 2, cold: 0, dropped: 3 });
        let row4 = 4 * n..5 * n; // row 4 only had a hot outlier: exact
        assert!(z[row4.clone()].iter().zip(&reference[row4]).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())));
    }

    #[test]
    fn several_linears_and_a_residual_output_are_merged() {
        let (m, k) = (3, 32);
        let s = 0.1f32;
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 100) * s).collect();
        x[k + 7] = 50.0;
        let (wa, wb) = (Tensor::from_vec(vec![5, k], (0..5 * k).map(|i| int(i, 9) * 0.1).collect()), Tensor::from_vec(vec![4, k], (0..4 * k).map(|i| int(i + 1, 9) * 0.1).collect()));
        let sp = ShadowPoint::new(&plan_with_hot(LinearGroup::GateUp, s, vec![]), &[&wa, &wb], false);
        let (mut a, mut b) = (vec![1f32; m * 5], vec![2f32; m * 4]);
        sp.apply(&x, &mut [&mut a, &mut b]);
        let r = 50.0 - 12.7;
        for j in 0..5 {
            assert!((a[5 + j] - (1.0 + r * wa.data()[j * k + 7])).abs() < 1e-5);
            assert_eq!((a[j], a[10 + j]), (1.0, 1.0), "rows without outliers are untouched");
        }
        for j in 0..4 {
            assert!((b[4 + j] - (2.0 + r * wb.data()[j * k + 7])).abs() < 1e-5);
        }
    }

    #[test]
    fn cold_columns_are_kept_up_to_the_budget_and_give_the_same_sums() {
        // Outliers in WARM_CHANNELS + 8 distinct cold channels (no hot set): the first call keeps
        // WARM_CHANNELS of them, the second reads only the 8 beyond the budget anew, and both
        // calls' sums are the same.
        let (m, k, n) = (48, 64, 24);
        let s = 0.1f32;
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 100) * s).collect();
        let channels = WARM_CHANNELS + 8;
        for ch in 0..channels {
            x[ch * k + ch] = 30.0 + ch as f32;
        }
        let w = Tensor::from_vec(vec![n, k], (0..n * k).map(|i| int(i, 9) * 0.01).collect());
        let sp = ShadowPoint::new(&plan_with_hot(LinearGroup::O, s, vec![]), &[&w], false);
        let before = sp.resident_bytes();
        let start: Vec<f32> = (0..m * n).map(|i| int(i + 3, 50) * 0.1).collect();
        let (mut first, mut second) = (start.clone(), start.clone());
        sp.apply(&x, &mut [&mut first]);
        assert_eq!(sp.work().cold, channels as u64);
        assert_eq!(sp.resident_bytes() - before, WARM_CHANNELS * n * 4);
        sp.apply(&x, &mut [&mut second]);
        assert_eq!(sp.work().cold, channels as u64 + 8, "only the channels beyond the budget are read again");
        assert_eq!(first, second);
        for ch in 0..channels {
            let r = 30.0 + ch as f32 - 12.7;
            for j in 0..n {
                let want = start[ch * n + j] + r * w.data()[j * k + ch];
                assert!((first[ch * n + j] - want).abs() <= 1e-5 * (1.0 + want.abs()), "channel {ch}");
            }
        }
    }

    #[test]
    fn computed_then_merged_equals_added_in_place() {
        // The two ways to run the shadow (beside a separate device; after a graph on the same
        // cores) give the same outputs up to the order of float additions. Hot and cold
        // channels, several outliers per row, rows without any.
        let (m, k, n) = (6, 64, 48);
        let s = 0.05f32;
        let mut x: Vec<f32> = (0..m * k).map(|i| int(i, 120) * s).collect();
        for &(r, c, v) in &[(0usize, 3usize, 40.0f32), (0, 9, -25.0), (0, 50, 12.0), (2, 3, -60.0), (5, 63, 30.0)] {
            x[r * k + c] = v;
        }
        let (wa, wb) = (Tensor::from_vec(vec![n, k], (0..n * k).map(|i| int(i, 9) * 0.01).collect()), Tensor::from_vec(vec![n / 2, k], (0..n / 2 * k).map(|i| int(i + 5, 9) * 0.01).collect()));
        let sp = ShadowPoint::new(&plan_with_hot(LinearGroup::GateUp, s, vec![3]), &[&wa, &wb], false);
        let start_a: Vec<f32> = (0..m * n).map(|i| int(i + 1, 50) * 0.1).collect();
        let start_b: Vec<f32> = (0..m * n / 2).map(|i| int(i + 2, 50) * 0.1).collect();
        let (mut a1, mut b1, mut a2, mut b2) = (start_a.clone(), start_b.clone(), start_a.clone(), start_b.clone());
        let pool = BufferPool::default();
        let delta = sp.compute(&x, &pool).expect("outliers found");
        sp.merge(delta, &mut [&mut a1, &mut b1], &pool);
        sp.apply(&x, &mut [&mut a2, &mut b2]);
        for (got, want) in a2.iter().chain(&b2).zip(a1.iter().chain(&b1)) {
            assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
        }
        assert_ne!(a1, start_a, "the shadow changed something");
        assert_eq!(a2[n..2 * n], start_a[n..2 * n], "row 1 has no outliers");
    }
}
