#![no_main]
//! config.json (either layout, any family) beside valid weights, loaded as a model.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        std::fs::write(&weights, common::fixture("model.safetensors")).unwrap();
    }
    std::fs::write(dir.join("config.json"), data).unwrap();
    let _ = llm_npu::model::load(&dir, &Default::default());
});
