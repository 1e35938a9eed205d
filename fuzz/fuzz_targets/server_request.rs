#![no_main]
//! A request body to the OpenAI endpoints: parsing and checking its fields.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = llm_npu::server::api::parse_object(data) {
        let _ = llm_npu::server::api::common(&o);
    }
});
