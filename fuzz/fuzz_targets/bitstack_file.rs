#![no_main]
//! A BitStack file: its header, scales and every block it says it holds.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("stack.bitstack");
    std::fs::write(&path, data).unwrap();
    if let Ok(f) = llm_npu::bitstack::file::StackFile::open(&path) {
        let _ = f.read_blocks(0..f.header.blocks.len(), &llm_npu::util::Silent);
    }
});
