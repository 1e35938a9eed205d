//! The Gemma 3 family (text): Gemma 2's layer (norms before and after attention and the MLP,
//! query scaling from `query_pre_attn_scalar`) with RMSNorms on q and k instead of score
//! soft-capping, local layers with a sliding window and a RoPE of their own alternating with
//! global ones (`layer_types`, 5:1 in the released models; global RoPE with its own base and
//! scaling). Hugging Face `Gemma3ForCausalLM` (`gemma3_text`; the multimodal `gemma3` checkpoints'
//! text model is not read). (llama.cpp's "gemma3" GGUF is not read yet.)

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::{gemma, Family};
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
    let f = &mut m.features;
    f.qk_norm = true;
    f.sandwich_norms = true;
    f.attn_scale = c.opt_f32("query_pre_attn_scalar")?.map(|q| (q as f64).powf(-0.5) as f32);
    f.attn_softcap = c.opt_f32("attn_logit_softcapping")?;
    f.final_softcap = c.opt_f32("final_logit_softcapping")?;
    f.local_rope = c.local_rope(RopeStyle::Neox)?;
    f.window_layers = Some(match c.opt_str_list("layer_types")? {
        Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
        // transformers' default for Gemma 3: every sixth layer global.
        None => (0..m.num_layers).map(|i| (i + 1) % 6 != 0).collect(),
    });
    Ok(m)
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    Err(Error::field(&m.file.path, "general.architecture", "gemma3 GGUF files are not supported yet (its Hugging Face folders are)"))
}
