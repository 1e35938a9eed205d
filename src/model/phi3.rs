//! The Phi-3 family (Phi-3, Phi-3.5 mini): a Llama whose checkpoints fuse q/k/v into `qkv_proj`
//! and gate/up into `gate_up_proj` (split at load into row ranges of the same tensor, so the
//! npu backend runs q/k/v as one graph as for every family), with LongRoPE ("longrope" / "su")
//! for long contexts. Hugging Face `Phi3ForCausalLM`; GGUF "phi3" (llama.cpp's fused `attn_qkv`
//! and double-width `ffn_up`, LongRoPE factors as tensors).

use super::config::{hf_common, GgufMeta, HfConfig, LongRope, ModelConfig};
use super::Family;
use crate::error::{Error, Result};
use crate::kernels::ops::RopeStyle;

pub static FAMILY: Family = Family {
    name: "phi3",
    hf_model_types: &["phi3"],
    gguf_archs: &["phi3"],
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
    let mut c = m.common(FAMILY.name, RopeStyle::Neox, false)?;
    if m.opt_usize("rope.dimension_count")?.is_some_and(|d| d != c.head_dim) {
        return Err(Error::field(&m.file.path, "phi3.rope.dimension_count", "partial rotary embeddings are not supported"));
    }
    // Phi-3 mini's window, as transformers applies it (llama.cpp leaves it off); 0 means none.
    c.features.sliding_window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let (long, short) = (m.opt_f32_tensor("rope_factors_long.weight")?, m.opt_f32_tensor("rope_factors_short.weight")?);
    if let (Some(long_factor), Some(short_factor)) = (long, short) {
        let original = m.usize("rope.scaling.original_context_length")?;
        if original == 0 {
            return Err(Error::field(&m.file.path, "phi3.rope.scaling.original_context_length", "must be positive"));
        }
        // As the converter computes it when the file does not say.
        let factor = c.max_seq_len as f64 / original as f64;
        let attention_factor = match m.opt_f32("rope.scaling.attn_factor")? {
            Some(a) => a,
            None if factor <= 1.0 => 1.0,
            None => (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32,
        };
        c.rope.longrope = Some(LongRope { short_factor, long_factor, original_max_position_embeddings: original, attention_factor });
    }
    Ok(c)
}
