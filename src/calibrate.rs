//! Calibration: run the float model over representative tokens and record, per linear input,
//! what the integer path needs. Max |x| and the 99.9th percentile choose the static activation
//! scale; per-channel maxima and per-channel counts of elements beyond the p99.9 value are what
//! shadow outlier execution and layer pruning build on. Saved as JSON beside the model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{ActivationObserver, LinearInput, Logits, Transformer};
use crate::stats::ActivationStats;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointCalibration {
    pub layer: usize,
    /// attn_in, o_in, ffn_in or down_in
    pub point: String,
    pub max_abs: f32,
    pub p999: f32,
    pub channel_max: Vec<f32>,
    /// per channel: elements with |x| above `p999`
    pub outlier_counts: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub version: u32,
    /// what the tokens were ("random tokens, seed 0", "text: FILE")
    pub source: String,
    pub tokens: usize,
    pub points: Vec<PointCalibration>,
}

/// Counts, per channel, elements beyond a per-point threshold (second calibration pass).
struct OutlierCounter {
    thresholds: HashMap<(usize, u8), f32>,
    counts: HashMap<(usize, u8), Vec<u32>>,
}

impl ActivationObserver for OutlierCounter {
    fn observe(&mut self, layer: usize, point: LinearInput, x: &mut [f32], cols: usize) {
        let key = (layer, point as u8);
        let t = self.thresholds[&key];
        let c = self.counts.entry(key).or_insert_with(|| vec![0; cols]);
        for row in x.chunks_exact(cols) {
            for (n, &v) in c.iter_mut().zip(row) {
                *n += u32::from(v.abs() > t);
            }
        }
    }
}

impl Calibration {
    /// Calibrates on `tokens`, run in windows of at most `window` tokens. `progress(done, total)`
    /// counts windows over both passes.
    pub fn run(model: &Transformer, tokens: &[u32], window: usize, source: String, progress: &dyn Fn(usize, usize)) -> Result<Self> {
        if tokens.len() < 2 {
            return Err(Error::Input("calibration needs at least 2 tokens".into()));
        }
        if window == 0 {
            return Err(Error::Input("--window must be at least 1".into()));
        }
        let windows: Vec<&[u32]> = tokens.chunks(window.min(model.config.max_seq_len)).collect();
        let total = 2 * windows.len();
        let mut stats = ActivationStats::default();
        for (i, w) in windows.iter().enumerate() {
            model.forward_observed(w, &mut model.new_cache(w.len()), Logits::Last, Some(&mut stats))?;
            progress(i + 1, total);
        }
        let thresholds = stats.points.iter().map(|(k, (_, ps))| (*k, ps.percentile(0.999))).collect();
        let mut counter = OutlierCounter { thresholds, counts: HashMap::new() };
        for (i, w) in windows.iter().enumerate() {
            model.forward_observed(w, &mut model.new_cache(w.len()), Logits::Last, Some(&mut counter))?;
            progress(windows.len() + i + 1, total);
        }
        for (key, (point, ps)) in &stats.points {
            let (max, p999) = (ps.max_abs(), counter.thresholds[key]);
            if !max.is_finite() || !p999.is_finite() {
                return Err(Error::Input(format!("layer {} {}: activations are not finite (max {max}, p99.9 {p999}); the model overflows in f32", key.0, point.name())));
            }
        }
        let points = stats
            .points
            .iter()
            .map(|(key, (point, ps))| PointCalibration {
                layer: key.0,
                point: point.name().to_string(),
                max_abs: ps.max_abs(),
                p999: counter.thresholds[key],
                channel_max: ps.channel_max.clone(),
                outlier_counts: counter.counts.remove(key).unwrap_or_default(),
            })
            .collect();
        Ok(Calibration { version: FORMAT_VERSION, source, tokens: tokens.len(), points })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("calibration serializes");
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Calibration = serde_json::from_str(&text).map_err(|e| Error::corrupt(path, format!("not a calibration file: {e}")))?;
        if c.version != FORMAT_VERSION {
            return Err(Error::field(path, "version", format!("{} (this build reads {FORMAT_VERSION}); run llm-npu calibrate again", c.version)));
        }
        Ok(c)
    }

    /// Checks that the file covers every layer and input of `model`, with that input's width
    /// and usable values.
    pub fn check_against(&self, model: &Transformer, path: &Path) -> Result<()> {
        let index = self.index();
        let c = &model.config;
        for layer in 0..c.num_layers {
            for point in LinearInput::ALL {
                let field = || format!("layer {layer} {}", point.name());
                let Some(p) = index.get(&(layer, point.name())) else {
                    return Err(Error::field(path, field(), "missing: the calibration is for another model"));
                };
                let width = match point {
                    LinearInput::Attn | LinearInput::Ffn => c.hidden_size,
                    LinearInput::O => c.q_dim(),
                    LinearInput::Down => c.intermediate_size,
                };
                if p.channel_max.len() != width || p.outlier_counts.len() != width {
                    return Err(Error::field(path, field(), format!("{} channels, the model has {width}: the calibration is for another model", p.channel_max.len())));
                }
                if !(p.max_abs.is_finite() && p.max_abs >= 1e-30 && p.p999.is_finite() && p.p999 >= 0.0) {
                    return Err(Error::field(path, field(), format!("unusable values (max {}, p99.9 {})", p.max_abs, p.p999)));
                }
            }
        }
        Ok(())
    }

    fn index(&self) -> BTreeMap<(usize, &str), &PointCalibration> {
        self.points.iter().map(|p| ((p.layer, p.point.as_str()), p)).collect()
    }

    pub fn point(&self, layer: usize, point: LinearInput) -> Option<&PointCalibration> {
        self.points.iter().find(|p| p.layer == layer && p.point == point.name())
    }
}

/// Where a model's calibration lives by default: `<folder>/llm-npu-calibration.json` for an HF
/// folder, `<file>.llm-npu-calibration.json` beside a single-file model.
pub fn default_path(model: &Path) -> PathBuf {
    crate::format::beside_model(model, "calibration")
}
