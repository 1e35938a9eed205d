//! The Gemma 3 family (text): Gemma 2's layer (norms before and after attention and the MLP,
//! query scaling from `query_pre_attn_scalar`) with RMSNorms on q and k instead of score
//! soft-capping, local layers with a sliding window and a RoPE of their own alternating with
//! global ones (`layer_types`, 5:1 in the released models; global RoPE with its own base and
//! scaling). Hugging Face `Gemma3ForCausalLM` (`gemma3_text`; the multimodal `gemma3` checkpoints'
//! text model is not read); GGUF "gemma3".

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig, RopeConfig};
use super::{gemma, gemma2, Family};
use crate::error::{Error, Result};
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "gemma3",
    hf_model_types: &["gemma3_text"],
    gguf_archs: &["gemma3"],
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
    let mut c = gemma::with_features(m.common(FAMILY.name, RopeStyle::Neox, false)?, 0.0);
    gemma2::gguf_layer_features(m, &mut c, 6, 62)?;
    c.features.qk_norm = true;
    // llama.cpp: local layers only when the file gives a positive window; their RoPE base is
    // 10000 unless stored, never scaled.
    c.features.sliding_window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    if c.features.sliding_window.is_some() && c.features.local_rope.is_none() {
        c.features.local_rope = Some(RopeConfig::plain(10000.0, RopeStyle::Neox));
    }
    Ok(c)
}
