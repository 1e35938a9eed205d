//! Where `llm-npu demo` keeps its synthetic reference model.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::quant::calibration::Calibration;
use crate::util::Progress;

/// llm-npu's cache folder (`util::cache_dir`) plus the model's name.
pub fn reference_model_dir() -> Result<PathBuf> {
    let base = crate::util::cache_dir().ok_or_else(|| Error::Input("no cache folder: set LLM_NPU_CACHE".into()))?;
    Ok(base.join(format!("synth/tinyllama-1.1b-f32-outliers-paper-seed0-recipe{}", super::synth::RECIPE_VERSION)))
}

/// True when a previous synthesis finished (the weights file is renamed into place last).
pub fn is_complete(dir: &Path) -> bool {
    ["config.json", "tokenizer.json", "synth.json", "model.safetensors"].iter().all(|f| dir.join(f).is_file())
}

/// Tokens `demo` calibrates on. 2048, not 512: the shadow's clip points sit at the calibration
/// maxima of the ordinary channels, and fewer tokens leave them low enough that new text crosses
/// them often, each time gathering a cold weight column (measured: 3x the cold outliers).
pub const CALIBRATION_TOKENS: usize = 2048;

/// The demo's calibration file beside its model: kept when it covers `CALIBRATION_TOKENS` and has
/// output ranges, made again otherwise (an older demo's). Returns true when it calibrated.
pub fn ensure_calibration(model: &Transformer, dir: &Path, progress: &dyn Progress) -> Result<bool> {
    let path = crate::quant::calibration::default_path(dir);
    if Calibration::load(&path).is_ok_and(|c| c.tokens >= CALIBRATION_TOKENS && c.has_output_ranges()) {
        return Ok(false);
    }
    progress.note(&format!("calibrating the npu backend on {CALIBRATION_TOKENS} random tokens (once, about a minute)"));
    Calibration::on_random_tokens(model, CALIBRATION_TOKENS, 1, progress)?.save(&path)?;
    Ok(true)
}
