//! llama2.c checkpoints (Karpathy's legacy "version 0" export): a 7 x i32 header, then f32 weights
//! stacked per kind over all layers. A negative vocab size means the classifier is not tied to the
//! token embedding and its weights follow the RoPE tables at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::FileBytes;

use crate::error::{Error, Result};
use crate::tensor::dtype::DType;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub shared_classifier: bool,
}

pub struct Llama2cFile {
    pub path: PathBuf,
    pub header: Llama2cHeader,
    map: Arc<FileBytes>,
}

/// Per-layer tensors as (HF-style suffix, rows, cols); the file stores each kind for all layers.
fn layer_kinds(h: &Llama2cHeader) -> [(&'static str, usize, usize); 9] {
    let kv_dim = h.dim / h.n_heads * h.n_kv_heads;
    [
        ("input_layernorm.weight", 1, h.dim),
        ("self_attn.q_proj.weight", h.dim, h.dim),
        ("self_attn.k_proj.weight", kv_dim, h.dim),
        ("self_attn.v_proj.weight", kv_dim, h.dim),
        ("self_attn.o_proj.weight", h.dim, h.dim),
        ("post_attention_layernorm.weight", 1, h.dim),
        ("mlp.gate_proj.weight", h.hidden_dim, h.dim),
        ("mlp.down_proj.weight", h.dim, h.hidden_dim),
        ("mlp.up_proj.weight", h.hidden_dim, h.dim),
    ]
}

impl Llama2cFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = crate::format::map_file(path)?;
        if map.len() >= 4 && &map[..4] == b"ak42" {
            return Err(Error::corrupt(path, "llama2.c export version 1/2 ('ak42' magic) is not supported; use the legacy export or GGUF"));
        }
        if map.len() < 28 {
            return Err(Error::corrupt(path, format!("truncated llama2.c header: {} bytes, need 28", map.len())));
        }
        let f = |i: usize| i32::from_le_bytes(map[i * 4..i * 4 + 4].try_into().unwrap());
        let names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
        let mut v = [0usize; 7];
        for (i, name) in names.iter().enumerate() {
            let x = f(i);
            let abs = x.unsigned_abs() as usize;
            if abs == 0 || abs > 1 << 24 || (x < 0 && i != 5) {
                return Err(Error::field(path, format!("header.{name}"), format!("implausible value {x}; not a llama2.c checkpoint?")));
            }
            v[i] = abs;
        }
        let header = Llama2cHeader {
            dim: v[0],
            hidden_dim: v[1],
            n_layers: v[2],
            n_heads: v[3],
            n_kv_heads: v[4],
            vocab_size: v[5],
            seq_len: v[6],
            shared_classifier: f(5) > 0,
        };
        if header.dim % header.n_heads != 0 || header.n_heads % header.n_kv_heads != 0 || (header.dim / header.n_heads) % 2 != 0 {
            return Err(Error::field(path, "header.n_heads", format!("dim {} / n_heads {} / n_kv_heads {} are inconsistent", header.dim, header.n_heads, header.n_kv_heads)));
        }
        let file = Llama2cFile { path: path.to_path_buf(), header, map: Arc::new(map) };
        // In u128 first: the header's products can exceed usize; once this fits the file, every
        // offset computed later (all smaller) fits too.
        let h = &header;
        let per_layer: u128 = layer_kinds(h).iter().map(|(_, r, c)| (*r as u128) * (*c as u128)).sum();
        let floats = (h.vocab_size as u128) * (h.dim as u128) * if h.shared_classifier { 1 } else { 2 }
            + (h.n_layers as u128) * per_layer
            + h.dim as u128
            + (h.seq_len as u128) * ((h.dim / h.n_heads) as u128);
        let need = 28 + floats * 4;
        if (file.map.len() as u128) < need {
            return Err(Error::corrupt(path, format!("truncated: the header implies at least {need} bytes, file has {}", file.map.len())));
        }
        Ok(file)
    }

    fn layers_offset(&self) -> usize {
        28 + self.header.vocab_size * self.header.dim * 4
    }

    fn final_norm_offset(&self) -> usize {
        let per_layer: usize = layer_kinds(&self.header).iter().map(|(_, r, c)| r * c).sum();
        self.layers_offset() + self.header.n_layers * per_layer * 4
    }

    fn classifier_offset(&self) -> usize {
        let h = &self.header;
        // final norm, then the legacy freq_cis_real / freq_cis_imag tables (seq_len x head_size/2 each).
        self.final_norm_offset() + h.dim * 4 + h.seq_len * (h.dim / h.n_heads) * 4
    }

    fn at(&self, offset: usize, shape: Vec<usize>) -> Tensor {
        Tensor::from_mapped(&self.map, offset, shape, DType::F32)
    }

    /// A tensor by its Hugging Face name (`model.layers.3.mlp.up_proj.weight`, ...).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let h = &self.header;
        let missing = || Error::field(&self.path, format!("tensor '{name}'"), "not in a llama2.c checkpoint");
        match name {
            "model.embed_tokens.weight" => return Ok(self.at(28, vec![h.vocab_size, h.dim])),
            "model.norm.weight" => return Ok(self.at(self.final_norm_offset(), vec![h.dim])),
            "lm_head.weight" if !h.shared_classifier => return Ok(self.at(self.classifier_offset(), vec![h.vocab_size, h.dim])),
            "lm_head.weight" => return Err(missing()),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.").ok_or_else(missing)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(missing)?;
        let layer: usize = layer.parse().map_err(|_| missing())?;
        if layer >= h.n_layers {
            return Err(missing());
        }
        let mut offset = self.layers_offset();
        for (kind, rows, cols) in layer_kinds(h) {
            let size = rows * cols * 4;
            if kind == suffix {
                let shape = if rows == 1 { vec![cols] } else { vec![rows, cols] };
                return Ok(self.at(offset + layer * size, shape));
            }
            offset += h.n_layers * size;
        }
        Err(missing())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensor(name).is_ok()
    }
}
