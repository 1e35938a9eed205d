//! The Phi-3 family (Phi-3, Phi-3.5 mini): a Llama whose checkpoints fuse q/k/v into `qkv_proj`
//! and gate/up into `gate_up_proj` (split at load into row ranges of the same tensor, so the
//! npu backend runs q/k/v as one graph as for every family), with LongRoPE ("longrope" / "su")
//! for long contexts. Hugging Face `Phi3ForCausalLM`. (llama.cpp's "phi3" GGUF is not read yet.)

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::Family;
use crate::error::{Error, Result};

pub static FAMILY: Family = Family {
    name: "phi3",
    hf_model_types: &["phi3"],
    gguf_archs: &[],
    from_hf,
    from_gguf,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    if c.opt_f32("partial_rotary_factor")?.is_some_and(|f| f != 1.0) {
        return Err(Error::field(&c.path, "partial_rotary_factor", "partial rotary embeddings are not supported"));
    }
    hf_common(c, FAMILY.name, 10000.0, false)
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    Err(Error::field(&m.file.path, "general.architecture", "phi3 GGUF files are not supported yet (its Hugging Face folders are)"))
}
