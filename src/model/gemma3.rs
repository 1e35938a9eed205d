//! The Gemma 3 family (text): Gemma 2's layer (norms before and after attention and the MLP,
//! query scaling from `query_pre_attn_scalar`) with RMSNorms on q and k instead of score
//! soft-capping, local layers with a sliding window and a RoPE of their own alternating with
//! global ones (`layer_types`, 5:1 in the released models; global RoPE with its own base and
//! scaling). Hugging Face `Gemma3ForCausalLM` (`gemma3_text`; the multimodal `gemma3` checkpoints'
//! text model is not read). (llama.cpp's "gemma3" GGUF is not read yet.)

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::{gemma, gemma2, Family};
use crate::error::{Error, Result};
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "gemma3",
    hf_model_types: &["gemma3_text"],
    gguf_archs: &[],
    from_hf,
    from_gguf,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    gemma::check_activation(c)?;
    if c.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
        return Err(Error::field(&c.path, "use_bidirectional_attention", "bidirectional attention (an encoder) is not supported"));
    }
    let mut m = gemma::with_features(hf_common(c, FAMILY.name, 1_000_000.0, false)?, 1.0);
    // transformers' default for Gemma 3: every sixth layer global.
    gemma2::layer_features(c, &mut m, |i| (i + 1) % 6 != 0)?;
    m.features.qk_norm = true;
    m.features.local_rope = c.local_rope(RopeStyle::Neox)?;
    Ok(m)
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    Err(Error::field(&m.file.path, "general.architecture", "gemma3 GGUF files are not supported yet (its Hugging Face folders are)"))
}
