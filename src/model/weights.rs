//! Where a model's tensors come from. Every format answers to Hugging Face tensor names
//! (`model.layers.0.self_attn.q_proj.weight`), so model code never sees a file layout.

use std::path::Path;

use crate::error::Result;
use crate::format::gguf::GgufFile;
use crate::format::llama2c::Llama2cFile;
use crate::format::safetensors::SafetensorsModel;
use crate::tensor::Tensor;

pub enum Weights {
    Safetensors { dir: std::path::PathBuf, model: SafetensorsModel },
    Gguf(GgufFile),
    Llama2c(Llama2cFile),
}

/// The GGUF name llama.cpp uses for a Hugging Face tensor name, in `file`: the one name that
/// depends on the family is `post_attention_layernorm`, the norm before the MLP in Llama-style
/// models (`ffn_norm`) but the norm after attention in Gemma 2/3 (`post_attention_norm`, whose
/// MLP norm is `pre_feedforward_layernorm`); the file's tensors tell which.
fn gguf_name_in(file: &GgufFile, hf: &str) -> String {
    if let Some(layer) = hf.strip_prefix("model.layers.").and_then(|r| r.strip_suffix(".post_attention_layernorm.weight")) {
        let post = format!("blk.{layer}.post_attention_norm.weight");
        if file.tensor_info(&post).is_some() {
            return post;
        }
    }
    gguf_name(hf).unwrap_or_else(|| hf.to_string())
}

/// The GGUF name llama.cpp uses for a Hugging Face tensor name of a llama-like model.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        // Phi-3's fused gate and up rows are llama.cpp's ffn_up of twice the width.
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

impl Weights {
    pub fn path(&self) -> &Path {
        match self {
            Weights::Safetensors { dir, .. } => dir,
            Weights::Gguf(g) => &g.path,
            Weights::Llama2c(f) => &f.path,
        }
    }

    pub fn format_name(&self) -> &'static str {
        match self {
            Weights::Safetensors { .. } => "Hugging Face safetensors",
            Weights::Gguf(_) => "GGUF",
            Weights::Llama2c(_) => "llama2.c checkpoint",
        }
    }

    /// True when the file holds a tensor of this Hugging Face name.
    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            Weights::Safetensors { model, .. } => model.contains(hf_name),
            Weights::Gguf(g) => g.tensor_info(&gguf_name_in(g, hf_name)).is_some(),
            Weights::Llama2c(f) => f.contains(hf_name),
        }
    }

    pub fn tensor(&self, hf_name: &str) -> Result<Tensor> {
        match self {
            Weights::Safetensors { model, .. } => model.tensor(hf_name),
            Weights::Gguf(g) => g.tensor(&gguf_name_in(g, hf_name)),
            Weights::Llama2c(f) => f.tensor(hf_name),
        }
    }
}

impl Weights {
    /// (name as stored, dtype, row-major shape) of every tensor in the file.
    pub fn tensor_list(&self) -> Vec<(String, String, Vec<usize>)> {
        match self {
            Weights::Safetensors { model, .. } => {
                model.infos().into_iter().map(|i| (i.name.to_string(), i.dtype.to_string(), i.shape.to_vec())).collect()
            }
            Weights::Gguf(g) => g
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dtype.map_or_else(|| format!("ggml type {}", t.ggml_type), |d| d.name().to_string()), t.shape()))
                .collect(),
            Weights::Llama2c(f) => {
                let h = f.header;
                let kv = h.dim / h.n_heads * h.n_kv_heads;
                let mut v = vec![("token_embedding".to_string(), "F32".to_string(), vec![h.vocab_size, h.dim])];
                for (name, shape) in [
                    ("rms_att", vec![h.n_layers, h.dim]),
                    ("wq", vec![h.n_layers, h.dim, h.dim]),
                    ("wk", vec![h.n_layers, kv, h.dim]),
                    ("wv", vec![h.n_layers, kv, h.dim]),
                    ("wo", vec![h.n_layers, h.dim, h.dim]),
                    ("rms_ffn", vec![h.n_layers, h.dim]),
                    ("w1", vec![h.n_layers, h.hidden_dim, h.dim]),
                    ("w2", vec![h.n_layers, h.dim, h.hidden_dim]),
                    ("w3", vec![h.n_layers, h.hidden_dim, h.dim]),
                    ("rms_final", vec![h.dim]),
                ] {
                    v.push((name.to_string(), "F32".to_string(), shape));
                }
                if !h.shared_classifier {
                    v.push(("wcls".to_string(), "F32".to_string(), vec![h.vocab_size, h.dim]));
                }
                v
            }
        }
    }

    /// "F16 x 30, F32 x 12" style count of on-disk dtypes, the type holding the most weights first.
    pub fn dtype_summary(&self) -> String {
        // (dtype, tensors, elements), the type holding the most weights first.
        let mut counts: Vec<(String, usize, usize)> = Vec::new();
        for (_, d, shape) in self.tensor_list() {
            let n: usize = shape.iter().product();
            match counts.iter_mut().find(|(name, _, _)| *name == d) {
                Some((_, c, e)) => (*c, *e) = (*c + 1, *e + n),
                None => counts.push((d, 1, n)),
            }
        }
        counts.sort_by(|a, b| b.2.cmp(&a.2));
        counts.iter().map(|(d, c, _)| format!("{d} x {c}")).collect::<Vec<_>>().join(", ")
    }
}
