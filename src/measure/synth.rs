//! `llm-npu synth`: Hugging Face model folders with random weights of real models' shapes, for
//! speed and accuracy measurements where no trained weights of that size are at hand.
//!
//! Two properties keep the measurements honest:
//! - Output sharpness. After the final RMSNorm every hidden state has squared norm `hidden`, so an
//!   LM head drawn with std `LOGIT_STD / sqrt(hidden)` gives logits with std `LOGIT_STD` exactly.
//!   At 5 the mean top-1 probability is about 0.3-0.6 for vocabularies of 512 to 152k tokens,
//!   like a trained model's, instead of near-uniform distributions that make agreement metrics
//!   meaningless.
//! - Planted activation outliers (`--outliers paper`), with DESIGN.md's statistics: 5-15 outlier
//!   channels per layer (about 0.1-0.3% of the attention and FFN input channels of a 2048-wide
//!   model), spread over its linear inputs: ~40% at the FFN down input, ~25% each at the attention
//!   and FFN inputs, and one kv dimension at the o_proj input. Each gets a gain g of 20-100
//!   (largest at the FFN down input, x1.6 at the first and last layer, x1.2 at their
//!   neighbours, capped at 100):
//!     - attention and FFN inputs: the RMSNorm weight of the channel is +-g;
//!     - FFN down input: row j of up_proj is scaled by g, so silu(gate_j) * up_j is;
//!     - o_proj input: rows of v_proj (one kv dimension each) are scaled by g, so every head of the
//!       group carries it.
//!   The weight columns that read an outlier channel are scaled by kappa / g, with kappa chosen so
//!   the outlier channels of a point carry a quarter of the input variance that reaches the
//!   output: large enough that clipping them changes the model's output, not so large that they
//!   are the whole signal. What was planted is written to `synth.json`.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::json;

use crate::error::{Error, Result};
use crate::model::LinearGroup;
use crate::util::{Progress, Rng};

/// Version of the weight recipe: bump it whenever the same seed would give different weights, so
/// caches of older recipes (the demo's) are not reused.
pub const RECIPE_VERSION: u32 = 2;

/// Logit standard deviation of synthesized models (see the module comment).
pub const LOGIT_STD: f32 = 5.0;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub family: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    /// (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    pub llama3_rope: Option<(f32, f32, f32, f32)>,
    pub tied: bool,
    pub max_positions: usize,
    pub rms_eps: f32,
}

pub const SHAPES: &[Shape] = &[
    Shape { name: "tinyllama-1.1b", family: "llama", hidden: 2048, intermediate: 5632, layers: 22, heads: 32, kv_heads: 4, vocab: 32000, rope_theta: 10000.0, llama3_rope: None, tied: false, max_positions: 2048, rms_eps: 1e-5 },
    Shape { name: "qwen2.5-0.5b", family: "qwen2", hidden: 896, intermediate: 4864, layers: 24, heads: 14, kv_heads: 2, vocab: 151936, rope_theta: 1e6, llama3_rope: None, tied: true, max_positions: 32768, rms_eps: 1e-6 },
    Shape { name: "qwen1.5-1.8b", family: "qwen2", hidden: 2048, intermediate: 5504, layers: 24, heads: 16, kv_heads: 16, vocab: 151936, rope_theta: 1e6, llama3_rope: None, tied: false, max_positions: 32768, rms_eps: 1e-6 },
    Shape { name: "llama-3.2-1b", family: "llama", hidden: 2048, intermediate: 8192, layers: 16, heads: 32, kv_heads: 8, vocab: 128256, rope_theta: 500000.0, llama3_rope: Some((32.0, 1.0, 4.0, 8192.0)), tied: true, max_positions: 131072, rms_eps: 1e-5 },
    Shape { name: "tiny", family: "llama", hidden: 64, intermediate: 172, layers: 4, heads: 8, kv_heads: 4, vocab: 512, rope_theta: 10000.0, llama3_rope: None, tied: false, max_positions: 1024, rms_eps: 1e-5 },
    // TinyLlama's head size (64) in a tests-sized model: what the AMX attention kernels take.
    Shape { name: "tiny-hd64", family: "llama", hidden: 256, intermediate: 688, layers: 2, heads: 4, kv_heads: 2, vocab: 512, rope_theta: 10000.0, llama3_rope: None, tied: false, max_positions: 1024, rms_eps: 1e-5 },
];

pub fn shape(name: &str) -> Result<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name).ok_or_else(|| {
        Error::Input(format!("unknown shape '{name}' (known: {})", SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthDType {
    F32,
    BF16,
    F16,
}

impl SynthDType {
    fn safetensors_name(self) -> &'static str {
        match self {
            SynthDType::F32 => "F32",
            SynthDType::BF16 => "BF16",
            SynthDType::F16 => "F16",
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            SynthDType::F32 => "float32",
            SynthDType::BF16 => "bfloat16",
            SynthDType::F16 => "float16",
        }
    }
    fn size(self) -> usize {
        if self == SynthDType::F32 {
            4
        } else {
            2
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedOutliers {
    None,
    Paper,
}

pub struct SynthOptions<'a> {
    pub shape: &'a Shape,
    pub dtype: SynthDType,
    pub outliers: PlantedOutliers,
    pub seed: u64,
    /// A tokenizer.json to copy; without it a byte-level BPE vocabulary of the shape's size is generated.
    pub tokenizer: Option<&'a Path>,
}

/// Outliers planted at one point of one layer: input channels and their gains.
#[derive(Debug, Clone)]
struct Plant {
    channels: Vec<usize>,
    gains: Vec<f32>,
}

/// How every element of one tensor is made: uniform noise of `std` (or a constant), then
/// optional per-row and per-column factors.
struct TensorPlan {
    name: String,
    shape: Vec<usize>,
    std: f32,
    constant: Option<f32>,
    row_scale: Option<Vec<f32>>,
    col_scale: Option<Vec<f32>>,
}

impl TensorPlan {
    fn random(name: String, shape: Vec<usize>, std: f32) -> Self {
        TensorPlan { name, shape, std, constant: None, row_scale: None, col_scale: None }
    }
    fn ones(name: String, n: usize) -> Self {
        TensorPlan { name, shape: vec![n], std: 0.0, constant: Some(1.0), row_scale: None, col_scale: None }
    }
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn scale_cols(&mut self, cols: &[usize], factors: &[f32]) {
        let n = *self.shape.last().unwrap();
        let s = self.col_scale.get_or_insert_with(|| vec![1.0; n]);
        for (&c, &f) in cols.iter().zip(factors) {
            s[c] *= f;
        }
    }
    fn scale_rows(&mut self, rows: &[usize], factors: &[f32]) {
        let s = self.row_scale.get_or_insert_with(|| vec![1.0; self.shape[0]]);
        for (&r, &f) in rows.iter().zip(factors) {
            s[r] *= f;
        }
    }
}

/// Picks `n` distinct channels of `0..dim` and their gains in [lo, hi] x edge, capped at 100.
fn plant(rng: &mut Rng, dim: usize, n: usize, lo: f32, hi: f32, edge: f32) -> Plant {
    let mut chosen = HashSet::new();
    let mut channels = Vec::new();
    while channels.len() < n.min(dim) {
        let c = (rng.next_u64() % dim as u64) as usize;
        if chosen.insert(c) {
            channels.push(c);
        }
    }
    channels.sort_unstable();
    let gains = channels.iter().map(|_| ((lo + (hi - lo) * rng.next_f32()) * edge).min(100.0)).collect();
    Plant { channels, gains }
}

/// Column factors kappa / g so the planted channels carry `share` of the variance reaching the output.
fn compensation(p: &Plant, in_features: usize) -> Vec<f32> {
    const SHARE: f32 = 0.25;
    let kappa = (SHARE / (1.0 - SHARE) * in_features as f32 / p.channels.len() as f32).sqrt();
    p.gains.iter().map(|g| kappa / g).collect()
}

fn plan(o: &SynthOptions) -> (Vec<TensorPlan>, serde_json::Value) {
    let s = o.shape;
    let (d, f) = (s.hidden, s.intermediate);
    let hd = d / s.heads;
    let kv = s.kv_heads * hd;
    let group = s.heads / s.kv_heads;
    let lin = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    let mut rng = Rng::new(o.seed ^ 0x5EED_0F_0071_1E25);
    let mut tensors = Vec::new();
    let mut planted = Vec::new();

    let embed_std = if s.tied { LOGIT_STD / (d as f32).sqrt() } else { 1.0 };
    tensors.push(TensorPlan::random("model.embed_tokens.weight".into(), vec![s.vocab, d], embed_std));
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        let mut attn_norm = TensorPlan::ones(format!("{p}.input_layernorm.weight"), d);
        let mut q = TensorPlan::random(format!("{p}.self_attn.q_proj.weight"), vec![d, d], lin(d));
        let mut k = TensorPlan::random(format!("{p}.self_attn.k_proj.weight"), vec![kv, d], lin(d));
        let mut v = TensorPlan::random(format!("{p}.self_attn.v_proj.weight"), vec![kv, d], lin(d));
        let mut out = TensorPlan::random(format!("{p}.self_attn.o_proj.weight"), vec![d, d], lin(d));
        let mut ffn_norm = TensorPlan::ones(format!("{p}.post_attention_layernorm.weight"), d);
        let mut gate = TensorPlan::random(format!("{p}.mlp.gate_proj.weight"), vec![f, d], lin(d));
        let mut up = TensorPlan::random(format!("{p}.mlp.up_proj.weight"), vec![f, d], lin(d));
        let mut down = TensorPlan::random(format!("{p}.mlp.down_proj.weight"), vec![d, f], lin(f));
        if o.outliers == PlantedOutliers::Paper {
            let from_edge = l.min(s.layers - 1 - l) as f32;
            let edge = 1.0 + 0.6 * (-from_edge).exp();
            // 5-15 outlier channels per layer, spread over its linear inputs (down_in gets most).
            let total = 5 + (rng.next_u64() % 11) as usize;
            let nd = (total * 2).div_ceil(5);
            let na = (total / 4).max(1);
            let nf = (total - nd - na).saturating_sub(1).max(1);
            // Attention input: RMSNorm gains (random sign), compensated in q/k/v columns.
            let a = plant(&mut rng, d, na, 20.0, 50.0, edge);
            let signs: Vec<f32> = a.gains.iter().map(|g| if rng.next_u64() & 1 == 0 { *g } else { -*g }).collect();
            attn_norm.scale_cols(&a.channels, &signs);
            let comp = compensation(&a, d);
            for t in [&mut q, &mut k, &mut v] {
                t.scale_cols(&a.channels, &comp);
            }
            // o_proj input: v_proj rows; each kv dimension reaches `group` attention-output channels.
            // One kv dimension: it reaches one o_proj input channel per head of its group.
            let ov = plant(&mut rng, kv, 1, 30.0, 60.0, edge);
            v.scale_rows(&ov.channels, &ov.gains);
            let o_channels: Vec<usize> = ov.channels.iter().flat_map(|&c| (0..group).map(move |g| ((c / hd) * group + g) * hd + c % hd)).collect();
            let o_gains: Vec<f32> = ov.gains.iter().flat_map(|&gain| std::iter::repeat_n(gain, group)).collect();
            let op = Plant { channels: o_channels, gains: o_gains };
            out.scale_cols(&op.channels, &compensation(&op, d));
            // FFN input: RMSNorm gains, compensated in gate/up columns.
            let fp = plant(&mut rng, d, nf, 20.0, 50.0, edge);
            ffn_norm.scale_cols(&fp.channels, &fp.gains);
            let comp = compensation(&fp, d);
            gate.scale_cols(&fp.channels, &comp);
            up.scale_cols(&fp.channels, &comp);
            // FFN down input: up_proj rows, compensated in down_proj columns.
            let dp = plant(&mut rng, f, nd, 40.0, 80.0, edge);
            up.scale_rows(&dp.channels, &dp.gains);
            down.scale_cols(&dp.channels, &compensation(&dp, f));
            for (group, pl) in LinearGroup::ALL.iter().zip([&a, &op, &fp, &dp]) {
                planted.push(json!({ "layer": l, "point": group.input_name(), "channels": pl.channels, "gains": pl.gains }));
            }
        }
        tensors.extend([attn_norm, q, k, v, out, ffn_norm, gate, up, down]);
        if s.family == "qwen2" {
            for (name, n) in [("q_proj", d), ("k_proj", kv), ("v_proj", kv)] {
                tensors.push(TensorPlan::random(format!("{p}.self_attn.{name}.bias"), vec![n], 0.1));
            }
        }
    }
    tensors.push(TensorPlan::ones("model.norm.weight".into(), d));
    if !s.tied {
        tensors.push(TensorPlan::random("lm_head.weight".into(), vec![s.vocab, d], LOGIT_STD / (d as f32).sqrt()));
    }
    (tensors, json!(planted))
}

/// Fills `out` (raw little-endian bytes of `dtype`) with the plan's elements; deterministic for a
/// seed whatever the thread count, since each 64K-element chunk has its own generator.
fn generate(t: &TensorPlan, index: usize, seed: u64, dtype: SynthDType, out: &mut [u8]) {
    const CHUNK: usize = 1 << 16;
    let cols = *t.shape.last().unwrap();
    let half_width = t.std * 3f32.sqrt(); // uniform on [-a, a] has std a / sqrt(3)
    out.par_chunks_mut(CHUNK * dtype.size()).enumerate().for_each(|(ci, bytes)| {
        let mut rng = Rng::new(seed ^ ((index as u64) << 32) ^ ci as u64);
        for (j, b) in bytes.chunks_exact_mut(dtype.size()).enumerate() {
            let i = ci * CHUNK + j;
            let mut v = t.constant.unwrap_or_else(|| (2.0 * rng.next_f32() - 1.0) * half_width);
            if let Some(r) = &t.row_scale {
                v *= r[i / cols];
            }
            if let Some(c) = &t.col_scale {
                v *= c[i % cols];
            }
            match dtype {
                SynthDType::F32 => b.copy_from_slice(&v.to_le_bytes()),
                SynthDType::BF16 => b.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
                SynthDType::F16 => b.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            }
        }
    });
}

/// Writes the model folder: config.json, generation_config.json, model.safetensors,
/// tokenizer.json, synth.json. Progress is counted in bytes of weights.
pub fn synthesize(dir: &Path, o: &SynthOptions, progress: &dyn Progress) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let s = o.shape;
    let (tensors, planted) = plan(o);
    let (bos, eos) = write_tokenizer(dir, o)?;
    write_json(&dir.join("config.json"), &config_json(s, o.dtype, bos, eos))?;
    write_json(&dir.join("generation_config.json"), &json!({ "bos_token_id": bos, "eos_token_id": eos }))?;
    write_json(
        &dir.join("synth.json"),
        &json!({
            "generator": format!("llm-npu {} synth", env!("CARGO_PKG_VERSION")),
            "recipe_version": RECIPE_VERSION,
            "shape": s.name, "dtype": o.dtype.safetensors_name(), "seed": o.seed,
            "outliers": if o.outliers == PlantedOutliers::Paper { "paper" } else { "none" },
            "logit_std": LOGIT_STD, "planted": planted,
            "note": "random weights: speed and relative accuracy measurements only; the text it writes is meaningless",
        }),
    )?;

    // safetensors: 8-byte header length, JSON header (padded to 8 bytes), then the data in order.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt", "generator": "llm-npu synth" }));
    let mut offset = 0usize;
    for t in &tensors {
        let n = t.len() * o.dtype.size();
        header.insert(t.name.clone(), json!({ "dtype": o.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, offset + n] }));
        offset += n;
    }
    let mut header = serde_json::to_string(&header).expect("JSON of plain values");
    header.push_str(&" ".repeat(header.len().next_multiple_of(8) - header.len()));
    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.partial");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    let io = |e| Error::io(&tmp, e);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    let total = offset as u64;
    let mut done = 0u64;
    progress.start("synth", "bytes", total);
    let mut buf = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        buf.resize(t.len() * o.dtype.size(), 0);
        generate(t, i, o.seed, o.dtype, &mut buf);
        w.write_all(&buf).map_err(io)?;
        done += buf.len() as u64;
        progress.set(done, total);
    }
    progress.finish();
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    // Renamed last, so an interrupted run never leaves a folder that looks complete.
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("JSON")).map_err(|e| Error::io(path, e))
}

fn config_json(s: &Shape, dtype: SynthDType, bos: u32, eos: u32) -> serde_json::Value {
    let arch = if s.family == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
    let mut c = json!({
        "architectures": [arch], "model_type": s.family, "hidden_size": s.hidden,
        "intermediate_size": s.intermediate, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
        "rms_norm_eps": s.rms_eps, "rope_theta": s.rope_theta, "max_position_embeddings": s.max_positions,
        "tie_word_embeddings": s.tied, "hidden_act": "silu", "torch_dtype": dtype.torch_name(),
        "bos_token_id": bos, "eos_token_id": eos,
    });
    if let Some((factor, low, high, orig)) = s.llama3_rope {
        c["rope_scaling"] = json!({ "rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": orig });
    }
    if s.family == "qwen2" {
        c["use_sliding_window"] = json!(false);
    }
    c
}

/// Copies the given tokenizer.json or generates a byte-level BPE one; returns (bos, eos) ids.
fn write_tokenizer(dir: &Path, o: &SynthOptions) -> Result<(u32, u32)> {
    let dst = dir.join("tokenizer.json");
    if let Some(src) = o.tokenizer {
        let tok = crate::tokenizer::Tokenizer::from_hf_file(src)?;
        if tok.vocab_size() > o.shape.vocab {
            return Err(Error::Input(format!(
                "{}: {} tokens do not fit the {} shape's vocabulary of {}",
                src.display(),
                tok.vocab_size(),
                o.shape.name,
                o.shape.vocab
            )));
        }
        std::fs::copy(src, &dst).map_err(|e| Error::io(&dst, e))?;
        let eos = tok.eos_ids().first().copied().unwrap_or(o.shape.vocab as u32 - 1);
        return Ok((tok.bos_id().unwrap_or(eos), eos));
    }
    let v = o.shape.vocab;
    let (bos, eos) = (v as u32 - 2, v as u32 - 1);
    write_json(&dst, &generated_tokenizer(v - 2, o.seed))?;
    Ok((bos, eos))
}

/// A GPT-2-style byte-level BPE tokenizer.json with `n_regular` tokens: the 256 byte symbols,
/// then tokens made by random merges of existing tokens; `<s>` and `</s>` follow.
fn generated_tokenizer(n_regular: usize, seed: u64) -> serde_json::Value {
    // GPT-2's byte-to-unicode map: printable bytes stand for themselves, the rest move to 256+.
    let mut alphabet = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        alphabet.push(char::from_u32(if printable { b } else { 256 + { extra += 1; extra - 1 } }).unwrap().to_string());
    }
    let mut tokens: Vec<String> = alphabet;
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::new();
    let mut rng = Rng::new(seed ^ 0x70C3_B1E5);
    while tokens.len() < n_regular {
        // Favour short tokens (merging with a byte) so that merges form plausible sub-words.
        let a = tokens[(rng.next_u64() % tokens.len() as u64) as usize].clone();
        let b = tokens[(rng.next_u64() % 256) as usize].clone();
        let m = format!("{a}{b}");
        if m.chars().count() <= 12 && seen.insert(m.clone()) {
            merges.push(format!("{a} {b}"));
            tokens.push(m);
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let special = |id: usize, s: &str| json!({ "id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true });
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(n_regular, "<s>"), special(n_regular + 1, "</s>")],
        "normalizer": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges },
    })
}
