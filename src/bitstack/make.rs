//! `llm-npu bitstack`: a model's linears decomposed into one sorted stack of blocks.
//!
//! Scales come from a pass over the calibration tokens; each linear is then decomposed
//! (`decompose.rs`), and the blocks are ordered as the paper does (section 2.2): every linear's
//! first block leads (a model needs them all); then, level by level, with every linear at that
//! many blocks, each linear's next block is tried alone and scored by the loss it leaves on the
//! calibration tokens, and the level's blocks go in ascending order of that loss. The loss is
//! the KL divergence from the uncompressed model's predictions (the paper uses perplexity on
//! its calibration text; KL is the same idea without needing that text to be natural, so it
//! works on random tokens and on random-weight test models alike).

use std::collections::HashMap;

use super::decompose::{self, Block, ChannelScales, MatrixStack};
use super::file::{BlockEntry, Header, LinearEntry};
use crate::error::{Error, Result};
use crate::kernels;
use crate::measure::eval::EvalAccumulator;
use crate::model::{kv_cache::Scratch, LinearGroup, Logits, Transformer};
use crate::model::transformer::LinearExecutor;
use crate::util::Progress;

#[derive(Debug, Clone)]
pub struct MakeOptions {
    /// Blocks per matrix (the paper's 16).
    pub iterations: usize,
    /// Rank of each block's magnitude [default: `decompose::default_rank` per matrix, 4 for wide ones].
    pub rank: Option<usize>,
    /// Calibration tokens the ordering is scored on (the scales use all of them).
    pub score_tokens: usize,
    pub seed: u64,
}

impl Default for MakeOptions {
    fn default() -> Self {
        MakeOptions { iterations: 16, rank: None, score_tokens: 128, seed: 0 }
    }
}

/// Every linear of the decoder layers, in a fixed order: (layer, group, index in the group).
pub fn linear_ids(model: &Transformer) -> Vec<(usize, LinearGroup, usize)> {
    let mut ids = Vec::new();
    for (li, layer) in model.layers.iter().enumerate() {
        for g in LinearGroup::ALL {
            ids.extend((0..layer.linears(g).len()).map(|i| (li, g, i)));
        }
    }
    ids
}

/// Which model a stack belongs to: a checksum of the first row of every linear (a stack run on
/// other weights of the same shape would give nonsense without an error).
pub fn model_fingerprint(model: &Transformer) -> u64 {
    let mut bytes = Vec::new();
    for (layer, g, i) in linear_ids(model) {
        let w = &model.layers[layer].linears(g)[i].weight;
        let mut row = vec![0f32; w.shape()[1]];
        w.copy_row(0, &mut row);
        bytes.extend(row.iter().flat_map(|x| x.to_le_bytes()));
    }
    crate::util::checksum(&bytes)
}

/// A stack as made, before it is written: what `file::write` takes.
pub struct Stack {
    pub header: Header,
    /// s per linear, in header order
    pub scales: Vec<Vec<f32>>,
    /// every level's block per linear, in header order
    pub blocks: Vec<Vec<Block>>,
}

/// The stack of `model` from `tokens`: header (order, shapes), scales and blocks per linear.
pub fn make_stack(model: &Transformer, architecture: &str, tokens: &[u32], calibration: String, opts: &MakeOptions, progress: &dyn Progress) -> Result<Stack> {
    if opts.iterations == 0 {
        return Err(Error::Input("a stack needs at least 1 block per matrix".into()));
    }
    if tokens.len() < 2 || opts.score_tokens < 2 {
        return Err(Error::Input("BitStack needs at least 2 calibration tokens to score blocks on".into()));
    }
    let ids = linear_ids(model);
    let windows: Vec<&[u32]> = tokens.chunks(model.config.max_seq_len.min(512)).collect();
    progress.start("scales", "windows", windows.len() as u64);
    let mut scales = ChannelScales::default();
    for w in &windows {
        model.forward_observed(w, &mut model.new_cache(w.len()), Logits::Last, Some(&mut scales))?;
        progress.step();
    }
    progress.finish();

    progress.start("decomposing", "matrices", ids.len() as u64);
    let mut stacks: Vec<MatrixStack> = Vec::with_capacity(ids.len());
    for (n, &(layer, group, index)) in ids.iter().enumerate() {
        let lin = model.layers[layer].linears(group)[index];
        let (rows, cols) = (lin.out_features(), lin.in_features());
        let s = scales.scale(layer, group).ok_or_else(|| Error::Input(format!("layer {layer} {}: never reached by the calibration pass", group.input_name())))?;
        let rank = opts.rank.unwrap_or_else(|| decompose::default_rank(rows, cols));
        // A quantized or 16-bit weight is decoded for this matrix only (`data()` would keep an
        // f32 copy of every matrix: 4x the model).
        let decoded = lin.weight.encoded().map(|e| {
            let mut w = vec![0f32; rows * cols];
            e.decode_rows(0, &mut w);
            w
        });
        let w = decoded.as_deref().unwrap_or_else(|| lin.weight.data());
        stacks.push(decompose::decompose_matrix(w, rows, cols, &s, rank, opts.iterations, opts.seed ^ (n as u64) << 20));
        progress.step();
    }
    progress.finish();

    let score_tokens = &tokens[..opts.score_tokens.min(tokens.len()).min(model.config.max_seq_len)];
    let order = order_by_loss(model, &ids, &stacks, score_tokens, progress)?;
    let header = Header {
        architecture: architecture.to_string(),
        num_layers: model.layers.len(),
        hidden_size: model.config.hidden_size,
        calibration,
        scales_checksum: 0, // filled in by file::write
        model_fingerprint: model_fingerprint(model),
        linears: ids.iter().zip(&stacks).map(|(&(layer, g, index), st)| LinearEntry { layer, group: g.index(), index, rows: st.rows, cols: st.cols, rank: st.rank, residual: st.residual.clone() }).collect(),
        blocks: order,
    };
    let scales = stacks.iter().map(|s| s.scale.clone()).collect();
    Ok(Stack { header, scales, blocks: stacks.into_iter().map(|s| s.blocks).collect() })
}

/// Dense float weights per linear (the stack summed up to some level, in the model's own input
/// space), one of them optionally replaced by a trial: the linears of the scoring passes (and
/// the reference the held stack is tested against).
pub(crate) struct DenseLinears<'a> {
    model: &'a Transformer,
    first: HashMap<(usize, LinearGroup), usize>,
    dense: &'a [Vec<f32>],
    trial: Option<(usize, &'a [f32])>,
}

impl<'a> DenseLinears<'a> {
    pub(crate) fn new(model: &'a Transformer, dense: &'a [Vec<f32>]) -> Self {
        let mut first = HashMap::new();
        for (n, &(layer, g, i)) in linear_ids(model).iter().enumerate() {
            if i == 0 {
                first.insert((layer, g), n);
            }
        }
        DenseLinears { model, first, dense, trial: None }
    }

    fn with_trial(&self, linear: usize, w: &'a [f32]) -> Self {
        DenseLinears { model: self.model, first: self.first.clone(), dense: self.dense, trial: Some((linear, w)) }
    }
}

/// The dense weights the first `n` blocks of a stack file stand for.
#[cfg(test)]
pub(crate) fn dense_weights(f: &super::file::StackFile, n: usize) -> Result<Vec<Vec<f32>>> {
    let mut dense: Vec<Vec<f32>> = f.header.linears.iter().map(|l| vec![0f32; l.rows * l.cols]).collect();
    for (e, b) in f.header.blocks[..n].iter().zip(f.read_blocks(0..n, &crate::util::Silent)?) {
        let l = &f.header.linears[e.linear];
        add_unscaled(l.rows, l.cols, l.rank, &f.scales[e.linear], &b, &mut dense[e.linear]);
    }
    Ok(dense)
}

impl LinearExecutor for DenseLinears<'_> {
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let first = self.first[&(layer, group)];
        for (i, (lin, y)) in self.model.layers[layer].linears(group).into_iter().zip(outputs.iter_mut()).enumerate() {
            let id = first + i;
            let w = match self.trial {
                Some((t, w)) if t == id => w,
                _ => &self.dense[id],
            };
            let (n, k) = (lin.out_features(), lin.in_features());
            if group.adds_to_residual() {
                kernels::linear_accumulate(input, m, k, w, n, y);
            } else {
                kernels::linear(input, m, k, w, n, y);
            }
            if let Some(b) = &lin.bias {
                kernels::ops::add_bias(y, b.data());
            }
        }
        Ok(())
    }
}

/// Adds block `b` (of a [rows][cols] weight scaled by `scale`), divided back by the scale, to `w`.
fn add_unscaled(rows: usize, cols: usize, rank: usize, scale: &[f32], b: &Block, w: &mut [f32]) {
    let f = b.to_f32();
    let view = f.view(b, rows, cols, rank);
    // A panel of rows at a time: no matrix-sized buffer per call (the sort makes thousands).
    const PANEL: usize = 256;
    let mut scaled = vec![0f32; PANEL.min(rows) * cols];
    for (p, w) in w.chunks_mut(PANEL * cols).enumerate() {
        let scaled = &mut scaled[..w.len()];
        scaled.fill(0.0);
        view.add_dense_rows(p * PANEL, scaled);
        for (row_w, row_s) in w.chunks_exact_mut(cols).zip(scaled.chunks_exact(cols)) {
            row_w.iter_mut().zip(row_s).zip(scale).for_each(|((w, &x), &s)| *w += x / s);
        }
    }
}

fn add_level(st: &MatrixStack, level: usize, w: &mut [f32]) {
    add_unscaled(st.rows, st.cols, st.rank, &st.scale, &st.blocks[level], w);
}

fn order_by_loss(model: &Transformer, ids: &[(usize, LinearGroup, usize)], stacks: &[MatrixStack], tokens: &[u32], progress: &dyn Progress) -> Result<Vec<BlockEntry>> {
    let levels = stacks[0].blocks.len();
    let mut dense: Vec<Vec<f32>> = stacks.iter().map(|st| vec![0f32; st.rows * st.cols]).collect();
    for (st, w) in stacks.iter().zip(&mut dense) {
        add_level(st, 0, w);
    }
    let mut order: Vec<BlockEntry> = (0..ids.len()).map(|linear| BlockEntry { linear, level: 0, checksum: 0 }).collect();
    let reference = model.forward(tokens, &mut model.new_cache(tokens.len()), Logits::All)?;
    // One buffer for every trial's weight (a fresh one each time cost more in page faults and
    // their clearing than the trial's arithmetic).
    let mut trial_buffer = vec![0f32; dense.iter().map(Vec::len).max().unwrap_or(0)];
    progress.start("ordering blocks", "trials", ((levels - 1) * ids.len()) as u64);
    for level in 1..levels {
        // The residual stream entering each layer with every linear at `level` blocks: a trial
        // changes one layer, so it runs from there.
        let base = DenseLinears::new(model, &dense);
        let entering = layer_inputs(model, &base, tokens)?;
        let mut scored = Vec::with_capacity(ids.len());
        for (n, st) in stacks.iter().enumerate() {
            let trial = &mut trial_buffer[..dense[n].len()];
            trial.copy_from_slice(&dense[n]);
            add_level(st, level, trial);
            let exec = base.with_trial(n, trial);
            let layer = ids[n].0;
            let logits = run_from(model, &exec, tokens, layer, &entering[layer])?;
            let mut acc = EvalAccumulator::default();
            acc.add_window(tokens, &logits, &reference, model.config.vocab_size)?;
            scored.push((acc.report()?.mean_kld, n));
            progress.step();
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order.extend(scored.iter().map(|&(_, linear)| BlockEntry { linear, level, checksum: 0 }));
        drop(base);
        for (st, w) in stacks.iter().zip(&mut dense) {
            add_level(st, level, w);
        }
    }
    progress.finish();
    Ok(order)
}

/// The residual stream entering every layer for `tokens` (one window from position 0).
fn layer_inputs(model: &Transformer, exec: &dyn LinearExecutor, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let n = tokens.len();
    let mut cache = model.new_cache(n);
    let mut st = model.start_chunk(tokens, 0, n, n, Scratch::default())?;
    let mut inputs = Vec::with_capacity(model.layers.len());
    for li in 0..model.layers.len() {
        inputs.push(st.x.clone());
        model.layer_qkv(exec, li, &mut st, None)?;
        model.layer_attention(li, Default::default(), &mut st, &mut cache, None);
        model.layer_o_ffn(exec, li, &mut st, None)?;
    }
    Ok(inputs)
}

/// Logits of every position, running the layers from `from` on with `x` entering it.
fn run_from(model: &Transformer, exec: &dyn LinearExecutor, tokens: &[u32], from: usize, x: &[f32]) -> Result<Vec<f32>> {
    let n = tokens.len();
    let mut cache = model.new_cache(n);
    let mut st = model.start_chunk(tokens, 0, n, n, Scratch::default())?;
    st.x.copy_from_slice(x);
    for li in from..model.layers.len() {
        model.layer_qkv(exec, li, &mut st, None)?;
        model.layer_attention(li, Default::default(), &mut st, &mut cache, None);
        model.layer_o_ffn(exec, li, &mut st, None)?;
    }
    Ok(model.logits(&st.x, Logits::All))
}
