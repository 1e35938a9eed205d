//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod server;

use std::io::Write;
use std::path::{Path, PathBuf};

/// `../shared/models` beside the checkout (or $LLM_NPU_SHARED_MODELS), or None after a loud
/// SKIPPED line: tests that need the real model files must never pass silently without them.
pub fn shared_models(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLM_NPU_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    if dir.is_dir() {
        return Some(dir);
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {} not found (set LLM_NPU_SHARED_MODELS); test `{test}` did not run !!!!!!!!\n",
        dir.display()
    );
    None
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// True when ONNX Runtime is there for the ort-cpu accelerator (`ORT_DYLIB_PATH`, which `.ci/run`
/// sets after installing it into a venv); otherwise a loud SKIPPED line.
pub fn onnx_runtime(test: &str) -> bool {
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| Path::new(&p).is_file()) {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: ORT_DYLIB_PATH does not name libonnxruntime.so (pip install onnxruntime==1.32.0; README \"ONNX Runtime\"); test `{test}` did not run !!!!!!!!\n"
    );
    false
}

/// A chat template for stories260K (no roles of its own: the turns' text, system turns followed
/// by a space), written once per test process. Tests run in parallel: rewriting the file while
/// another test's llm-npu read it gave that one an empty template ("the prompt has no tokens").
pub fn story_template() -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let path = std::env::temp_dir().join(format!("llm-npu-story-{}.jinja", std::process::id()));
            std::fs::write(&path, "{% for m in messages %}{{ m.content }}{% if m.role != 'user' %} {% endif %}{% endfor %}").unwrap();
            path
        })
        .clone()
}
