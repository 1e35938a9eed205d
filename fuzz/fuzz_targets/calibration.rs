#![no_main]
//! An npu calibration file.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("calibration.json");
    std::fs::write(&path, data).unwrap();
    let _ = llm_npu::quant::calibration::Calibration::load(&path);
});
