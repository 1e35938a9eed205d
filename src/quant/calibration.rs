//! Calibration: run the float model over representative tokens and record, per linear input,
//! what the integer path needs. Max |x| and the 99.9th percentile choose the static activation
//! scale; per-channel maxima and per-channel counts of elements beyond the p99.9 value are what
//! shadow outlier execution and layer pruning build on. The largest |W x| of every linear gives
//! the static output scales of accelerators whose graphs emit 8-bit outputs (QNN's HTP). Saved as
//! JSON beside the model.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use super::stats::ActivationStats;
use crate::model::transformer::{FloatLinears, LinearExecutor};
use crate::model::{ActivationObserver, LinearGroup, Logits, Transformer};
use crate::util::Progress;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointCalibration {
    pub layer: usize,
    /// The linear group whose input this is (written attn_in, o_in, ffn_in or down_in).
    pub point: LinearGroup,
    pub max_abs: f32,
    pub p999: f32,
    pub channel_max: Vec<f32>,
    /// per channel: elements with |x| above `p999`
    pub outlier_counts: Vec<u32>,
    /// per linear of the group, in output order, per output channel: the largest |W x| (bias
    /// and residual not included). Empty in files written before output ranges were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_max: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub version: u32,
    /// what the tokens were ("random tokens, seed 0", "text: FILE")
    pub source: String,
    pub tokens: usize,
    pub points: Vec<PointCalibration>,
    /// The model a kept random-token calibration was made for (`keep_random_fallback`), so
    /// that the cache's sweep can drop those of models that are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

/// Counts, per channel, elements beyond a per-point threshold (second calibration pass).
struct OutlierCounter {
    thresholds: HashMap<(usize, LinearGroup), f32>,
    counts: HashMap<(usize, LinearGroup), Vec<u32>>,
}

impl ActivationObserver for OutlierCounter {
    fn observe(&mut self, layer: usize, group: LinearGroup, x: &mut [f32], cols: usize) {
        let key = (layer, group);
        let t = self.thresholds[&key];
        let c = self.counts.entry(key).or_insert_with(|| vec![0; cols]);
        for row in x.chunks_exact(cols) {
            for (n, &v) in c.iter_mut().zip(row) {
                *n += u32::from(v.abs() > t);
            }
        }
    }
}

/// The float linears, recording the largest |W x| of every output channel of every linear.
struct OutputRanges<'m> {
    model: &'m Transformer,
    max: RefCell<HashMap<(usize, LinearGroup), Vec<Vec<f32>>>>,
}

impl LinearExecutor for OutputRanges<'_> {
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        // A residual group adds into its output: W x is what changed.
        let before = group.adds_to_residual().then(|| outputs[0].to_vec());
        FloatLinears(self.model).run(layer, group, input, m, outputs)?;
        let linears = self.model.layers[layer].linears(group);
        let mut all = self.max.borrow_mut();
        let maxes = all.entry((layer, group)).or_insert_with(|| linears.iter().map(|l| vec![0.0; l.out_features()]).collect());
        for ((out, lin), max) in outputs.iter().zip(&linears).zip(maxes.iter_mut()) {
            let n = lin.out_features();
            let bias = lin.bias.as_ref().map(|b| b.data());
            for (i, &y) in out.iter().enumerate() {
                let wx = y - before.as_ref().map_or(0.0, |b| b[i]) - bias.map_or(0.0, |b| b[i % n]);
                max[i % n] = max[i % n].max(wx.abs());
            }
        }
        Ok(())
    }
}

impl Calibration {
    /// Calibrates on `tokens`, run in windows of at most `window` tokens (progress: windows over
    /// both passes).
    pub fn run(model: &Transformer, tokens: &[u32], window: usize, source: String, progress: &dyn Progress) -> Result<Self> {
        if tokens.len() < 2 {
            return Err(Error::Input("calibration needs at least 2 tokens".into()));
        }
        if window == 0 {
            return Err(Error::Input("the calibration window must be at least 1 token".into()));
        }
        let windows: Vec<&[u32]> = tokens.chunks(window.min(model.config.max_seq_len)).collect();
        let total = 2 * windows.len() as u64;
        progress.start("calibrating", "passes", total);
        let mut stats = ActivationStats::default();
        let outputs = OutputRanges { model, max: RefCell::default() };
        for w in &windows {
            model.hidden_states(&outputs, w, &mut model.new_cache(w.len()), Some(&mut stats))?;
            progress.step();
        }
        let mut output_max = outputs.max.into_inner();
        let thresholds = stats.points.iter().map(|(k, ps)| (*k, ps.percentile(0.999))).collect();
        let mut counter = OutlierCounter { thresholds, counts: HashMap::new() };
        for w in &windows {
            model.forward_observed(w, &mut model.new_cache(w.len()), Logits::Last, Some(&mut counter))?;
            progress.step();
        }
        progress.finish();
        for (&(layer, group), ps) in &stats.points {
            let (max, p999) = (ps.max_abs(), counter.thresholds[&(layer, group)]);
            if !max.is_finite() || !p999.is_finite() {
                return Err(Error::Input(format!("layer {layer} {}: activations are not finite (max {max}, p99.9 {p999}); the model overflows in f32", group.input_name())));
            }
        }
        let points = stats
            .points
            .iter()
            .map(|(&key, ps)| PointCalibration {
                layer: key.0,
                point: key.1,
                max_abs: ps.max_abs(),
                p999: counter.thresholds[&key],
                channel_max: ps.channel_max.clone(),
                outlier_counts: counter.counts.remove(&key).unwrap_or_default(),
                output_max: output_max.remove(&key).unwrap_or_default(),
            })
            .collect();
        Ok(Calibration { version: FORMAT_VERSION, source, tokens: tokens.len(), points, model: None })
    }

    /// Calibrates on `n` random tokens in windows of 512 (what the npu backend falls back to
    /// without a calibration file, and what `demo` uses on its random-weight model).
    pub fn on_random_tokens(model: &Transformer, n: usize, seed: u64, progress: &dyn Progress) -> Result<Self> {
        let tokens = crate::util::random_tokens(model.config.vocab_size, n, seed);
        Self::run(model, &tokens, 512, format!("random tokens, seed {seed}"), progress)
    }

    /// Whether the file records the output ranges of the linears (files before them do not).
    pub fn has_output_ranges(&self) -> bool {
        self.points.iter().all(|p| !p.output_max.is_empty())
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
            for group in LinearGroup::ALL {
                let field = || format!("layer {layer} {}", group.input_name());
                let Some(p) = index.get(&(layer, group)) else {
                    return Err(Error::field(path, field(), "missing: the calibration is for another model"));
                };
                let width = group.in_features(c);
                if p.channel_max.len() != width || p.outlier_counts.len() != width {
                    return Err(Error::field(path, field(), format!("{} channels, the model has {width}: the calibration is for another model", p.channel_max.len())));
                }
                let outputs = group.out_features(c);
                let fits = p.output_max.len() == outputs.len() && p.output_max.iter().zip(&outputs).all(|(m, &n)| m.len() == n && m.iter().all(|v| v.is_finite() && *v >= 0.0));
                if !p.output_max.is_empty() && !fits {
                    return Err(Error::field(path, field(), format!("output ranges do not fit the group's {} linears of {outputs:?} channels, or are not finite", outputs.len())));
                }
                if !(p.max_abs.is_finite() && p.max_abs >= 1e-30 && p.p999.is_finite() && p.p999 >= 0.0) {
                    return Err(Error::field(path, field(), format!("unusable values (max {}, p99.9 {})", p.max_abs, p.p999)));
                }
            }
        }
        Ok(())
    }

    fn index(&self) -> BTreeMap<(usize, LinearGroup), &PointCalibration> {
        self.points.iter().map(|p| ((p.layer, p.point), p)).collect()
    }

    pub fn point(&self, layer: usize, group: LinearGroup) -> Option<&PointCalibration> {
        self.points.iter().find(|p| p.layer == layer && p.point == group)
    }
}

/// Where the npu backend keeps the calibration on random tokens it falls back to, so later runs
/// skip it: llm-npu's cache folder (`util::cache_dir`), never beside the model, which may be
/// read-only or shared. Named `<model>-<build>.json` (`util::cached_for_model`): a changed model,
/// or a new build, whose calibration may differ, calibrates anew. None where there is no cache
/// folder or the model cannot be read.
pub fn random_fallback_cache(model: &Path) -> Option<PathBuf> {
    crate::util::cached_for_model("calibration-random", model, "", "json")
}

/// At most this many bytes of kept random-token calibrations (a few KB to a few MB each).
const KEPT_BUDGET: u64 = 256 << 20;

/// Saves the calibration of `model` at `path` (from `random_fallback_cache`) whole or not at
/// all, and removes what other builds kept for the same model (`util::keep_cached`), then those
/// of models that are gone and, over `KEPT_BUDGET`, the least recently used (`util::sweep_kept`).
pub fn keep_random_fallback(calibration: &Calibration, model: &Path, path: &Path) -> Result<()> {
    let kept = Calibration { model: Some(model.canonicalize().unwrap_or_else(|_| model.to_path_buf())), ..calibration.clone() };
    crate::util::keep_cached(path, |partial| kept.save(partial))?;
    if let Some(dir) = path.parent() {
        crate::util::sweep_kept(dir, path, "json", KEPT_BUDGET, |p| Calibration::load(p).ok().and_then(|c| c.model));
    }
    Ok(())
}

/// Where a model's calibration lives by default: `<folder>/llm-npu-calibration.json` for an HF
/// folder, `<file>.llm-npu-calibration.json` beside a single-file model.
pub fn default_path(model: &Path) -> PathBuf {
    crate::util::beside_model(model, "calibration")
}
