//! The float32 engine: the model's own weights through the f32 kernels on the CPU.

use std::sync::Arc;

use super::Engine;
use crate::error::Result;
use crate::model::{KvCache, LoadedModel, Logits};

/// The float32 path; with `chunk` set, prompts run in chunks of that many tokens.
pub struct F32Engine {
    loaded: Arc<LoadedModel>,
    pub chunk: Option<usize>,
}

impl F32Engine {
    pub fn new(loaded: Arc<LoadedModel>, chunk: Option<usize>) -> Self {
        F32Engine { loaded, chunk }
    }
}

impl Engine for F32Engine {
    fn name(&self) -> &'static str {
        "f32"
    }
    fn loaded(&self) -> &Arc<LoadedModel> {
        &self.loaded
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let model = &self.loaded.model;
        super::on_pool(|| match self.chunk {
            Some(c) if tokens.len() > 1 => crate::prefill::prefill_chunked(model, tokens, cache, c, which),
            _ => model.forward(tokens, cache, which),
        })
    }
}
