//! From calibration statistics to per-input decisions: which static scale each linear input gets,
//! whether its outliers go through the shadow path, which channels are hot, and how important
//! each layer is. Pure bookkeeping over the calibration file (no weights), so `inspect
//! --calibration` can print exactly what the npu backend will do.

use crate::quant::calibration::{Calibration, PointCalibration};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::kernels::quantize::scale_for;
use crate::model::LinearGroup;

/// How the npu backend treats activation outliers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowOptions {
    /// Shadow execution at all (`--no-shadow` turns it off: every input gets its max scale).
    pub enabled: bool,
    /// Fraction of layers, most important first, that keep shadow work (`--shadow-keep`).
    pub keep: f32,
    /// An input gets the p99.9 scale plus shadow work only when max |x| > this x p99.9; below
    /// it the max scale loses little resolution and nothing needs a shadow (`--shadow-ratio`).
    pub min_ratio: f32,
    /// Run shadow work only for the hot channels; outliers elsewhere are clipped (an ablation).
    pub hot_only: bool,
    /// Cap on the hot set of an input: this fraction of its channels, or as many channels as fit
    /// in `hot_min_bytes` of float columns, whichever is more.
    pub hot_fraction: f32,
    pub hot_min_bytes: usize,
}

impl Default for ShadowOptions {
    fn default() -> Self {
        ShadowOptions { enabled: true, keep: DEFAULT_KEEP, min_ratio: DEFAULT_MIN_RATIO, hot_only: false, hot_fraction: 0.01, hot_min_bytes: 256 << 10 }
    }
}

/// Chosen by measurement (README, "npu accuracy"): the shadow path costs little, so more layers
/// keep it than the paper's 15%.
pub const DEFAULT_KEEP: f32 = 1.0;
/// Chosen by measurement (README): mllm's rule (64) leaves the moderate outliers of a trained
/// small model to a max scale that rounds its normal activations coarsely.
pub const DEFAULT_MIN_RATIO: f32 = 2.0;

impl ShadowOptions {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.keep) {
            return Err(Error::Input(format!("the fraction of layers that keep shadow work must be in [0, 1], got {}", self.keep)));
        }
        if !(self.min_ratio.is_finite() && self.min_ratio >= 1.0) {
            return Err(Error::Input(format!("the max/p99.9 ratio that calls for shadow work must be at least 1, got {}", self.min_ratio)));
        }
        if !(0.0..=1.0).contains(&self.hot_fraction) {
            return Err(Error::Input(format!("hot-channel fraction must be in [0, 1], got {}", self.hot_fraction)));
        }
        Ok(())
    }
}

/// The rule chosen for one linear input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// Clip at the 99.9th percentile, raised where needed so that every channel that went beyond
    /// it in calibration is hot; clipped elements run in float on the CPU.
    P999Shadow,
    /// Scale from the maximum: nothing is clipped, nothing runs in the shadow.
    Max,
}

#[derive(Debug, Clone)]
pub struct PointPlan {
    pub group: LinearGroup,
    pub rule: ScaleRule,
    /// The static activation scale the accelerator quantizes with (clip threshold / 127).
    pub scale: f32,
    /// |x| beyond which an element is clipped and, with shadow, computed in float.
    pub clip: f32,
    pub max_abs: f32,
    pub p999: f32,
    /// Channels that went beyond the p99.9 in calibration.
    pub outlier_channels: usize,
    /// The hot set: channels whose float weight columns stay resident, largest maximum first.
    /// In calibration no other channel went beyond `clip`.
    pub hot: Vec<u32>,
    /// Share of the calibration elements beyond the p99.9 that fall in hot channels.
    pub hot_share: f32,
}

#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Largest outlier over the clipping threshold (max |x| / p99.9) over the layer's inputs:
    /// how much the layer loses when its outliers are clipped.
    pub importance: f32,
    /// The layer is among the `keep` most important ones.
    pub kept: bool,
    /// One per linear group, in `LinearGroup::ALL` order.
    pub points: Vec<PointPlan>,
}

impl LayerPlan {
    pub fn point(&self, group: LinearGroup) -> &PointPlan {
        &self.points[group.index()]
    }
}

#[derive(Debug, Clone)]
pub struct ShadowPlan {
    pub options: ShadowOptions,
    pub layers: Vec<LayerPlan>,
}

impl ShadowPlan {
    /// Decides every layer's inputs from a calibration (already checked against the model).
    pub fn new(cal: &Calibration, config: &ModelConfig, options: ShadowOptions) -> Result<Self> {
        // Summed output width of the linears reading each input: what one resident column costs.
        let outputs = LinearGroup::ALL.map(|g| g.out_features(config).iter().sum());
        Self::with_widths(cal, config.num_layers, outputs, options)
    }

    /// `new` with the summed output widths of each linear group given directly.
    pub fn with_widths(cal: &Calibration, num_layers: usize, outputs: [usize; 4], options: ShadowOptions) -> Result<Self> {
        options.validate()?;
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let cals: Vec<&PointCalibration> = LinearGroup::ALL
                .iter()
                .map(|&g| cal.point(layer, g).ok_or_else(|| Error::Input(format!("calibration has no entry for layer {layer} {}", g.input_name()))))
                .collect::<Result<_>>()?;
            let importance = cals.iter().map(|c| ratio(c)).fold(0f32, f32::max);
            layers.push((importance, cals.into_iter().zip(outputs).collect::<Vec<_>>()));
        }
        // Rank by importance (ties: earlier layer first) and keep the top fraction.
        let mut order: Vec<usize> = (0..num_layers).collect();
        order.sort_by(|&a, &b| layers[b].0.total_cmp(&layers[a].0).then(a.cmp(&b)));
        let n_keep = if options.enabled { (options.keep as f64 * num_layers as f64).ceil() as usize } else { 0 };
        let mut kept = vec![false; num_layers];
        for &l in order.iter().take(n_keep) {
            kept[l] = true;
        }
        let layers = layers
            .into_iter()
            .zip(kept)
            .map(|((importance, cals), kept)| LayerPlan {
                importance,
                kept,
                points: LinearGroup::ALL.iter().zip(cals).map(|(&g, (c, n))| point_plan(g, c, n, kept, &options)).collect(),
            })
            .collect();
        Ok(ShadowPlan { options, layers })
    }

    pub fn point(&self, layer: usize, group: LinearGroup) -> &PointPlan {
        self.layers[layer].point(group)
    }

    /// Inputs that run shadow work.
    pub fn shadow_points(&self) -> impl Iterator<Item = (usize, &PointPlan)> {
        self.layers.iter().enumerate().flat_map(|(l, lp)| lp.points.iter().filter(|p| p.rule == ScaleRule::P999Shadow).map(move |p| (l, p)))
    }
}

/// max |x| / p99.9, or 0 when the p99.9 is 0 (nothing to clip against).
fn ratio(c: &PointCalibration) -> f32 {
    if c.p999 > 0.0 {
        c.max_abs / c.p999
    } else {
        0.0
    }
}

fn point_plan(group: LinearGroup, c: &PointCalibration, outputs: usize, layer_kept: bool, o: &ShadowOptions) -> PointPlan {
    let k = c.channel_max.len();
    let total: u64 = c.outlier_counts.iter().map(|&n| n as u64).sum();
    let outlier_channels = c.outlier_counts.iter().filter(|&&n| n > 0).count();
    let shadow = layer_kept && c.p999 > 0.0 && ratio(c) > o.min_ratio;
    let (mut hot, mut clip) = (Vec::new(), c.max_abs);
    if shadow {
        // Every channel that went beyond the p99.9 is hot, up to the cap. Past the cap the clip
        // point rises to the largest maximum among the other channels, so elements beyond it
        // stay rare and concentrated in resident columns: a heavy tail spread over hundreds of
        // channels would otherwise send the CPU gathering cold columns all the time.
        let mut by_max: Vec<u32> = (0..k as u32).collect();
        by_max.sort_by(|&a, &b| c.channel_max[b as usize].total_cmp(&c.channel_max[a as usize]).then(a.cmp(&b)));
        let over = by_max.iter().take_while(|&&ch| c.channel_max[ch as usize] > c.p999).count();
        let cap = ((o.hot_fraction as f64 * k as f64).ceil() as usize).max(o.hot_min_bytes / (4 * outputs.max(1)));
        let h = over.min(cap);
        hot = by_max[..h].to_vec();
        clip = c.p999.max(by_max.get(h).map_or(0.0, |&ch| c.channel_max[ch as usize]));
    }
    let covered: u64 = hot.iter().map(|&ch| c.outlier_counts[ch as usize] as u64).sum();
    PointPlan {
        group,
        rule: if shadow { ScaleRule::P999Shadow } else { ScaleRule::Max },
        scale: scale_for(clip),
        clip,
        max_abs: c.max_abs,
        p999: c.p999,
        outlier_channels,
        hot,
        hot_share: if total > 0 { covered as f32 / total as f32 } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A calibration point: `k` channels with maximum 0.5, except `big` (channel, max) pairs;
    /// outlier counts 1 per channel above the p99.9.
    fn point(layer: usize, p: LinearGroup, k: usize, p999: f32, big: &[(usize, f32)]) -> PointCalibration {
        let mut channel_max = vec![0.5f32; k];
        for &(c, v) in big {
            channel_max[c] = v;
        }
        let outlier_counts = channel_max.iter().map(|&m| u32::from(m > p999)).collect();
        PointCalibration { layer, point: p, max_abs: channel_max.iter().copied().fold(0.0, f32::max), p999, channel_max, outlier_counts, output_max: vec![] }
    }

    fn calibration(layers: &[Vec<PointCalibration>]) -> Calibration {
        Calibration { version: crate::quant::calibration::FORMAT_VERSION, source: "test".into(), tokens: 1, points: layers.iter().flatten().cloned().collect(), model: None }
    }

    fn layer(l: usize, k: usize, big: &[(usize, f32)]) -> Vec<PointCalibration> {
        LinearGroup::ALL.iter().map(|&p| point(l, p, k, 0.9, big)).collect()
    }

    #[test]
    fn few_outlier_channels_are_hot_and_the_clip_point_stays_at_the_p999() {
        let cal = calibration(&[layer(0, 1000, &[(7, 50.0), (3, 20.0)])]);
        let plan = ShadowPlan::with_widths(&cal, 1, [64; 4], ShadowOptions { hot_min_bytes: 0, ..Default::default() }).unwrap();
        let p = plan.point(0, LinearGroup::Qkv);
        assert_eq!(p.rule, ScaleRule::P999Shadow);
        assert_eq!(p.hot, vec![7, 3], "largest first");
        assert_eq!(p.clip, 0.9);
        assert_eq!(p.scale, 0.9 / 127.0);
        assert_eq!((p.outlier_channels, p.hot_share), (2, 1.0));
    }

    #[test]
    fn a_tail_spread_over_many_channels_raises_the_clip_point_to_the_cap() {
        // 100 channels beyond the p99.9 in a 1000-channel input: the cap (1%) keeps 10 hot, and
        // the clip point rises to the 11th largest channel maximum.
        let big: Vec<(usize, f32)> = (0..100).map(|i| (i * 10, 2.0 + i as f32)).collect();
        let cal = calibration(&[layer(0, 1000, &big)]);
        let plan = ShadowPlan::with_widths(&cal, 1, [64; 4], ShadowOptions { hot_min_bytes: 0, ..Default::default() }).unwrap();
        let p = plan.point(0, LinearGroup::Down);
        assert_eq!(p.hot, (90..100).rev().map(|i| i * 10).collect::<Vec<u32>>());
        assert_eq!(p.clip, 2.0 + 89.0);
        assert!((p.hot_share - 0.1).abs() < 1e-6);
        // Small inputs keep every such channel: their columns fit the byte allowance.
        let plan = ShadowPlan::with_widths(&cal, 1, [64; 4], ShadowOptions::default()).unwrap();
        assert_eq!((plan.point(0, LinearGroup::Down).hot.len(), plan.point(0, LinearGroup::Down).clip), (100, 0.9));
    }

    #[test]
    fn mild_inputs_use_the_max_scale_and_pruning_keeps_the_most_important_layers() {
        let cal = calibration(&[layer(0, 100, &[(1, 1.5)]), layer(1, 100, &[(1, 30.0)]), layer(2, 100, &[(1, 9.0)]), layer(3, 100, &[(1, 1.2)])]);
        let plan = ShadowPlan::with_widths(&cal, 4, [64; 4], ShadowOptions { keep: 0.5, ..Default::default() }).unwrap();
        let kept: Vec<bool> = plan.layers.iter().map(|l| l.kept).collect();
        assert_eq!(kept, vec![false, true, true, false]);
        assert_eq!(plan.point(1, LinearGroup::O).rule, ScaleRule::P999Shadow);
        assert_eq!(plan.point(0, LinearGroup::O).rule, ScaleRule::Max, "pruned");
        assert_eq!(plan.point(0, LinearGroup::O).scale, 1.5 / 127.0);
        // max/p999 = 1.5 / 0.9 < 2: the max scale even in a kept layer.
        let all = ShadowPlan::with_widths(&cal, 4, [64; 4], ShadowOptions { keep: 1.0, ..Default::default() }).unwrap();
        assert_eq!(all.point(0, LinearGroup::GateUp).rule, ScaleRule::Max);
        assert_eq!(all.shadow_points().count(), 8);
        let off = ShadowPlan::with_widths(&cal, 4, [64; 4], ShadowOptions { enabled: false, ..Default::default() }).unwrap();
        assert_eq!(off.shadow_points().count(), 0);
        assert!(ShadowOptions { keep: 1.5, ..Default::default() }.validate().is_err());
        assert!(ShadowOptions { min_ratio: 0.5, ..Default::default() }.validate().is_err());
    }
}
