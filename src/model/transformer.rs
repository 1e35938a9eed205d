//! The decoder-only transformer shared by the llama-like families, laid out like the Hugging Face
//! module tree (`model.layers.N.self_attn.q_proj`, ...). This is the float32 reference forward
//! pass: prefill runs the whole batch of tokens through batched matmuls; decode is the same code
//! with one token (matrix-vector kernels).

use crate::error::{Error, Result};
use crate::kernels::{self, attention, ops};
use crate::tensor::Tensor;
use crate::util::Progress;

use super::config::ModelConfig;
use super::kv_cache::{self, KvCache, Scratch};
use super::linear_group::LinearGroup;
use super::weights::Weights;

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// y[m, out] = x[m, in] W^T (+ b).
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) {
        Linear::forward_many(&[self], x, m, &mut [y]);
    }

    /// y += x W^T (+ b): the output added to the residual stream in place.
    pub fn forward_accumulate(&self, x: &[f32], m: usize, y: &mut [f32]) {
        match self.weight.encoded() {
            Some(e) => kernels::linear_encoded(x, m, e, y, true),
            None => kernels::linear_accumulate(x, m, self.in_features(), self.weight.data(), self.out_features(), y),
        }
        if let Some(b) = &self.bias {
            ops::add_bias(y, b.data());
        }
    }

    /// Several layers on the same input, sharing the GEMM's packing of it (weights kept encoded
    /// go through their own kernels, one by one).
    pub fn forward_many(layers: &[&Linear], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
        let blocks: Vec<_> = layers.iter().filter_map(|l| l.weight.encoded()).filter(|e| e.dtype.is_quantized()).collect();
        if blocks.len() == layers.len() && kernels::quantized_products_for(m) {
            // ggml blocks through the integer products: the input quantized once for all of them.
            kernels::qdot::matmul_many(&blocks, x, m, outs);
        } else if layers.iter().any(|l| l.weight.encoded().is_some()) {
            for (l, y) in layers.iter().zip(outs.iter_mut()) {
                match l.weight.encoded() {
                    Some(e) => kernels::linear_encoded(x, m, e, y, false),
                    None => kernels::linear(x, m, l.in_features(), l.weight.data(), l.out_features(), y),
                }
            }
        } else {
            let ws: Vec<(&[f32], usize)> = layers.iter().map(|l| (l.weight.data(), l.out_features())).collect();
            kernels::linear_many(x, m, layers[0].in_features(), &ws, outs);
        }
        for (l, y) in layers.iter().zip(outs.iter_mut()) {
            if let Some(b) = &l.bias {
                ops::add_bias(y, b.data());
            }
        }
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        ops::rms_norm(x, self.weight.data(), self.eps, out);
    }
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Per-head RMSNorms of q and k (`Features::qk_norm`).
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// The norm before the MLP (Hugging Face calls it post_attention_layernorm in Llama-style
    /// models, pre_feedforward_layernorm where `Features::sandwich_norms`).
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    /// With `Features::sandwich_norms`: the norms of the attention's and the MLP's outputs.
    pub output_norms: Option<(RmsNorm, RmsNorm)>,
}

/// Sees every linear-layer input during a forward pass (activation statistics, calibration) and
/// may change it before the layer reads it (clipping and fake-quantization experiments).
pub trait ActivationObserver {
    /// `x` holds `x.len() / cols` rows of `cols` channels.
    fn observe(&mut self, layer: usize, group: LinearGroup, x: &mut [f32], cols: usize);
}

/// Where the decoder's linear layers run: on the float weights (`FloatLinears`) or on an integer
/// accelerator. Everything else in a layer (norms, RoPE, attention, SwiGLU) is the same float
/// code for every executor, so backends differ only here.
pub trait LinearExecutor {
    /// Runs `group` of `layer` on `input` ([m][in_features]), biases included: `outputs[i]`
    /// receives linear i of the group; a group that adds to the residual stream has one output,
    /// the residual itself (x += W input).
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()>;

    /// The precision of prefill attention beside these linears (the npu backend's option).
    fn attention(&self) -> attention::Precision {
        attention::Precision::F32
    }
}

impl DecoderLayer {
    /// The float linears of a group, in output order.
    pub fn linears(&self, group: LinearGroup) -> Vec<&Linear> {
        let (a, mlp) = (&self.self_attn, &self.mlp);
        match group {
            LinearGroup::Qkv => vec![&a.q_proj, &a.k_proj, &a.v_proj],
            LinearGroup::O => vec![&a.o_proj],
            LinearGroup::GateUp => vec![&mlp.gate_proj, &mlp.up_proj],
            LinearGroup::Down => vec![&mlp.down_proj],
        }
    }
}

/// The float32 reference: the model's own weights through the f32 kernels.
pub struct FloatLinears<'a>(pub &'a Transformer);

impl LinearExecutor for FloatLinears<'_> {
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let linears = self.0.layers[layer].linears(group);
        if group.adds_to_residual() {
            linears[0].forward_accumulate(input, m, outputs[0]);
        } else {
            Linear::forward_many(&linears, input, m, outputs);
        }
        Ok(())
    }
}

/// One chunk of tokens on its way through the decoder layers.
pub struct ChunkState {
    /// The residual stream [m][hidden].
    pub x: Vec<f32>,
    /// Position of the chunk's first token.
    pub pos0: usize,
    /// Tokens in the chunk.
    pub m: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// RoPE tables of the local layers, where they differ (`Features::local_rope`).
    local_rope: Option<(Vec<f32>, Vec<f32>)>,
    scratch: Scratch,
}

/// Whose logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (prefill for generation): the LM head runs on one row.
    Last,
    /// Every position of the batch.
    All,
}

impl Logits {
    /// What chunk `i` of `n` contributes to the logits of a chunked pass: every position's for
    /// `All`, the last position's of the last chunk for `Last`, nothing for the other chunks.
    pub fn for_chunk(self, i: usize, n: usize) -> Option<Logits> {
        match self {
            Logits::All => Some(Logits::All),
            Logits::Last => (i + 1 == n).then_some(Logits::Last),
        }
    }
}

pub struct Transformer {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    inv_freq: Vec<f32>,
    /// LongRoPE: the frequencies for passes that reach beyond the original context.
    inv_freq_long: Option<Vec<f32>>,
    /// The local layers' frequencies, where they differ (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
}

/// cos/sin of positions pos0..pos0+m for `freqs`, [m][freqs.len()], scaled by `scale`; angles in
/// f32 as Hugging Face computes them.
fn rope_tables_of(freqs: &[f32], scale: f32, pos0: usize, m: usize) -> (Vec<f32>, Vec<f32>) {
    let half = freqs.len();
    let mut cos = Vec::with_capacity(m * half);
    let mut sin = Vec::with_capacity(m * half);
    for p in pos0..pos0 + m {
        for &f in freqs {
            let angle = (p as f32 * f) as f64;
            cos.push(angle.cos() as f32 * scale);
            sin.push(angle.sin() as f32 * scale);
        }
    }
    (cos, sin)
}

/// Loads tensors by their Hugging Face names and checks each shape against the config.
struct Loader<'a> {
    weights: &'a Weights,
    progress: &'a dyn Progress,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.weights.tensor(name)?;
        self.progress.step();
        if t.shape() != shape {
            return Err(Error::field(self.weights.path(), format!("tensor '{name}'"), format!("shape {:?}, expected {shape:?} from the config", t.shape())));
        }
        Ok(t)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias { Some(self.tensor(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Linears stored separately (`names`) or as one with their rows stacked (`fused`, e.g.
    /// Phi-3's qkv_proj and gate_up_proj): a fused weight is split into row ranges of the same
    /// stored tensor (no copy), so everything downstream sees separate linears.
    fn linears_maybe_fused<const N: usize>(&self, prefix: &str, names: [&str; N], fused: &str, outs: [usize; N], inp: usize, bias: bool) -> Result<[Linear; N]> {
        let fused_name = format!("{prefix}.{fused}.weight");
        if self.weights.contains(&format!("{prefix}.{}.weight", names[0])) || !self.weights.contains(&fused_name) {
            let mut v = Vec::with_capacity(N);
            for (name, out) in names.iter().zip(outs) {
                v.push(self.linear(&format!("{prefix}.{name}"), out, inp, bias)?);
            }
            return Ok(v.try_into().unwrap_or_else(|_| unreachable!("N linears")));
        }
        if bias {
            return Err(Error::field(self.weights.path(), format!("tensor '{fused_name}'"), "fused projections with biases are not supported"));
        }
        let weight = self.tensor(&fused_name, &[outs.iter().sum(), inp])?;
        let mut start = 0;
        Ok(outs.map(|out| {
            start += out;
            Linear { weight: weight.rows(start - out, start), bias: None }
        }))
    }

    /// An RMSNorm's weights, plus `offset` when the family stores w for a norm scaling by
    /// offset + w (added once here, in f32, as the reference computes it).
    fn norm(&self, name: &str, dim: usize, eps: f32, offset: f32) -> Result<RmsNorm> {
        let weight = self.tensor(name, &[dim])?;
        if offset == 0.0 {
            return Ok(RmsNorm { weight, eps });
        }
        Ok(RmsNorm { weight: Tensor::from_vec(vec![dim], weight.data().iter().map(|w| w + offset).collect()), eps })
    }
}

impl Transformer {
    /// Number of tensors `load` reads (for progress reporting).
    pub fn tensor_count(c: &ModelConfig) -> usize {
        let per_layer = 9 + if c.qkv_bias { 3 } else { 0 } + if c.features.qk_norm { 2 } else { 0 } + if c.features.sandwich_norms { 2 } else { 0 };
        3 + c.num_layers * per_layer + usize::from(!c.tie_word_embeddings)
    }

    pub fn load(config: ModelConfig, weights: &Weights, progress: &dyn Progress) -> Result<Self> {
        config.validate(weights.path())?;
        let c = &config;
        let l = Loader { weights, progress };
        let (d, eps, off) = (c.hidden_size, c.rms_norm_eps, c.features.norm_weight_offset);
        let embed_tokens = l.tensor("model.embed_tokens.weight", &[c.vocab_size, d])?;
        // No preallocation from the config: an absurd layer count must fail on a missing tensor.
        let mut layers = Vec::new();
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = match c.features.qk_norm {
                true => Some((l.norm(&format!("{p}.self_attn.q_norm.weight"), c.head_dim, eps, off)?, l.norm(&format!("{p}.self_attn.k_norm.weight"), c.head_dim, eps, off)?)),
                false => None,
            };
            let [q_proj, k_proj, v_proj] = l.linears_maybe_fused(&p, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn.qkv_proj", [c.q_dim(), c.kv_dim(), c.kv_dim()], d, c.qkv_bias)?;
            let [gate_proj, up_proj] = l.linears_maybe_fused(&p, ["mlp.gate_proj", "mlp.up_proj"], "mlp.gate_up_proj", [c.intermediate_size; 2], d, false)?;
            let (ffn_norm, output_norms) = match c.features.sandwich_norms {
                false => (l.norm(&format!("{p}.post_attention_layernorm.weight"), d, eps, off)?, None),
                true => (
                    l.norm(&format!("{p}.pre_feedforward_layernorm.weight"), d, eps, off)?,
                    Some((l.norm(&format!("{p}.post_attention_layernorm.weight"), d, eps, off)?, l.norm(&format!("{p}.post_feedforward_layernorm.weight"), d, eps, off)?)),
                ),
            };
            layers.push(DecoderLayer {
                input_layernorm: l.norm(&format!("{p}.input_layernorm.weight"), d, eps, off)?,
                self_attn: Attention { q_proj, k_proj, v_proj, o_proj: l.linear(&format!("{p}.self_attn.o_proj"), d, c.q_dim(), false)?, qk_norm },
                post_attention_layernorm: ffn_norm,
                mlp: Mlp { gate_proj, up_proj, down_proj: l.linear(&format!("{p}.mlp.down_proj"), d, c.intermediate_size, false)? },
                output_norms,
            });
        }
        let norm = l.norm("model.norm.weight", d, eps, off)?;
        let lm_head = if c.tie_word_embeddings {
            Linear { weight: embed_tokens.clone(), bias: None }
        } else {
            l.linear("lm_head", c.vocab_size, d, false)?
        };
        let inv_freq = c.rope.inv_freq(c.head_dim, false);
        let inv_freq_long = c.rope.longrope.as_ref().map(|_| c.rope.inv_freq(c.head_dim, true));
        let inv_freq_local = c.features.local_rope.as_ref().map(|r| r.inv_freq(c.head_dim, false));
        Ok(Transformer { config, embed_tokens, layers, norm, lm_head, inv_freq, inv_freq_long, inv_freq_local })
    }

    /// Parameter count (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let lin = |l: &Linear| l.weight.len() + l.bias.as_ref().map_or(0, |b| b.len());
        let mut n = self.embed_tokens.len() + self.norm.weight.len();
        if !self.config.tie_word_embeddings {
            n += lin(&self.lm_head);
        }
        for layer in &self.layers {
            n += LinearGroup::ALL.iter().flat_map(|&g| layer.linears(g)).map(lin).sum::<usize>();
            n += layer.input_layernorm.weight.len() + layer.post_attention_layernorm.weight.len();
        }
        n
    }

    /// Bytes the weights take in memory as held (a quantized file's blocks as stored, f32 as f32).
    pub fn weight_memory_bytes(&self) -> usize {
        let mut n = self.embed_tokens.memory_bytes() + self.norm.weight.memory_bytes();
        if !self.config.tie_word_embeddings {
            n += self.lm_head.weight.memory_bytes();
        }
        for layer in &self.layers {
            n += LinearGroup::ALL.iter().flat_map(|&g| layer.linears(g)).map(|l| l.weight.memory_bytes() + l.bias.as_ref().map_or(0, |b| b.memory_bytes())).sum::<usize>();
            n += layer.input_layernorm.weight.memory_bytes() + layer.post_attention_layernorm.weight.memory_bytes();
        }
        n
    }

    /// Bytes and weights of the layers' linear weights as held.
    pub fn linear_weight_size(&self) -> (usize, usize) {
        let linears = || self.layers.iter().flat_map(|l| LinearGroup::ALL.iter().flat_map(move |&g| l.linears(g)));
        (linears().map(|l| l.weight.memory_bytes()).sum(), linears().map(|l| l.weight.len()).sum())
    }

    /// Operations (a multiply and an add each count) of the layers' linears per prompt token: the
    /// work a prefill limit is computed from (attention and the one LM-head row are left out).
    pub fn linear_ops_per_token(&self) -> f64 {
        let weights: usize = self.layers.iter().flat_map(|l| LinearGroup::ALL.iter().flat_map(|&g| l.linears(g))).map(|l| l.weight.len()).sum();
        2.0 * weights as f64
    }

    /// True when every linear of the layers is stored in ggml blocks (so their products run on
    /// int8 activations, see `kernels::quantized_products_for`).
    pub fn linears_block_quantized(&self) -> bool {
        self.layers.iter().flat_map(|l| LinearGroup::ALL.iter().flat_map(|&g| l.linears(g))).all(|l| l.weight.dtype().is_quantized())
    }

    /// Weight bytes one decode step reads: everything but the embedding table (of which it reads a
    /// row, unless the LM head shares it).
    pub fn decode_bytes_per_token(&self) -> usize {
        let table = if self.config.tie_word_embeddings { 0 } else { self.embed_tokens.memory_bytes() };
        self.weight_memory_bytes() - table
    }

    /// A KV cache for `capacity` positions (sliding-window layers hold only their window).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        self.new_cache_with_room(capacity, kv_cache::CHUNK_ROOM)
    }

    /// `new_cache` whose windowed layers make room for chunks of `chunk_room` tokens beyond
    /// the window (bigger chunks grow them).
    pub fn new_cache_with_room(&self, capacity: usize, chunk_room: usize) -> KvCache {
        let c = &self.config;
        let windows: Vec<Option<usize>> = (0..c.num_layers).map(|l| c.features.window(l)).collect();
        KvCache::new(c.num_kv_heads, c.head_dim, capacity, &windows, chunk_room)
    }

    /// Looks up token embeddings, rejecting ids outside the vocabulary.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            if t as usize >= self.config.vocab_size {
                return Err(Error::Input(format!("token id {t} is out of range (vocabulary size {})", self.config.vocab_size)));
            }
            self.embed_tokens.copy_row(t as usize, row);
            if let Some(scale) = self.config.features.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(x)
    }

    /// RoPE cos/sin for positions pos0..pos0+m, [m][head_dim/2], angles in f32 as Hugging Face does.
    /// (LongRoPE, as transformers does: the long frequencies for a pass whose last position is
    /// beyond the original context, cos/sin scaled by the attention factor.)
    /// `pass_end`: the position after the last token of the whole forward pass (a chunked
    /// prefill's chunks all take the frequencies of the whole prompt).
    fn rope_tables(&self, pos0: usize, m: usize, pass_end: usize) -> (Vec<f32>, Vec<f32>) {
        let (freqs, scale) = match (&self.config.rope.longrope, &self.inv_freq_long) {
            (Some(l), Some(long)) if pass_end.max(pos0 + m) > l.original_max_position_embeddings => (long, l.attention_factor),
            (Some(l), _) => (&self.inv_freq, l.attention_factor),
            _ => (&self.inv_freq, 1.0),
        };
        rope_tables_of(freqs, scale, pos0, m)
    }

    /// Runs `tokens` (appended after what the cache holds) and returns logits: [vocab] for
    /// `Logits::Last`, [tokens][vocab] for `Logits::All`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.forward_observed(tokens, cache, which, None)
    }

    /// `forward`, showing every linear-layer input to `observer`.
    pub fn forward_observed(&self, tokens: &[u32], cache: &mut KvCache, which: Logits, observer: Option<&mut dyn ActivationObserver>) -> Result<Vec<f32>> {
        let x = self.hidden_states(&FloatLinears(self), tokens, cache, observer)?;
        Ok(self.logits(&x, which))
    }

    /// Runs the decoder layers only (fills the cache); the LM head is skipped.
    pub fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<()> {
        self.hidden_states(&FloatLinears(self), tokens, cache, None).map(|_| ())
    }

    /// Final norm and LM head over the last row or all rows of the hidden states.
    pub fn logits(&self, x: &[f32], which: Logits) -> Vec<f32> {
        let normed = self.final_norm(x, which);
        let n = normed.len() / self.config.hidden_size;
        let mut logits = vec![0f32; n * self.config.vocab_size];
        self.lm_head.forward(&normed, n, &mut logits);
        self.cap_logits(&mut logits);
        logits
    }

    /// Gemma 2's final soft-capping, cap * tanh(logit / cap) (nothing for other families).
    pub fn cap_logits(&self, logits: &mut [f32]) {
        if let Some(cap) = self.config.features.final_softcap {
            ops::softcap(logits, cap);
        }
    }

    /// The final norm of the rows of the hidden states `which` asks for: what the LM head reads.
    pub fn final_norm(&self, x: &[f32], which: Logits) -> Vec<f32> {
        let d = self.config.hidden_size;
        let rows = match which {
            Logits::Last => &x[x.len() - d..],
            Logits::All => x,
        };
        let mut normed = vec![0f32; rows.len()];
        self.norm.forward(rows, &mut normed);
        normed
    }

    /// The decoder layers: hidden states [tokens][hidden] after the last layer (before the final norm).
    /// A model with sliding-window layers runs long inputs in chunks of `kv_cache::CHUNK_ROOM`
    /// (the same result) so its cache stays the size of the window.
    pub fn hidden_states(&self, exec: &dyn LinearExecutor, tokens: &[u32], cache: &mut KvCache, mut observer: Option<&mut dyn ActivationObserver>) -> Result<Vec<f32>> {
        let pass_end = cache.len() + tokens.len();
        if self.config.features.sliding_window.is_none() || tokens.len() <= kv_cache::CHUNK_ROOM {
            return self.hidden_states_in_pass(exec, tokens, cache, observer, pass_end);
        }
        let mut x = Vec::with_capacity(tokens.len() * self.config.hidden_size);
        for chunk in tokens.chunks(kv_cache::CHUNK_ROOM) {
            x.extend(self.hidden_states_in_pass(exec, chunk, cache, observer.as_deref_mut(), pass_end)?);
        }
        Ok(x)
    }

    /// `hidden_states` for one chunk of a forward pass that ends at position `pass_end` (a
    /// chunked prefill): position-dependent choices (LongRoPE's frequencies) follow the pass.
    pub fn hidden_states_in_pass<'o>(&self, exec: &dyn LinearExecutor, tokens: &[u32], cache: &mut KvCache, mut observer: Option<&mut (dyn ActivationObserver + 'o)>, pass_end: usize) -> Result<Vec<f32>> {
        let scratch = std::mem::take(&mut cache.scratch);
        let mut chunk = self.start_chunk(tokens, cache.len(), cache.capacity(), pass_end, scratch)?;
        for layer in 0..self.layers.len() {
            self.layer_qkv(exec, layer, &mut chunk, observer.as_deref_mut())?;
            self.layer_attention(layer, exec.attention(), &mut chunk, cache, observer.as_deref_mut());
            self.layer_o_ffn(exec, layer, &mut chunk, observer.as_deref_mut())?;
        }
        cache.advance(chunk.m);
        cache.scratch = chunk.scratch;
        Ok(chunk.x)
    }

    /// A chunk of `tokens` at positions pos0.. entering the layers: its embeddings, RoPE tables
    /// and working buffers. The three `layer_*` steps then take it through each layer; the
    /// prefill scheduler runs them as separate subgraphs.
    pub(crate) fn start_chunk(&self, tokens: &[u32], pos0: usize, capacity: usize, pass_end: usize, mut scratch: Scratch) -> Result<ChunkState> {
        let c = &self.config;
        let m = tokens.len();
        if m == 0 {
            return Err(Error::Input("no tokens to run".into()));
        }
        if pos0 + m > capacity {
            return Err(Error::Input(format!("{} tokens exceed the context of {capacity} (the cache holds {pos0}, {m} more requested)", pos0 + m)));
        }
        let x = self.embed(tokens)?;
        let (cos, sin) = self.rope_tables(pos0, m, pass_end);
        let local_rope = self.inv_freq_local.as_ref().map(|f| rope_tables_of(f, 1.0, pos0, m));
        let s = &mut scratch;
        s.h.resize(m * c.hidden_size, 0.0);
        s.q.resize(m * c.q_dim(), 0.0);
        s.k.resize(m * c.kv_dim(), 0.0);
        s.v.resize(m * c.kv_dim(), 0.0);
        s.attn.resize(m * c.q_dim(), 0.0);
        s.gate.resize(m * c.intermediate_size, 0.0);
        s.up.resize(m * c.intermediate_size, 0.0);
        Ok(ChunkState { x, pos0, m, cos, sin, local_rope, scratch })
    }

    /// input_layernorm, then q/k/v.
    pub fn layer_qkv<'o>(&self, exec: &dyn LinearExecutor, li: usize, st: &mut ChunkState, observer: Option<&mut (dyn ActivationObserver + 'o)>) -> Result<()> {
        let Scratch { h, q, k, v, .. } = &mut st.scratch;
        self.layers[li].input_layernorm.forward(&st.x, h);
        if let Some(o) = observer {
            o.observe(li, LinearGroup::Qkv, h, self.config.hidden_size);
        }
        exec.run(li, LinearGroup::Qkv, h, st.m, &mut [q, k, v])
    }

    /// RoPE, this chunk's K/V into the cache (which must hold every earlier position at this
    /// layer), attention.
    pub fn layer_attention<'o>(&self, li: usize, precision: attention::Precision, st: &mut ChunkState, cache: &mut KvCache, observer: Option<&mut (dyn ActivationObserver + 'o)>) {
        let c = &self.config;
        let hd = c.head_dim;
        let Scratch { q, k, v, attn, .. } = &mut st.scratch;
        if let Some((qn, kn)) = &self.layers[li].self_attn.qk_norm {
            // Each head's vector is normalized on its own (rows of head_dim), through `attn`,
            // which attention only writes below.
            for (x, norm) in [(&mut *q, qn), (&mut *k, kn)] {
                let tmp = &mut attn[..x.len()];
                norm.forward(x, tmp);
                x.copy_from_slice(tmp);
            }
        }
        let (cos, sin) = match &st.local_rope {
            Some((cos, sin)) if c.features.is_local(li) => (cos, sin),
            _ => (&st.cos, &st.sin),
        };
        ops::apply_rope(q, hd, c.rope.style, cos, sin, hd / 2);
        ops::apply_rope(k, hd, c.rope.style, cos, sin, hd / 2);
        cache.append(li, st.pos0, k, v);
        let (kv, kept) = cache.layer_with_copies(li);
        let f = &c.features;
        let scale = f.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let shape = attention::AttnShape { n_heads: c.num_heads, n_kv_heads: c.num_kv_heads, head_dim: hd, pos0: st.pos0, kv_stride: kv.stride, kv_base: kv.base, window: f.window(li), scale, softcap: f.attn_softcap };
        attention::causal_attention_cached(precision, q, kv.k, kv.v, shape, attn, kept);
        if let Some(o) = observer {
            o.observe(li, LinearGroup::O, attn, c.q_dim());
        }
    }

    /// o_proj into the residual, post_attention_layernorm, gate/up, SwiGLU, down_proj into the
    /// residual.
    pub fn layer_o_ffn<'o>(&self, exec: &dyn LinearExecutor, li: usize, st: &mut ChunkState, mut observer: Option<&mut (dyn ActivationObserver + 'o)>) -> Result<()> {
        let c = &self.config;
        let Scratch { h, attn, gate, up, .. } = &mut st.scratch;
        let layer = &self.layers[li];
        self.into_residual(exec, li, LinearGroup::O, attn, st.m, &mut st.x, layer.output_norms.as_ref().map(|n| &n.0))?;
        layer.post_attention_layernorm.forward(&st.x, h);
        if let Some(o) = observer.as_deref_mut() {
            o.observe(li, LinearGroup::GateUp, h, c.hidden_size);
        }
        exec.run(li, LinearGroup::GateUp, h, st.m, &mut [gate, up])?;
        ops::glu(c.features.activation, gate, up);
        if let Some(o) = observer {
            o.observe(li, LinearGroup::Down, gate, c.intermediate_size);
        }
        self.into_residual(exec, li, LinearGroup::Down, gate, st.m, &mut st.x, layer.output_norms.as_ref().map(|n| &n.1))
    }

    /// x += group(input), or x += norm(group(input)) with an output norm: the executor adds
    /// into a zeroed buffer then (exactly the product), so no executor needs to know.
    #[allow(clippy::too_many_arguments)]
    fn into_residual(&self, exec: &dyn LinearExecutor, li: usize, group: LinearGroup, input: &[f32], m: usize, x: &mut [f32], norm: Option<&RmsNorm>) -> Result<()> {
        let Some(norm) = norm else { return exec.run(li, group, input, m, &mut [x]) };
        let mut y = vec![0f32; x.len()];
        exec.run(li, group, input, m, &mut [&mut y])?;
        let mut normed = vec![0f32; x.len()];
        norm.forward(&y, &mut normed);
        x.iter_mut().zip(&normed).for_each(|(x, n)| *x += n);
        Ok(())
    }
}
