#![no_main]
//! A GGUF file: header, metadata, tensor table, config from metadata, tokenizer, tensors.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("model.gguf");
    std::fs::write(&path, data).unwrap();
    let _ = llm_npu::model::load(&path, &Default::default());
});
