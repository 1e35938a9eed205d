#![no_main]
//! tokenizer.json, then encoding and decoding with it.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(t) = llm_npu::tokenizer::Tokenizer::from_hf_file(&path) {
        if let Ok(ids) = t.encode("Hello <|im_start|> wörld\n\t 123", true) {
            let _ = t.decode(&ids);
        }
    }
});
