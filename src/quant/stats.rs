//! Activation statistics at every linear-layer input: what `inspect --activation-stats` prints
//! and what calibration (scales, outlier channels) is built on.

use std::collections::BTreeMap;

use crate::model::{ActivationObserver, LinearGroup};

/// Elements kept per point for the percentile (a strided sample once more were seen: enough for
/// p99.9 to a fraction of a percent, and bounded memory for long calibration runs).
const SAMPLE_CAP: usize = 1 << 22;

/// Running statistics of one linear input.
#[derive(Debug, Clone)]
pub struct PointStats {
    pub channels: usize,
    pub rows: usize,
    /// max |x| per input channel
    pub channel_max: Vec<f32>,
    /// |x| of every `step`-th element seen, for percentiles
    samples: Vec<f32>,
    step: usize,
    seen: usize,
}

impl Default for PointStats {
    fn default() -> Self {
        PointStats { channels: 0, rows: 0, channel_max: Vec::new(), samples: Vec::new(), step: 1, seen: 0 }
    }
}

impl PointStats {
    fn add(&mut self, x: &[f32], cols: usize) {
        if self.channel_max.is_empty() {
            self.channels = cols;
            self.channel_max = vec![0.0; cols];
        }
        for row in x.chunks_exact(cols) {
            for (m, &v) in self.channel_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        self.rows += x.len() / cols;
        for &v in x {
            if self.seen % self.step == 0 {
                self.samples.push(v.abs());
                if self.samples.len() >= SAMPLE_CAP {
                    // Full: keep every other sample and sample half as often from now on.
                    let mut i = 0;
                    self.samples.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    self.step *= 2;
                }
            }
            self.seen += 1;
        }
    }

    pub fn max_abs(&self) -> f32 {
        self.channel_max.iter().copied().fold(0.0, f32::max)
    }

    /// The q-quantile of |x| (q in [0, 1]) over the sampled elements.
    pub fn percentile(&self, q: f64) -> f32 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut s = self.samples.clone();
        let i = ((s.len() - 1) as f64 * q).round() as usize;
        *s.select_nth_unstable_by(i, f32::total_cmp).1
    }

    /// Median over channels of their max |x|: the typical channel's largest value.
    pub fn median_channel_max(&self) -> f32 {
        if self.channel_max.is_empty() {
            return 0.0;
        }
        let mut m = self.channel_max.clone();
        let mid = m.len() / 2;
        *m.select_nth_unstable_by(mid, f32::total_cmp).1
    }

    /// Outlier channels: max |x| beyond `factor` x the median channel's max, largest first.
    /// (Against the median element instead, heavy-tailed inputs such as silu(gate) * up would
    /// flag most channels; against the typical channel only the systematic outliers stand out.)
    pub fn outlier_channels(&self, factor: f32) -> Vec<usize> {
        let threshold = factor * self.median_channel_max();
        let mut c: Vec<usize> = (0..self.channels).filter(|&i| self.channel_max[i] > threshold).collect();
        c.sort_by(|&a, &b| self.channel_max[b].total_cmp(&self.channel_max[a]));
        c
    }
}

/// Statistics of every (layer, linear input) seen in forward passes.
#[derive(Debug, Default)]
pub struct ActivationStats {
    /// (layer, group) -> statistics of the group's input.
    pub points: BTreeMap<(usize, LinearGroup), PointStats>,
}

impl ActivationObserver for ActivationStats {
    fn observe(&mut self, layer: usize, group: LinearGroup, x: &mut [f32], cols: usize) {
        self.points.entry((layer, group)).or_default().add(x, cols);
    }
}
