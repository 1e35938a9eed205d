//! GGUF's quantized weight types: our decoding against the gguf Python package's, bit for bit
//! (tools/oracle/gen_quant_blocks.py wrote the blocks and what gguf decodes them to).

use std::path::Path;

use llm_npu::tensor::dtype::{to_f32, to_f32_portable, DType};

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
        let mut portable = vec![0f32; want.len()];
        to_f32_portable(dtype, &blocks, &mut portable);
        assert!(got.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: the SIMD build differs from the portable one", dtype.name());
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{}: {differ} of {} values differ; first: {:?}", dtype.name(), want.len(), got.iter().zip(&want).find(|(a, b)| a.to_bits() != b.to_bits()));
        checked.push(dtype.name());
    }
    assert_eq!(checked.len(), 10, "{checked:?}");
}

/// mixed.gguf (every weight type, one per tensor) and its twin with every weight decoded to f32
/// in memory.
fn mixed_and_decoded_twin() -> (std::sync::Arc<llm_npu::model::LoadedModel>, std::sync::Arc<llm_npu::model::LoadedModel>) {
    use llm_npu::model::{self, LoadOptions};
    use llm_npu::tensor::Tensor;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant/mixed.gguf");
    let quantized = model::load(&path, &LoadOptions::default()).unwrap();
    let mut twin = model::load(&path, &LoadOptions::default()).unwrap();
    let decode = |t: &mut Tensor| *t = Tensor::from_vec(t.shape().to_vec(), t.data().to_vec());
    decode(&mut twin.model.embed_tokens);
    decode(&mut twin.model.lm_head.weight);
    for layer in &mut twin.model.layers {
        let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
        for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
            assert!(lin.weight.encoded().is_some(), "the fixture's linears are all encoded");
            decode(&mut lin.weight);
        }
    }
    assert!(quantized.model.embed_tokens.encoded().is_some() && twin.model.embed_tokens.encoded().is_none());
    (std::sync::Arc::new(quantized), std::sync::Arc::new(twin))
}

fn tokens() -> Vec<u32> {
    (0..40).map(|i| (i * 37 + 11) % 256).collect()
}

/// Max |a - b| and cosine of two logit rows.
fn distance(a: &[f32], b: &[f32]) -> (f32, f64) {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    (d, dot / (norm(a) * norm(b)))
}

#[test]
fn a_quantized_file_computes_what_its_decoded_f32_twin_does() {
    // Prefill (the integer GEMM, or decoded panels through the float GEMM without AVX-512 VNNI)
    // and decode (integer block dot products), without any f32 copy of the quantized weights.
    // The integer products quantize each activation row to int8 (as llama.cpp does), so the
    // logits match the twin's to that precision, not to float rounding; the kernels themselves
    // are checked exactly against dequantize-then-dot in the library's tests. Measured here:
    // cosine >= 0.99995, max difference 1.1% of the largest logit.
    use llm_npu::model::Logits;
    let (q, f) = mixed_and_decoded_twin();
    let t = tokens();
    let (mq, mf) = (&q.model, &f.model);
    let prefill_q = mq.forward(&t, &mut mq.new_cache(t.len()), Logits::All).unwrap();
    let prefill_f = mf.forward(&t, &mut mf.new_cache(t.len()), Logits::All).unwrap();
    let scale = prefill_f.iter().fold(0f32, |m, v| m.max(v.abs()));
    let vocab = mq.config.vocab_size;
    let mut cache = mq.new_cache(t.len());
    for (i, &tok) in t.iter().enumerate() {
        let want = &prefill_f[i * vocab..(i + 1) * vocab];
        let (d, cos) = distance(&prefill_q[i * vocab..(i + 1) * vocab], want);
        assert!(cos >= 0.9999 && d <= 0.02 * scale, "prefill position {i}: max diff {d} of {scale}, cosine {cos}");
        let (d, cos) = distance(&mq.forward(&[tok], &mut cache, Logits::Last).unwrap(), want);
        assert!(cos >= 0.9999 && d <= 0.02 * scale, "decode position {i}: max diff {d} of {scale}, cosine {cos}");
    }
    for lin in [&mq.layers[0].self_attn.q_proj, &mq.layers[1].mlp.down_proj] {
        assert!(lin.weight.memory_bytes() < lin.weight.len(), "no decoded copy was kept: {} bytes", lin.weight.memory_bytes());
    }
}

#[test]
fn the_npu_backend_quantizes_a_quantized_file_like_its_decoded_twin() {
    use llm_npu::engine::{self, BackendKind, CalibrationSource, EngineOptions};
    use llm_npu::model::Logits;
    use llm_npu::quant::calibration::Calibration;
    use llm_npu::util::Silent;
    let (q, f) = mixed_and_decoded_twin();
    let cal = std::sync::Arc::new(Calibration::on_random_tokens(&f.model, 256, 0, &Silent).unwrap());
    let options = EngineOptions { backend: BackendKind::Npu, calibration: CalibrationSource::Given(cal), ..Default::default() };
    let t = tokens();
    let run = |m: &std::sync::Arc<llm_npu::model::LoadedModel>| {
        let npu = engine::build(m, &options, &Silent).unwrap();
        npu.forward(&t, &mut m.model.new_cache(t.len()), Logits::All).unwrap()
    };
    let (from_quantized, from_twin) = (run(&q), run(&f));
    assert_eq!(from_quantized, from_twin, "int8 weights made from the stored blocks equal those made from f32");
    let w = &q.model.layers[1].mlp.gate_proj.weight;
    assert!(w.memory_bytes() < w.len(), "the npu backend kept no decoded copy: {} bytes", w.memory_bytes());
}
