#![no_main]
//! A llama2.c checkpoint (first byte 0) or tokenizer.bin (first byte 1).
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let path = common::scratch().join("llama2c.bin");
    std::fs::write(&path, rest).unwrap();
    if kind % 2 == 0 {
        let _ = llm_npu::model::load(&path, &Default::default());
    } else if let Ok(t) = llm_npu::tokenizer::Tokenizer::from_llama2c(&path) {
        if let Ok(ids) = t.encode("Once upon a time", true) {
            let _ = t.decode(&ids);
        }
    }
});
