//! The Qwen2 family: Qwen1.5, Qwen2, Qwen2.5. A Llama with biases on the q/k/v projections,
//! usually tied embeddings and a large RoPE theta. Hugging Face `Qwen2ForCausalLM`; GGUF "qwen2".

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::Family;
use crate::error::Result;
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "qwen2",
    hf_model_types: &["qwen2"],
    gguf_archs: &["qwen2"],
    from_hf,
    from_gguf,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    hf_common(c, FAMILY.name, 1_000_000.0, true)
}

/// llama.cpp keeps Qwen2's Q/K rows in Hugging Face order (NeoX-style RoPE).
fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    m.common(FAMILY.name, RopeStyle::Neox, true)
}
