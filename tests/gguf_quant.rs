//! GGUF's quantized weight types: our decoding against the gguf Python package's, bit for bit
//! (tools/oracle/gen_quant_blocks.py wrote the blocks and what gguf decodes them to).

use std::path::Path;

use llm_npu::tensor::dtype::{to_f32, DType};

#[test]
fn every_quantized_type_decodes_like_the_gguf_package() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
    let mut checked = Vec::new();
    for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
        let blocks = std::fs::read(dir.join(format!("{}.bin", dtype.name()))).unwrap();
        let (_, want) = llm_npu::npy::read_f32(&dir.join(format!("{}.npy", dtype.name()))).unwrap();
        assert_eq!(dtype.n_bytes(want.len()), Some(blocks.len()), "{}", dtype.name());
        let mut got = vec![0f32; want.len()];
        to_f32(dtype, &blocks, &mut got);
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{}: {differ} of {} values differ; first: {:?}", dtype.name(), want.len(), got.iter().zip(&want).find(|(a, b)| a.to_bits() != b.to_bits()));
        checked.push(dtype.name());
    }
    assert_eq!(checked.len(), 10, "{checked:?}");
}
