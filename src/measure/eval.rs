//! `llm-npu eval`: perplexity of a backend, and how far it is from a reference backend on the same
//! tokens (top-1 agreement, KL divergence, perplexity ratio), the three numbers llama.cpp's
//! perplexity tool reports for quantized models.

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Logits;
use crate::util::Progress;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// predictions scored (tokens minus one per window)
    pub tokens: usize,
    pub ppl: f64,
    pub ref_ppl: f64,
    pub ppl_ratio: f64,
    pub top1_agreement: f64,
    /// mean over positions of KL(ref || backend), in nats
    pub mean_kld: f64,
    pub max_kld: f64,
    /// mean probability of the backend's top token: how peaked the model's predictions are
    pub mean_top1_prob: f64,
}

/// log-softmax of one row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// Accumulates the comparison over windows of logits.
#[derive(Default)]
pub struct EvalAccumulator {
    n: usize,
    nll: f64,
    ref_nll: f64,
    agree: usize,
    kld_sum: f64,
    kld_max: f64,
    top1_prob: f64,
}

impl EvalAccumulator {
    /// `logits`/`ref_logits`: [tokens.len()][vocab] for one window; position i predicts tokens[i + 1].
    pub fn add_window(&mut self, tokens: &[u32], logits: &[f32], ref_logits: &[f32], vocab: usize) -> Result<()> {
        self.add_window_from(tokens, logits, ref_logits, vocab, 0)
    }

    /// `add_window`, scoring only the predictions made at positions `first..`.
    pub fn add_window_from(&mut self, tokens: &[u32], logits: &[f32], ref_logits: &[f32], vocab: usize, first: usize) -> Result<()> {
        if logits.len() != tokens.len() * vocab || ref_logits.len() != logits.len() {
            return Err(Error::Input(format!("logits of {} values do not match {} tokens x {vocab}", logits.len(), tokens.len())));
        }
        for i in first..tokens.len().saturating_sub(1) {
            let lp = log_softmax(&logits[i * vocab..(i + 1) * vocab]);
            let lq = log_softmax(&ref_logits[i * vocab..(i + 1) * vocab]);
            let next = tokens[i + 1] as usize;
            self.nll -= lp[next];
            self.ref_nll -= lq[next];
            let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b });
            let (top, ref_top) = (argmax(&lp), argmax(&lq));
            self.agree += usize::from(top == ref_top);
            self.top1_prob += lp[top].exp();
            let kld: f64 = lq.iter().zip(&lp).map(|(&q, &p)| q.exp() * (q - p)).sum();
            self.kld_sum += kld;
            self.kld_max = self.kld_max.max(kld);
            self.n += 1;
        }
        Ok(())
    }

    pub fn report(&self) -> Result<EvalReport> {
        if self.n == 0 {
            return Err(Error::Input("nothing to evaluate: need at least 2 tokens".into()));
        }
        let n = self.n as f64;
        let (ppl, ref_ppl) = ((self.nll / n).exp(), (self.ref_nll / n).exp());
        Ok(EvalReport {
            tokens: self.n,
            ppl,
            ref_ppl,
            ppl_ratio: ppl / ref_ppl,
            top1_agreement: self.agree as f64 / n,
            mean_kld: self.kld_sum / n,
            max_kld: self.kld_max,
            mean_top1_prob: self.top1_prob / n,
        })
    }
}

/// How the text is cut into windows and which predictions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Non-overlapping windows of ctx tokens (the last may be shorter), every prediction scored.
    All,
    /// As llama.cpp's perplexity tool: full windows only, each starting with BOS (the text's
    /// token there is replaced), and only the predictions from the second half scored, so each
    /// has at least ctx/2 tokens of context. Gives the same number as llama-perplexity -c ctx.
    LlamaCpp { bos: u32 },
}

/// Scores `tokens` in windows of `ctx` tokens with `engine`, against `reference` on the same
/// windows (None: against itself, for perplexity alone).
pub fn evaluate(engine: &dyn Engine, reference: Option<&dyn Engine>, tokens: &[u32], ctx: usize, windows: Windows, progress: &dyn Progress) -> Result<EvalReport> {
    if ctx < 2 || (matches!(windows, Windows::LlamaCpp { .. }) && ctx < 4) {
        return Err(Error::Input(format!("an evaluation window needs at least {} tokens, got {ctx}", if windows == Windows::All { 2 } else { 4 })));
    }
    let m = engine.model();
    let (list, first): (Vec<Vec<u32>>, usize) = match windows {
        Windows::All => (tokens.chunks(ctx).filter(|w| w.len() >= 2).map(|w| w.to_vec()).collect(), 0),
        Windows::LlamaCpp { bos } => {
            let full: Vec<Vec<u32>> = tokens.chunks_exact(ctx).map(|w| [&[bos], &w[1..]].concat()).collect();
            if full.is_empty() {
                return Err(Error::Input(format!("llama.cpp-style windows need at least {ctx} tokens of text (one full window), got {}", tokens.len())));
            }
            (full, ctx / 2)
        }
    };
    progress.start("eval", "windows", list.len() as u64);
    let mut acc = EvalAccumulator::default();
    for w in &list {
        let logits = engine.forward(w, &mut m.new_cache(w.len()), Logits::All)?;
        let ref_logits = match reference {
            Some(r) => r.forward(w, &mut r.model().new_cache(w.len()), Logits::All)?,
            None => logits.clone(),
        };
        acc.add_window_from(w, &logits, &ref_logits, m.config.vocab_size, first)?;
        progress.step();
    }
    progress.finish();
    acc.report()
}
