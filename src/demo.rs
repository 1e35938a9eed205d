//! Where `llm-npu demo` keeps its synthetic reference model.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `$LLM_NPU_CACHE`, else `$XDG_CACHE_HOME/llm-npu`, else `~/.cache/llm-npu`, plus the model's name.
pub fn reference_model_dir() -> Result<PathBuf> {
    let base = if let Some(d) = std::env::var_os("LLM_NPU_CACHE") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("llm-npu")
    } else if let Some(h) = std::env::var_os("HOME") {
        PathBuf::from(h).join(".cache/llm-npu")
    } else {
        return Err(Error::Input("no cache folder: set LLM_NPU_CACHE".into()));
    };
    Ok(base.join(format!("synth/tinyllama-1.1b-f32-outliers-paper-seed0-recipe{}", crate::synth::RECIPE_VERSION)))
}

/// True when a previous synthesis finished (the weights file is renamed into place last).
pub fn is_complete(dir: &Path) -> bool {
    ["config.json", "tokenizer.json", "synth.json", "model.safetensors"].iter().all(|f| dir.join(f).is_file())
}
