//! The real trained model: stories260K as GGUF v1 and as a llama2.c checkpoint must load to the
//! same network and, greedy from BOS, write exactly the story llama2.c's reference prints.

mod common;

use std::process::Command;

use std::sync::Arc;

use llm_npu::model::{self, LoadOptions, LoadedModel, Logits};
use llm_npu::util::Silent;

/// llama2.c test_all.py `expected_stdout` for `run stories260K.bin -z tok512.bin -t 0.0 -n 200`
/// (200 generated tokens; run.c adds one newline at the end, as we do).
const EXPECTED: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\nLily didn't want to help her mom, so she";

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(args).output().unwrap();
    assert!(out.status.success(), "llm-npu {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

#[test]
fn gguf_v1_and_llama2c_give_the_same_logits() {
    let Some(models) = common::shared_models("gguf_v1_and_llama2c_give_the_same_logits") else { return };
    let tokens: Vec<u32> = vec![1, 403, 407, 261, 378, 430, 271, 13, 300, 263, 288];
    let load = |p: std::path::PathBuf| model::load(&p, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let gguf = load(models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"));
    let bin = load(models.join("stories260K/stories260K.reconstructed.bin"));
    assert_eq!(gguf.model.config.num_layers, 5);
    assert_eq!(bin.model.config.num_kv_heads, 4);
    let mut c1 = gguf.model.new_cache(tokens.len());
    let mut c2 = bin.model.new_cache(tokens.len());
    let a = gguf.model.forward(&tokens, &mut c1, Logits::All).unwrap();
    let b = bin.model.forward(&tokens, &mut c2, Logits::All).unwrap();
    let d = common::max_abs_diff(&a, &b);
    assert!(d <= 1e-5, "max diff {d}");
}

#[test]
fn greedy_story_from_gguf_matches_llama2c() {
    let Some(models) = common::shared_models("greedy_story_from_gguf_matches_llama2c") else { return };
    let m = models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf");
    let text = run(&["run", "-m", m.to_str().unwrap(), "-p", "", "-n", "200", "--temp", "0"]);
    assert_eq!(text, format!("{EXPECTED}\n"));
}

#[test]
fn greedy_story_from_llama2c_bin_matches_llama2c() {
    let Some(models) = common::shared_models("greedy_story_from_llama2c_bin_matches_llama2c") else { return };
    let m = models.join("stories260K/stories260K.reconstructed.bin");
    let t = models.join("stories260K/t260.bin");
    let text = run(&["run", "-m", m.to_str().unwrap(), "--tokenizer", t.to_str().unwrap(), "-p", "", "-n", "200", "--temp", "0"]);
    assert_eq!(text, format!("{EXPECTED}\n"));
}

#[test]
fn llama2c_negative_vocab_means_an_untied_classifier() {
    // Rewrite the checkpoint with vocab_size = -512 and an explicit classifier equal to the
    // embedding: llama2.c's convention for untied weights. Logits must not change.
    let Some(models) = common::shared_models("llama2c_negative_vocab_means_an_untied_classifier") else { return };
    let src = std::fs::read(models.join("stories260K/stories260K.reconstructed.bin")).unwrap();
    let mut bytes = src.clone();
    bytes[20..24].copy_from_slice(&(-512i32).to_le_bytes());
    bytes.extend_from_slice(&src[28..28 + 512 * 64 * 4]); // wcls = token embedding
    let p = std::env::temp_dir().join(format!("untied-{}.bin", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    let untied = model::load(&p, &LoadOptions::default()).unwrap();
    let tied = model::load(&models.join("stories260K/stories260K.reconstructed.bin"), &LoadOptions::default()).unwrap();
    assert!(!untied.model.config.tie_word_embeddings && tied.model.config.tie_word_embeddings);
    let tokens = [1u32, 400, 300];
    let a = untied.model.forward(&tokens, &mut untied.model.new_cache(3), Logits::All).unwrap();
    let b = tied.model.forward(&tokens, &mut tied.model.new_cache(3), Logits::All).unwrap();
    assert_eq!(a, b);
    std::fs::remove_file(p).ok();
}

#[test]
fn gguf_version_2_header_reads_like_version_3() {
    // Same layout as v3 (64-bit counts); only the version field differs.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/llama-gqa-f32.gguf");
    let mut bytes = std::fs::read(&fixture).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let p = std::env::temp_dir().join(format!("v2-{}.gguf", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    let v2 = llm_npu::format::gguf::GgufFile::open(&p).unwrap();
    let v3 = llm_npu::format::gguf::GgufFile::open(&fixture).unwrap();
    assert_eq!((v2.version, v3.version), (2, 3));
    assert_eq!(v2.tensor("blk.1.ffn_down.weight").unwrap().data(), v3.tensor("blk.1.ffn_down.weight").unwrap().data());
    std::fs::remove_file(p).ok();
}

/// Text the f32 model writes itself (temperature 1, from BOS), as token ids: stories of up to
/// 400 tokens from successive seeds until `n` tokens.
fn self_sampled(loaded: &Arc<LoadedModel>, n: usize, first_seed: u64) -> Vec<u32> {
    let f32 = llm_npu::engine::F32Engine::new(loaded.clone(), None);
    let mut ids = Vec::new();
    let mut seed = first_seed;
    while ids.len() < n {
        let opts = llm_npu::generate::GenerateOptions {
            max_new_tokens: 400,
            sampling: llm_npu::sampling::SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed },
            stop_tokens: vec![],
            vocab_limit: None,
        };
        ids.push(1);
        llm_npu::generate::generate(&f32, &[1], &opts, |t| {
            ids.push(t);
            Ok(())
        })
        .unwrap();
        seed += 1;
    }
    ids
}

#[test]
fn shadow_execution_recovers_what_w8a8_loses_on_the_trained_model() {
    // Calibrate on one self-sampled text, evaluate on another (as tools/stories_eval.sh does):
    // the shadow path must cut the KL divergence to f32 at least threefold against plain W8A8.
    use llm_npu::engine::{self, BackendKind, CalibrationSource, EngineOptions, NpuOptions};
    use llm_npu::shadow::ShadowOptions;
    let Some(models) = common::shared_models("shadow_execution_recovers_what_w8a8_loses_on_the_trained_model") else { return };
    let loaded = Arc::new(model::load(&models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"), &LoadOptions::default()).unwrap());
    let m = &loaded.model;
    let cal = llm_npu::quant::calibration::Calibration::run(m, &self_sampled(&loaded, 2000, 1000), 512, "test".into(), &Silent).unwrap();
    let calibration = CalibrationSource::Given(Arc::new(cal));
    let text = self_sampled(&loaded, 2000, 2000);
    let eval = |shadow: ShadowOptions| {
        let options = EngineOptions { backend: BackendKind::Npu, npu: NpuOptions { shadow, ..Default::default() }, calibration: calibration.clone(), ..Default::default() };
        let npu = engine::build(&loaded, &options, &Silent).unwrap();
        let mut acc = llm_npu::measure::eval::EvalAccumulator::default();
        for w in text.chunks(512).filter(|w| w.len() >= 2) {
            let q = npu.forward(w, &mut m.new_cache(w.len()), Logits::All).unwrap();
            let f = m.forward(w, &mut m.new_cache(w.len()), Logits::All).unwrap();
            acc.add_window(w, &q, &f, m.config.vocab_size).unwrap();
        }
        acc.report().unwrap()
    };
    let on = eval(ShadowOptions::default());
    let off = eval(ShadowOptions { enabled: false, ..Default::default() });
    eprintln!("stories260K vs f32: shadow top-1 {:.4} KL {:.5} ppl x{:.4}; without top-1 {:.4} KL {:.5} ppl x{:.4}", on.top1_agreement, on.mean_kld, on.ppl_ratio, off.top1_agreement, off.mean_kld, off.ppl_ratio);
    assert!(on.mean_kld * 3.0 <= off.mean_kld, "shadow KL {} vs {} without", on.mean_kld, off.mean_kld);
    assert!(on.top1_agreement >= 0.96 && on.mean_kld <= 0.006 && on.ppl_ratio <= 1.01, "{on:?}");
}

#[test]
fn qnn_prefill_agrees_with_the_reference_accelerator_on_the_trained_model() {
    // QNN's HTP (emulated) prefills the prompt with 8-bit graph outputs; decode then runs on the
    // CPU exactly as with the reference accelerator. The prefill's next-token predictions must
    // mostly agree with the reference's, and from BOS (a one-token prompt: decode only) the
    // greedy story must be llama2.c's.
    use llm_npu::engine::{self, BackendKind, CalibrationSource, EngineOptions, NpuOptions};
    let test = "qnn_prefill_agrees_with_the_reference_accelerator_on_the_trained_model";
    let Some(models) = common::shared_models(test) else { return };
    if !common::onnx_runtime(test) {
        return;
    }
    let loaded = Arc::new(model::load(&models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"), &LoadOptions::default()).unwrap());
    let m = &loaded.model;
    let cal = Arc::new(llm_npu::quant::calibration::Calibration::run(m, &self_sampled(&loaded, 2000, 1000), 512, "test".into(), &Silent).unwrap());
    let cache = std::env::temp_dir().join(format!("llm-npu-stories-qnn-{}", std::process::id()));
    let engine = |accelerator: &'static str| {
        let npu = NpuOptions { accelerator, graph_cache: Some(cache.clone()), ..Default::default() };
        engine::build(&loaded, &EngineOptions { backend: BackendKind::Npu, npu, calibration: CalibrationSource::Given(cal.clone()), ..Default::default() }, &Silent).unwrap()
    };
    let (qnn, reference) = (engine("qnn"), engine("ref"));
    let text = self_sampled(&loaded, 1000, 2000);
    let mut acc = llm_npu::measure::eval::EvalAccumulator::default();
    for w in text.chunks(256).filter(|w| w.len() >= 2) {
        let q = qnn.forward(w, &mut m.new_cache(w.len()), Logits::All).unwrap();
        let r = reference.forward(w, &mut m.new_cache(w.len()), Logits::All).unwrap();
        acc.add_window(w, &q, &r, m.config.vocab_size).unwrap();
    }
    let r = acc.report().unwrap();
    eprintln!("stories260K, qnn vs ref accelerator: top-1 {:.4}, KL {:.5}, ppl x{:.4}", r.top1_agreement, r.mean_kld, r.ppl_ratio);
    assert!(r.top1_agreement >= 0.94 && r.mean_kld <= 0.012, "{r:?}");
    let story = |e: &dyn llm_npu::engine::Engine| {
        let opts = llm_npu::generate::GenerateOptions {
            max_new_tokens: 30,
            sampling: llm_npu::sampling::SamplingParams { temperature: 0.0, ..Default::default() },
            stop_tokens: vec![],
            vocab_limit: None,
        };
        let mut ids = Vec::new();
        llm_npu::generate::generate(e, &[1], &opts, |t| {
            ids.push(t);
            Ok(())
        })
        .unwrap();
        ids
    };
    assert_eq!(story(qnn.as_ref()), story(reference.as_ref()));
    let _ = std::fs::remove_dir_all(&cache);
}
