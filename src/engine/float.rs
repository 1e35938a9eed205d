//! The float32 engine: the model's own weights through the f32 kernels on the CPU, or, with a
//! BitStack attached, the decoder's linears on the stack's blocks instead.

use std::sync::Arc;

use super::Engine;
use crate::bitstack::{BitStack, StackLinears};
use crate::error::Result;
use crate::model::{KvCache, LoadedModel, Logits};

/// The float32 path; with `chunk` set, prompts run in chunks of that many tokens.
pub struct F32Engine {
    loaded: Arc<LoadedModel>,
    pub chunk: Option<usize>,
    stack: Option<Arc<BitStack>>,
}

impl F32Engine {
    pub fn new(loaded: Arc<LoadedModel>, chunk: Option<usize>) -> Self {
        F32Engine { loaded, chunk, stack: None }
    }

    /// The decoder's linears on `stack`'s blocks (prompts run whole: a chunk size is ignored).
    pub fn with_bitstack(loaded: Arc<LoadedModel>, stack: Arc<BitStack>) -> Self {
        F32Engine { loaded, chunk: None, stack: Some(stack) }
    }
}

impl Engine for F32Engine {
    fn name(&self) -> &'static str {
        if self.stack.is_some() {
            "f32+bitstack"
        } else {
            "f32"
        }
    }
    fn bitstack(&self) -> Option<&Arc<BitStack>> {
        self.stack.as_ref()
    }
    fn loaded(&self) -> &Arc<LoadedModel> {
        &self.loaded
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let model = &self.loaded.model;
        if let Some(stack) = &self.stack {
            return super::on_pool(|| {
                let held = stack.held();
                let x = model.hidden_states(&StackLinears { model, held: &held }, tokens, cache, None)?;
                Ok(model.logits(&x, which))
            });
        }
        super::on_pool(|| match self.chunk {
            Some(c) if tokens.len() > 1 => crate::prefill::prefill_chunked(model, tokens, cache, c, which),
            _ => model.forward(tokens, cache, which),
        })
    }
}
