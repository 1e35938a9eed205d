//! The architecture description every family maps its files onto, and readers for the two places
//! it comes from: a Hugging Face config.json and GGUF metadata.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, Value};
use crate::kernels::ops::{Activation, RopeStyle};

/// Llama 3 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// LongRoPE (Phi-3, `rope_type: "longrope"`): per-frequency divisors, the short ones while a
/// forward pass stays within the original context and the long ones beyond it, and cos/sin
/// scaled by `attention_factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f32>,
    pub long_factor: Vec<f32>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub style: RopeStyle,
    pub llama3: Option<Llama3Scaling>,
    /// Per-frequency divisors stored in the file (GGUF `rope_freqs.weight`), if any.
    pub freq_factors: Option<Vec<f32>>,
    /// Linear position interpolation (`rope_type: "linear"`): every frequency divided by this.
    pub linear_factor: Option<f32>,
    pub longrope: Option<LongRope>,
}

impl RopeConfig {
    /// Plain RoPE of base `theta`: no scaling, no stored factors.
    pub fn plain(theta: f32, style: RopeStyle) -> RopeConfig {
        RopeConfig { theta, style, llama3: None, freq_factors: None, linear_factor: None, longrope: None }
    }

    /// Inverse frequencies for `half` rotated pairs, computed in f32 like Hugging Face does;
    /// `long`: LongRoPE's set for passes beyond the original context.
    pub fn inv_freq(&self, head_dim: usize, long: bool) -> Vec<f32> {
        let half = head_dim / 2;
        if let Some(l) = &self.longrope {
            let ext = if long { &l.long_factor } else { &l.short_factor };
            return (0..half).map(|i| 1.0 / (ext[i] * self.theta.powf((2 * i) as f32 / head_dim as f32))).collect();
        }
        let mut inv: Vec<f32> =
            (0..half).map(|i| 1.0 / self.theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        if let Some(s) = self.llama3 {
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        if let Some(f) = self.linear_factor {
            inv.iter_mut().for_each(|v| *v /= f);
        }
        if let Some(ff) = &self.freq_factors {
            for (f, d) in inv.iter_mut().zip(ff) {
                *f /= d;
            }
        }
        inv
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family name ("llama", "qwen2").
    pub family: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeConfig,
    /// Longest sequence the model supports (positions).
    pub max_seq_len: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// What differs between families, as data: the forward pass is shared.
    pub features: Features,
}

/// Architecture features a family switches on; the defaults are Llama's.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// RMSNorm over each head of q and k (weights [head_dim]) before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Added to every RMSNorm weight (Gemma's Hugging Face weights hold w for a norm that scales
    /// by 1 + w; llama.cpp's GGUF stores 1 + w, so 0 there).
    pub norm_weight_offset: f32,
    /// Embeddings multiplied by this before the first layer (Gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f32>,
    /// The gated MLP's activation (SwiGLU or GeGLU).
    pub activation: Activation,
    /// Attention sees only the last this many positions (Mistral's `sliding_window`)...
    pub sliding_window: Option<usize>,
    /// ...in the layers marked true here (Gemma 2/3 alternate local and global layers); None: all.
    pub window_layers: Option<Vec<bool>>,
    /// Attention scores scaled by this instead of 1 / sqrt(head_dim) (Gemma 2:
    /// query_pre_attn_scalar^-0.5).
    pub attn_scale: Option<f32>,
    /// Scores soft-capped as cap * tanh(s / cap) before the softmax (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits soft-capped the same way (Gemma 2).
    pub final_softcap: Option<f32>,
    /// RMSNorms after attention and after the MLP too, before each adds to the residual
    /// (Gemma 2/3: `post_attention_layernorm`, `pre_feedforward_layernorm` before the MLP,
    /// `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// The RoPE of the local (sliding-window) layers, where it differs (Gemma 3).
    pub local_rope: Option<RopeConfig>,
}

impl Features {
    /// The attention window of layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.is_local(layer))
    }

    /// True for a local (sliding-window) layer of a model that alternates them with global ones.
    pub fn is_local(&self, layer: usize) -> bool {
        self.window_layers.as_ref().is_none_or(|l| l.get(layer).copied().unwrap_or(false))
    }
}

impl Default for Features {
    fn default() -> Self {
        Features {
            qk_norm: false,
            norm_weight_offset: 0.0,
            embed_scale: None,
            activation: Activation::Silu,
            sliding_window: None,
            window_layers: None,
            attn_scale: None,
            attn_softcap: None,
            final_softcap: None,
            sandwich_norms: false,
            local_rope: None,
        }
    }
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::field(path, field, msg));
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(name, "must be positive".into());
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad("num_key_value_heads", format!("{} does not divide num_attention_heads {}", self.num_kv_heads, self.num_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad("head_dim", format!("{} must be positive and even", self.head_dim));
        }
        if let Some(l) = &self.rope.longrope {
            let half = self.head_dim / 2;
            if l.short_factor.len() != half || l.long_factor.len() != half {
                return bad("rope_parameters", format!("short_factor and long_factor need {half} values (head_dim / 2), got {} and {}", l.short_factor.len(), l.long_factor.len()));
            }
        }
        if !(self.rope.theta > 0.0) {
            return bad("rope_theta", format!("{} must be positive", self.rope.theta));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_rope_scaling_divides_every_frequency() {
        let base = RopeConfig::plain(10000.0, RopeStyle::Neox);
        let linear = RopeConfig { linear_factor: Some(4.0), ..base.clone() };
        for (a, b) in base.inv_freq(64, false).iter().zip(linear.inv_freq(64, false)) {
            assert_eq!(a / 4.0, b);
        }
    }
}

/// Typed access to a config.json with errors that name the file and the key.
pub struct HfConfig {
    pub path: PathBuf,
    pub json: Json,
}

impl HfConfig {
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Json = serde_json::from_str(&text).map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
        if !json.is_object() {
            return Err(Error::corrupt(path, "expected a JSON object"));
        }
        Ok(HfConfig { path: path.to_path_buf(), json })
    }

    pub fn model_type(&self) -> Option<&str> {
        self.json.get("model_type").and_then(Json::as_str)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| Error::field(&self.path, key, "missing"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| Error::field(&self.path, key, format!("expected a non-negative integer, found {v}"))),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| Error::field(&self.path, key, format!("expected a number, found {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Error::field(&self.path, key, format!("expected a string, found {v}"))),
        }
    }

    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || Error::field(&self.path, key, format!("expected a list of strings, found {v}"));
        v.as_array().ok_or_else(bad)?.iter().map(|s| s.as_str().map(str::to_owned).ok_or_else(bad)).collect::<Result<Vec<_>>>().map(Some)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| Error::field(&self.path, key, format!("expected true or false, found {v}"))),
        }
    }

    /// Token ids given as one integer or a list (`eos_token_id` may be either).
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Json| Error::field(&self.path, key, format!("expected a token id or a list of them, found {v}"));
        match self.get(key) {
            None => Ok(vec![]),
            Some(v @ Json::Array(items)) => items.iter().map(|i| i.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad(v))).collect(),
            Some(v) => v.as_u64().and_then(|i| u32::try_from(i).ok()).map(|i| vec![i]).ok_or_else(|| bad(v)),
        }
    }

    /// RoPE settings from either layout: transformers 5 `rope_parameters {rope_theta, rope_type, ...}`
    /// or the older top-level `rope_theta` + `rope_scaling {rope_type | type, ...}`.
    /// The RoPE of the model, or of its global layers where layers differ (transformers 5 writes
    /// `rope_parameters` per layer type then: {"full_attention": {...}, "sliding_attention": {...}}).
    pub fn rope(&self, default_theta: f32, style: RopeStyle) -> Result<RopeConfig> {
        let params = self.get("rope_parameters").or_else(|| self.get("rope_scaling"));
        let key = if self.get("rope_parameters").is_some() { "rope_parameters" } else { "rope_scaling" };
        match params.and_then(|p| p.get("full_attention")) {
            Some(full) => self.rope_from(Some(full), "rope_parameters.full_attention", default_theta, style),
            None => self.rope_from(params, key, default_theta, style),
        }
    }

    /// The RoPE of the sliding-window (local) layers where it differs from the global one
    /// (Gemma 3): `rope_parameters.sliding_attention`, or the older `rope_local_base_freq`.
    pub fn local_rope(&self, style: RopeStyle) -> Result<Option<RopeConfig>> {
        if let Some(local) = self.get("rope_parameters").and_then(|p| p.get("sliding_attention")) {
            return self.rope_from(Some(local), "rope_parameters.sliding_attention", 10000.0, style).map(Some);
        }
        Ok(self.opt_f32("rope_local_base_freq")?.map(|theta| RopeConfig::plain(theta, style)))
    }

    fn rope_from(&self, params: Option<&Json>, key: &str, default_theta: f32, style: RopeStyle) -> Result<RopeConfig> {
        let theta = match params.and_then(|p| p.get("rope_theta")).and_then(Json::as_f64) {
            Some(t) => t as f32,
            None => self.opt_f32("rope_theta")?.unwrap_or(default_theta),
        };
        let mut llama3 = None;
        let mut linear_factor = None;
        let mut longrope = None;
        if let Some(p) = params {
            let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Json::as_str).unwrap_or("default");
            let num = |k: &str| {
                p.get(k).and_then(Json::as_f64).map(|v| v as f32).ok_or_else(|| Error::field(&self.path, format!("{key}.{k}"), "missing or not a number"))
            };
            match kind {
                "default" => {}
                "linear" => linear_factor = Some(num("factor")?),
                "llama3" => {
                    llama3 = Some(Llama3Scaling {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?,
                    })
                }
                "longrope" | "su" => {
                    let list = |k: &str| -> Result<Vec<f32>> {
                        let bad = || Error::field(&self.path, format!("{key}.{k}"), "missing or not a list of numbers");
                        p.get(k).and_then(Json::as_array).ok_or_else(bad)?.iter().map(|v| v.as_f64().map(|f| f as f32).ok_or_else(bad)).collect()
                    };
                    let original = match p.get("original_max_position_embeddings").and_then(Json::as_u64) {
                        Some(o) => o as usize,
                        None => self.usize("original_max_position_embeddings")?,
                    };
                    if original == 0 {
                        return Err(Error::field(&self.path, "original_max_position_embeddings", "must be positive"));
                    }
                    // transformers: the ratio of the context lengths unless `factor` is given; the
                    // attention factor sqrt(1 + ln(factor) / ln(original)) unless given.
                    let factor = match p.get("factor").and_then(Json::as_f64) {
                        Some(f) => f,
                        None => self.usize("max_position_embeddings")? as f64 / original as f64,
                    };
                    let attention_factor = match p.get("attention_factor").and_then(Json::as_f64) {
                        Some(a) => a,
                        None if factor <= 1.0 => 1.0,
                        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
                    };
                    let (short_factor, long_factor) = (list("short_factor")?, list("long_factor")?);
                    if p.get("partial_rotary_factor").and_then(Json::as_f64).is_some_and(|f| f != 1.0) {
                        return Err(Error::field(&self.path, format!("{key}.partial_rotary_factor"), "partial rotary embeddings are not supported"));
                    }
                    longrope = Some(LongRope { short_factor, long_factor, original_max_position_embeddings: original, attention_factor: attention_factor as f32 });
                }
                other => {
                    return Err(Error::field(&self.path, format!("{key}.rope_type"), format!("'{other}' is not supported (supported: default, linear, llama3, longrope)")))
                }
            }
        }
        Ok(RopeConfig { theta, style, llama3, freq_factors: None, linear_factor, longrope })
    }
}

/// Typed access to GGUF metadata under an architecture prefix (`llama.embedding_length`, ...).
pub struct GgufMeta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl GgufMeta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// `arch.k` converted by `conv`; a present value of the wrong type is an error naming the key.
    fn opt<T>(&self, k: &str, what: &str, conv: impl Fn(&Value) -> Option<T>) -> Result<Option<T>> {
        let key = self.key(k);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| Error::field(&self.file.path, key, format!("expected {what}, found {v:?}"))),
        }
    }

    pub fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        self.opt(k, "an integer", |v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
    }

    pub fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| Error::field(&self.file.path, self.key(k), "missing"))
    }

    pub fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        self.opt(k, "a number", |v| v.as_f64().map(|v| v as f32))
    }

    /// `{arch}.rope.scaling.type`: none, or linear with `{arch}.rope.scaling.factor`; others are refused.
    fn rope_linear_factor(&self) -> Result<Option<f32>> {
        let key = self.key("rope.scaling.type");
        match self.file.get(&key).and_then(|v| v.as_str()) {
            None | Some("none") => Ok(None),
            Some("linear") => Ok(Some(self.opt_f32("rope.scaling.factor")?.ok_or_else(|| Error::field(&self.file.path, self.key("rope.scaling.factor"), "missing"))?)),
            Some(other) => Err(Error::field(&self.file.path, key, format!("'{other}' is not supported (supported: none, linear)"))),
        }
    }

    /// Which layers are local (sliding-window), as llama.cpp reads them:
    /// `attention.sliding_window_pattern` as one bool per layer, or as n (every n-th layer
    /// global, the others local), else `default_n`.
    pub fn window_layers(&self, num_layers: usize, default_n: usize) -> Result<Vec<bool>> {
        let key = self.key("attention.sliding_window_pattern");
        let n = match self.file.get(&key) {
            Some(Value::Array(a)) => {
                let flags: Option<Vec<bool>> = a.iter().map(Value::as_bool).collect();
                return match flags {
                    Some(f) if f.len() == num_layers => Ok(f),
                    _ => Err(Error::field(&self.file.path, key, format!("expected {num_layers} booleans (one per layer)"))),
                };
            }
            Some(_) => self.opt_usize("attention.sliding_window_pattern")?.unwrap_or(default_n),
            None => default_n,
        };
        // llama.cpp's set_swa_pattern: layer i is local when i % n < n - 1 (n = 0 or 1: none).
        Ok((0..num_layers).map(|i| n > 1 && i % n < n - 1).collect())
    }

    /// Gemma 2/3's query scaling as llama.cpp computes it (the GGUF stores none):
    /// 1 / sqrt(hidden / heads) for the 27B models (their `query_pre_attn_scalar`), else
    /// 1 / sqrt(head_dim); the 27B models are known by their layer count.
    pub fn gemma_attn_scale(&self, c: &ModelConfig, layers_of_27b: usize) -> f32 {
        let d = if c.num_layers == layers_of_27b { c.hidden_size / c.num_heads.max(1) } else { c.head_dim };
        1.0 / (d as f32).sqrt()
    }

    /// An f32 vector stored as a tensor (Phi-3's `rope_factors_long.weight`), if present.
    pub fn opt_f32_tensor(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.file.tensor_info(name) {
            Some(_) => Ok(Some(self.file.tensor(name)?.data().to_vec())),
            None => Ok(None),
        }
    }

    pub fn token_id(&self, key: &str) -> Option<u32> {
        self.file.get(key).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
    }

    /// The llama-style hyper-parameters shared by every family we read from GGUF.
    pub fn common(&self, family: &'static str, style: RopeStyle, qkv_bias: bool) -> Result<ModelConfig> {
        let hidden_size = self.usize("embedding_length")?;
        let num_heads = self.usize("attention.head_count")?;
        let head_dim = match self.opt_usize("attention.key_length")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = match self.opt_usize("vocab_size")? {
            Some(v) => v,
            None => match self.file.tensor_info("token_embd.weight") {
                Some(t) => t.shape().first().copied().ok_or_else(|| Error::field(&self.file.path, "token_embd.weight", "has no dimensions"))?,
                None => return Err(Error::field(&self.file.path, "token_embd.weight", "missing")),
            },
        };
        let freq_factors = self.opt_f32_tensor("rope_freqs.weight")?;
        let eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| self.token_id(k))
            .fold(Vec::new(), |mut v, id| {
                if !v.contains(&id) {
                    v.push(id)
                }
                v
            });
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size: self.usize("feed_forward_length")?,
            num_layers: self.usize("block_count")?,
            num_heads,
            num_kv_heads: self.opt_usize("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            vocab_size,
            rms_norm_eps: self.opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope: RopeConfig { theta: self.opt_f32("rope.freq_base")?.unwrap_or(10000.0), style, llama3: None, freq_factors, linear_factor: self.rope_linear_factor()?, longrope: None },
            max_seq_len: self.opt_usize("context_length")?.unwrap_or(2048),
            tie_word_embeddings: self.file.tensor_info("output.weight").is_none(),
            qkv_bias,
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: eos,
            features: Features::default(),
        })
    }
}

/// The llama-style fields of a config.json shared by every family.
pub fn hf_common(c: &HfConfig, family: &'static str, default_theta: f32, qkv_bias: bool) -> Result<ModelConfig> {
    let hidden_size = c.usize("hidden_size")?;
    let num_heads = c.usize("num_attention_heads")?;
    let head_dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None => hidden_size.checked_div(num_heads).unwrap_or(0),
    };
    let max_seq_len = c.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    // Mistral-style configs give `sliding_window` (null when off); Qwen2 ones switch it with
    // `use_sliding_window` (false on released models).
    let sliding_window = match c.opt_bool("use_sliding_window")?.unwrap_or(true) {
        true => c.opt_usize("sliding_window")?,
        false => None,
    };
    if sliding_window == Some(0) {
        return Err(Error::field(&c.path, "sliding_window", "must be positive"));
    }
    Ok(ModelConfig {
        family,
        hidden_size,
        intermediate_size: c.usize("intermediate_size")?,
        num_layers: c.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim,
        vocab_size: c.usize("vocab_size")?,
        rms_norm_eps: c.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope: c.rope(default_theta, RopeStyle::Neox)?,
        max_seq_len,
        tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias,
        bos_token_id: c.token_ids("bos_token_id")?.first().copied(),
        eos_token_ids: c.token_ids("eos_token_id")?,
        features: Features { sliding_window, ..Features::default() },
    })
}
