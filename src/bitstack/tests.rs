//! The stack end to end on a tiny model with biases (the qwen2 fixture): held blocks run as the
//! dense sum they stand for (prefill and decode kernels), more blocks come closer to the model,
//! resizing equals a fresh load, and cut or damaged files are one-line errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::make::{self, DenseLinears, MakeOptions};
use super::{file, BitStack, Budget};
use crate::engine::{Engine, F32Engine};
use crate::measure::eval::EvalAccumulator;
use crate::model::{self, LoadOptions, LoadedModel, Logits};
use crate::util::{random_tokens, Silent};

fn fixture(name: &str) -> Arc<LoadedModel> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    Arc::new(model::load(&path, &LoadOptions::default()).unwrap())
}

/// A stack of the fixture, written to a temporary file (3 blocks per matrix).
fn stack_file(loaded: &LoadedModel, name: &str) -> PathBuf {
    let m = &loaded.model;
    let tokens = random_tokens(m.config.vocab_size, 96, 1);
    let opts = MakeOptions { iterations: 3, rank: None, score_tokens: 24, seed: 0 };
    let stack = make::make_stack(m, "test", &tokens, "random".into(), &opts, &Silent).unwrap();
    let path = std::env::temp_dir().join(format!("llm-npu-test-{}-{name}.bitstack", std::process::id()));
    file::write(&path, stack.header, &stack.scales, &stack.blocks).unwrap();
    path
}

/// Logits of a 12-token prompt (all rows: the GEMM path) and of one decode step after it (the
/// sign-bit kernel), from `engine`.
fn prompt_and_step(engine: &dyn Engine) -> (Vec<f32>, Vec<f32>) {
    let m = engine.model();
    let tokens = random_tokens(m.config.vocab_size, 13, 9);
    let mut cache = m.new_cache(13);
    let prompt = engine.forward(&tokens[..12], &mut cache, Logits::All).unwrap();
    let step = engine.forward(&tokens[12..], &mut cache, Logits::Last).unwrap();
    (prompt, step)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn kl_to_model(loaded: &LoadedModel, engine: &dyn Engine) -> f64 {
    let m = &loaded.model;
    let tokens = random_tokens(m.config.vocab_size, 64, 4);
    let reference = m.forward(&tokens, &mut m.new_cache(64), Logits::All).unwrap();
    let got = engine.forward(&tokens, &mut m.new_cache(64), Logits::All).unwrap();
    let mut acc = EvalAccumulator::default();
    acc.add_window(&tokens, &got, &reference, m.config.vocab_size).unwrap();
    acc.report().unwrap().mean_kld
}

#[test]
fn held_blocks_run_as_their_dense_sum_and_more_blocks_come_closer() {
    let loaded = fixture("qwen2-bias-tied");
    let path = stack_file(&loaded, "dense");
    let f = file::StackFile::open(&path).unwrap();
    let (required, total) = (f.header.required_blocks(), f.header.blocks.len());
    assert_eq!(total, 3 * required);
    let mut kls = Vec::new();
    for n in [required, required + 5, total] {
        let stack = Arc::new(BitStack::open(&path, &loaded.model, Budget::Blocks(n), &Silent).unwrap());
        assert_eq!(stack.size().blocks, n);
        let engine = F32Engine::with_bitstack(loaded.clone(), stack);
        let (prompt, step) = prompt_and_step(&engine);
        // The same blocks summed into dense weights, through the float GEMM.
        let dense = make::dense_weights(&f, n).unwrap();
        let reference = DenseEngine { loaded: loaded.clone(), dense };
        let (want_prompt, want_step) = prompt_and_step(&reference);
        assert!(max_rel_diff(&prompt, &want_prompt) < 1e-4, "{n} blocks, prompt: {}", max_rel_diff(&prompt, &want_prompt));
        // Decode rounds V x to int8 per rank (the kernel's bound is checked in kernels::properties);
        // on this 32-wide model that is about 1% of the largest logit. A wrong sign or row is O(1).
        assert!(max_rel_diff(&step, &want_step) < 4e-2, "{n} blocks, decode: {}", max_rel_diff(&step, &want_step));
        kls.push(kl_to_model(&loaded, &engine));
    }
    assert!(kls[2] < kls[1] && kls[1] < kls[0], "KL to the model by blocks held: {kls:?}");
    std::fs::remove_file(&path).ok();
}

/// The float model with the given dense linears (the reference of the test above).
struct DenseEngine {
    loaded: Arc<LoadedModel>,
    dense: Vec<Vec<f32>>,
}

impl Engine for DenseEngine {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn loaded(&self) -> &Arc<LoadedModel> {
        &self.loaded
    }
    fn forward(&self, tokens: &[u32], cache: &mut model::KvCache, which: Logits) -> crate::Result<Vec<f32>> {
        let m = &self.loaded.model;
        let x = m.hidden_states(&DenseLinears::new(m, &self.dense), tokens, cache, None)?;
        Ok(m.logits(&x, which))
    }
}

#[test]
fn resizing_matches_a_fresh_load() {
    let loaded = fixture("qwen2-bias-tied");
    let path = stack_file(&loaded, "resize");
    let fresh = |n: usize| {
        let engine = F32Engine::with_bitstack(loaded.clone(), Arc::new(BitStack::open(&path, &loaded.model, Budget::Blocks(n), &Silent).unwrap()));
        prompt_and_step(&engine)
    };
    let stack = Arc::new(BitStack::open(&path, &loaded.model, Budget::All, &Silent).unwrap());
    let all = stack.size();
    let engine = F32Engine::with_bitstack(loaded.clone(), stack.clone());
    let v0 = stack.version();
    let small = stack.resize(Budget::Blocks(all.total_blocks / 3 + 2)).unwrap();
    assert!(small.stack_bytes < all.stack_bytes && stack.version() != v0);
    assert_eq!(prompt_and_step(&engine), fresh(small.blocks), "shrunk");
    let grown = stack.resize(Budget::All).unwrap();
    assert_eq!(grown.stack_bytes, all.stack_bytes);
    assert_eq!(prompt_and_step(&engine), fresh(all.blocks), "grown back");
    // A budget in megabytes: the largest prefix that fits, and one byte less holds fewer.
    let mb = (all.other_bytes + all.stack_bytes) as f64 / 1e6;
    assert_eq!(stack.resize(Budget::MemoryMb(mb)).unwrap().blocks, all.total_blocks);
    assert!(stack.resize(Budget::MemoryMb(mb - 1e-6)).unwrap().blocks < all.total_blocks);
    let too_small = stack.resize(Budget::MemoryMb(all.other_bytes as f64 / 1e6)).unwrap_err().to_string();
    assert!(too_small.contains("below the smallest model"), "{too_small}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn cut_or_damaged_files_are_one_line_errors() {
    let loaded = fixture("qwen2-bias-tied");
    let path = stack_file(&loaded, "corrupt");
    let bytes = std::fs::read(&path).unwrap();
    let bad = path.with_extension("bad");
    let open = |b: &[u8]| {
        std::fs::write(&bad, b).unwrap();
        BitStack::open(&bad, &loaded.model, Budget::All, &Silent).map(|_| ()).map_err(|e| e.to_string())
    };
    let one_line = |r: Result<(), String>, what: &str| {
        let e = r.expect_err(what);
        assert!(!e.contains('\n') && e.contains(bad.to_str().unwrap()), "{what}: {e}");
    };
    // Every cut: the header's sizes no longer match the file.
    for cut in (0..bytes.len()).step_by(bytes.len() / 97 + 1).chain([bytes.len() - 1]) {
        one_line(open(&bytes[..cut]), &format!("cut at {cut}"));
    }
    // A flipped bit in the scales or any block: their checksums.
    let header_end = 24 + u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    for pos in (header_end.next_multiple_of(8)..bytes.len()).step_by(61) {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        one_line(open(&b), &format!("flip at {pos}"));
    }
    // Flips in the header: an error or a stack that still loads (e.g. a digit of a residual
    // record), never a panic.
    for pos in 0..header_end {
        let mut b = bytes.clone();
        b[pos] ^= 0x04;
        let _ = open(&b);
    }
    one_line(open(b"not a stack at all, just some text"), "not a stack");
    // A stack of another model.
    let other = fixture("llama-gqa");
    let e = BitStack::open(&path, &other.model, Budget::All, &Silent).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("other weights") && !e.contains('\n'), "{e}");
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&bad).ok();
}

#[test]
fn a_quantized_model_is_decomposed_without_keeping_f32_copies() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/llama-gqa-q8_0.gguf");
    let loaded = Arc::new(model::load(&path, &LoadOptions::default()).unwrap());
    let before = loaded.model.weight_memory_bytes();
    let stack = stack_file(&loaded, "q8");
    assert_eq!(loaded.model.weight_memory_bytes(), before, "the decomposition kept decoded f32 weights");
    // The blocks approach the Q8_0 model's own (decoded) weights: three per matrix beat one.
    let kl = |budget| kl_to_model(&loaded, &F32Engine::with_bitstack(loaded.clone(), Arc::new(BitStack::open(&stack, &loaded.model, budget, &Silent).unwrap())));
    let (one, all) = (kl(Budget::Blocks(14)), kl(Budget::All)); // 2 layers x 7 matrices
    assert!(all < 0.5 * one, "KL {one} with one block per matrix, {all} with three");
    std::fs::remove_file(&stack).ok();
}
