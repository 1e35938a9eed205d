//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/models` beside the checkout, or None after a loud SKIPPED line: tests that need
/// the real model files must never pass silently when they are absent.
pub fn shared_models(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLM_NPU_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("\n*** SKIPPED {test}: {} not found (set LLM_NPU_SHARED_MODELS) ***\n", dir.display());
        None
    }
}
