//! The Gemma 2 family: Gemma's GeGLU, 1 + w norms and embedding scale, plus soft-capping of
//! attention scores and final logits, norms after attention and after the MLP as well as before,
//! query scaling from `query_pre_attn_scalar`, and layers alternating a sliding window with global
//! attention (`layer_types`). Hugging Face `Gemma2ForCausalLM`; GGUF "gemma2" (norms stored as
//! 1 + w, the attention scale derived as llama.cpp does).

use super::config::{hf_common, Features, GgufMeta, HfConfig, ModelConfig, RopeConfig};
use super::{gemma, Family};
use crate::error::{Error, Result};
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "gemma2",
    hf_model_types: &["gemma2"],
    gguf_archs: &["gemma2"],
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
    match nonpositive_cap(f) {
        Some((key, cap)) => Err(Error::field(&c.path, key, format!("soft-capping must be positive, got {cap}"))),
        None => Ok(()),
    }
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    let mut c = gemma::with_features(m.common(FAMILY.name, RopeStyle::Neox, false)?, 0.0);
    gguf_layer_features(m, &mut c, 2, 46)?;
    c.features.attn_softcap = m.opt_f32("attn_logit_softcapping")?;
    // llama.cpp's default window for Gemma 2 when the file gives none.
    c.features.sliding_window = Some(m.opt_usize("attention.sliding_window")?.unwrap_or(4096));
    Ok(c)
}

/// Gemma 2's layer from GGUF metadata, which Gemma 3 builds on: norms around attention and the
/// MLP, the attention scale, final soft-capping, local layers from the window pattern
/// (`default_pattern`: every n-th layer global) with `rope.freq_base_swa` as their RoPE base.
pub(super) fn gguf_layer_features(m: &GgufMeta, c: &mut ModelConfig, default_pattern: usize, layers_of_27b: usize) -> Result<()> {
    c.features.attn_scale = Some(m.gemma_attn_scale(c, layers_of_27b));
    let f = &mut c.features;
    f.sandwich_norms = true;
    f.final_softcap = m.opt_f32("final_logit_softcapping")?;
    f.window_layers = Some(m.window_layers(c.num_layers, default_pattern)?);
    if let Some(theta) = m.opt_f32("rope.freq_base_swa")? {
        f.local_rope = Some(RopeConfig::plain(theta, RopeStyle::Neox));
    }
    match nonpositive_cap(f) {
        Some((key, cap)) => Err(Error::field(&m.file.path, format!("{}.{key}", m.arch), format!("soft-capping must be positive, got {cap}"))),
        None => Ok(()),
    }
}

/// The first soft-cap that is not positive (a NaN included), by its config key.
fn nonpositive_cap(f: &Features) -> Option<(&'static str, f32)> {
    [("attn_logit_softcapping", f.attn_softcap), ("final_logit_softcapping", f.final_softcap)].into_iter().find_map(|(key, cap)| cap.filter(|c| !(*c > 0.0)).map(|c| (key, c)))
}
