//! Chunked prefill (llm.npu's prompt-level idea): the prompt is cut into fixed-size chunks that
//! run in causal order, each attending to the KV cache the earlier chunks filled. On the float
//! path this is a pure refactoring of one batched pass; on an accelerator it lets one set of
//! fixed-shape graphs serve every chunk of every prompt.

pub mod dag;
pub mod executor;
pub mod profile;
pub mod schedule;
pub mod trace;

use crate::error::{Error, Result};
use crate::model::{KvCache, Logits, Transformer};

/// Runs `tokens` through `model` in chunks of at most `chunk` tokens, appending to `cache`.
/// Returns the logits `which` asks for, as one unchunked `forward` would.
pub fn prefill_chunked(model: &Transformer, tokens: &[u32], cache: &mut KvCache, chunk: usize, which: Logits) -> Result<Vec<f32>> {
    if chunk == 0 {
        return Err(Error::Input("the chunk size must be at least 1".into()));
    }
    if tokens.is_empty() {
        return Err(Error::Input("no tokens to run".into()));
    }
    let mut out = Vec::new();
    let n_chunks = tokens.len().div_ceil(chunk);
    let pass_end = cache.len() + tokens.len();
    for (i, c) in tokens.chunks(chunk).enumerate() {
        let x = model.hidden_states_in_pass(&crate::model::transformer::FloatLinears(model), c, cache, None, pass_end)?;
        // Earlier chunks only fill the cache; their logits are not needed.
        if let Some(w) = which.for_chunk(i, n_chunks) {
            out.extend(model.logits(&x, w));
        }
    }
    Ok(out)
}
