//! The Gemma 2 family: Gemma's GeGLU, 1 + w norms and embedding scale, plus soft-capping of
//! attention scores and final logits, norms after attention and after the MLP as well as before,
//! query scaling from `query_pre_attn_scalar`, and layers alternating a sliding window with global
//! attention (`layer_types`). Hugging Face `Gemma2ForCausalLM`. (llama.cpp's "gemma2" GGUF,
//! whose norm names differ, is not read yet.)

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::{gemma, Family};
use crate::error::{Error, Result};

pub static FAMILY: Family = Family {
    name: "gemma2",
    hf_model_types: &["gemma2"],
    gguf_archs: &[],
    from_hf,
    from_gguf,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    gemma::check_activation(c)?;
    let mut m = gemma::with_features(hf_common(c, FAMILY.name, 10000.0, false)?, 1.0);
    // transformers' default for Gemma 2: even layers local, odd layers global.
    layer_features(c, &mut m, |i| i % 2 == 0)?;
    Ok(m)
}

/// Gemma 2's layer, which Gemma 3 builds on: norms around attention and the MLP, query scaling
/// from `query_pre_attn_scalar`, soft-capping where the config sets it, local (sliding-window)
/// layers from `layer_types` (else `default_local`).
pub(super) fn layer_features(c: &HfConfig, m: &mut ModelConfig, default_local: impl Fn(usize) -> bool) -> Result<()> {
    let f = &mut m.features;
    f.sandwich_norms = true;
    f.attn_softcap = c.opt_f32("attn_logit_softcapping")?;
    f.final_softcap = c.opt_f32("final_logit_softcapping")?;
    // transformers: query_pre_attn_scalar ** -0.5 in double, used as a float32 scale.
    f.attn_scale = c.opt_f32("query_pre_attn_scalar")?.map(|q| (q as f64).powf(-0.5) as f32);
    f.window_layers = Some(match c.opt_str_list("layer_types")? {
        Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
        None => (0..m.num_layers).map(default_local).collect(),
    });
    for cap in [f.attn_softcap, f.final_softcap].into_iter().flatten() {
        if !(cap > 0.0) {
            return Err(Error::field(&c.path, "attn_logit_softcapping", format!("soft-capping must be positive, got {cap}")));
        }
    }
    Ok(())
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    Err(Error::field(&m.file.path, "general.architecture", "gemma2 GGUF files are not supported yet (its Hugging Face folders are)"))
}
