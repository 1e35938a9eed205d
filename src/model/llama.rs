//! The Llama family: Llama 2/3 (incl. "llama3" RoPE scaling), TinyLlama, SmolLM, Mistral (within
//! one sliding window). Hugging Face `LlamaForCausalLM`; GGUF architecture "llama".

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::Family;
use crate::error::{Error, Result};
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "llama",
    hf_model_types: &["llama", "mistral"],
    gguf_archs: &["llama"],
    from_hf,
    from_gguf,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    if c.opt_bool("mlp_bias")?.unwrap_or(false) {
        return Err(Error::field(&c.path, "mlp_bias", "MLP biases are not supported"));
    }
    let bias = c.opt_bool("attention_bias")?.unwrap_or(false);
    hf_common(c, FAMILY.name, 10000.0, bias)
}

/// llama.cpp stores llama Q/K rows in Meta's interleaved-pair order, so RoPE pairs (2i, 2i+1).
/// Rotating those rows that way gives exactly the Hugging Face result: q.k is unchanged by the
/// same permutation of both, so the weights are used as stored.
fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    let bias = m.file.tensor_info("blk.0.attn_q.bias").is_some();
    m.common(FAMILY.name, RopeStyle::Interleaved, bias)
}
