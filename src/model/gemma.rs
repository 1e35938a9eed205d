//! The Gemma family (Gemma 1): GeGLU with the tanh GELU, RMSNorm scaling by 1 + w, embeddings
//! multiplied by sqrt(hidden_size), a head size of its own (not hidden / heads), tied
//! embeddings. Hugging Face `GemmaForCausalLM`; GGUF "gemma" (llama.cpp stores the norms as
//! 1 + w already).

use super::config::{hf_common, GgufMeta, HfConfig, ModelConfig};
use super::Family;
use crate::error::{Error, Result};
use crate::kernels::ops::{Activation, RopeStyle};

pub static FAMILY: Family = Family {
    name: "gemma",
    hf_model_types: &["gemma"],
    gguf_archs: &["gemma"],
    from_hf,
    from_gguf,
};

/// What every Gemma generation shares (Gemma 2 and 3 add theirs).
pub(super) fn with_features(mut c: ModelConfig, norm_weight_offset: f32) -> ModelConfig {
    let f = &mut c.features;
    f.activation = Activation::GeluTanh;
    f.norm_weight_offset = norm_weight_offset;
    // As the reference computes it: sqrt in double, then rounded to the model's float type.
    f.embed_scale = Some((c.hidden_size as f64).sqrt() as f32);
    c.tie_word_embeddings = true;
    c
}

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    check_activation(c)?;
    hf_common(c, FAMILY.name, 10000.0, false).map(|m| with_features(m, 1.0))
}

/// Gemma's MLP activation is the tanh GELU; refuse anything else rather than compute it wrong.
pub(super) fn check_activation(c: &HfConfig) -> Result<()> {
    // transformers reads `hidden_activation` (older configs: `hidden_act`); both name the tanh GELU.
    let act = c.opt_str("hidden_activation")?.or(c.opt_str("hidden_act")?).unwrap_or("gelu_pytorch_tanh");
    if !matches!(act, "gelu_pytorch_tanh" | "gelu") {
        return Err(Error::field(&c.path, "hidden_activation", format!("'{act}' is not supported (gelu_pytorch_tanh)")));
    }
    Ok(())
}

fn from_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    m.common(FAMILY.name, RopeStyle::Neox, false).map(|c| with_features(c, 0.0))
}
