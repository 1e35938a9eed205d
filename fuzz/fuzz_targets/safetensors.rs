#![no_main]
//! model.safetensors (header and data) beside a valid config.json, loaded as a model.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), common::fixture("config.json")).unwrap();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    let _ = llm_npu::model::load(&dir, &Default::default());
});
