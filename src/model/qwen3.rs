//! The Qwen3 family: a Qwen2 without q/k/v biases and with an RMSNorm over each head of q and k
//! before RoPE. Hugging Face `Qwen3ForCausalLM`; GGUF "qwen3".

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::Family;
use crate::error::Result;
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "qwen3",
    hf_model_types: &["qwen3"],
    gguf_archs: &["qwen3"],
    from_hf,
    from_gguf,
};

fn with_features(mut c: ModelConfig) -> ModelConfig {
    c.features.qk_norm = true;
    c
}

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let bias = c.opt_bool("attention_bias")?.unwrap_or(false);
    hf_common(c, FAMILY.name, 1_000_000.0, bias).map(with_features)
}

/// llama.cpp keeps Qwen3's Q/K rows in Hugging Face order (NeoX-style RoPE), like Qwen2's.
fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    m.common(FAMILY.name, RopeStyle::Neox, false).map(with_features)
}
