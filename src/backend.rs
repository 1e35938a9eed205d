//! What generation, benchmarks and evaluation run on: the f32 reference or the npu backend.

use crate::error::Result;
use crate::model::{KvCache, Logits, Transformer};
use crate::npu::NpuModel;

pub trait Backend {
    fn name(&self) -> &'static str;
    fn model(&self) -> &Transformer;
    /// Runs `tokens` after what `cache` holds, like `Transformer::forward`.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>>;
}

/// The float32 path; with `chunk` set, prompts run in chunks of that many tokens.
pub struct F32Backend<'m> {
    pub model: &'m Transformer,
    pub chunk: Option<usize>,
}

impl Backend for F32Backend<'_> {
    fn name(&self) -> &'static str {
        "f32"
    }
    fn model(&self) -> &Transformer {
        self.model
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        match self.chunk {
            Some(c) if tokens.len() > 1 => crate::prefill::prefill_chunked(self.model, tokens, cache, c, which),
            _ => self.model.forward(tokens, cache, which),
        }
    }
}

impl Backend for NpuModel<'_> {
    fn name(&self) -> &'static str {
        "npu"
    }
    fn model(&self) -> &Transformer {
        self.model
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        NpuModel::forward(self, tokens, cache, which)
    }
}
