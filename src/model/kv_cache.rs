//! Key/value cache, per layer and KV head. Keys are stored transposed ([head_dim][slots]) so
//! the attention kernel computes 16 scores per vector instruction with no horizontal sums;
//! values are stored by slot ([slots][head_dim]) for the weighted sum.
//!
//! A layer with a sliding window keeps only what its next queries can see: its buffers hold
//! the window plus room for one chunk, and slot 0 holds position `base`. When a chunk does not
//! fit, the positions its first query still sees move to the front (one copy of the window per
//! chunk's worth of tokens, amortized), so memory follows the window, not the context.

use rayon::prelude::*;
use crate::kernels::attention::KeptKv;

/// One layer's keys and values.
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Slots per KV head: a multiple of POSITION_BLOCK, so the attention kernel always reads
    /// full vectors.
    stride: usize,
    /// The position held in slot 0 (0 unless the layer has a window).
    base: usize,
    window: Option<usize>,
    /// Attention's int8 or bf16 copy (bf16 parts for f32 on AMX-BF16 tiles), told of every slot
    /// written or moved (empty unless one of them runs).
    kept: KeptKv,
}

pub struct KvCache {
    layers: Vec<LayerKv>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    /// Activation buffers of the layer loop, kept between calls (llama2.c's RunState idea) so
    /// each chunk or decode step does not allocate and page-fault fresh memory.
    pub(crate) scratch: Scratch,
}

/// The layer loop's working buffers; resized on demand.
#[derive(Default)]
pub(crate) struct Scratch {
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
}

/// Position padding of the cache (one 512-bit vector of f32).
pub const POSITION_BLOCK: usize = 16;

/// Tokens a windowed layer has room for beyond its window before it moves positions to the
/// front: the largest chunk the engines run at once (a bigger one grows the buffers).
pub const CHUNK_ROOM: usize = 512;

/// One layer's cache as the attention kernel reads it.
pub struct LayerView<'a> {
    /// [n_kv_heads][head_dim][stride]
    pub k: &'a [f32],
    /// [n_kv_heads][stride][head_dim]
    pub v: &'a [f32],
    pub stride: usize,
    /// The position in slot 0.
    pub base: usize,
}

impl KvCache {
    /// A cache for `capacity` positions; `windows[l]` is layer l's sliding window, if any
    /// (such a layer holds at most window - 1 + `chunk_room` positions, rounded up).
    pub fn new(n_kv_heads: usize, head_dim: usize, capacity: usize, windows: &[Option<usize>], chunk_room: usize) -> Self {
        let layers = windows
            .iter()
            .map(|&window| {
                let slots = match window {
                    Some(w) => capacity.min(w.saturating_sub(1) + chunk_room.max(1)),
                    None => capacity,
                };
                let stride = slots.next_multiple_of(POSITION_BLOCK);
                let size = n_kv_heads * stride * head_dim;
                LayerKv { k: vec![0.0; size], v: vec![0.0; size], stride, base: 0, window, kept: KeptKv::default() }
            })
            .collect();
        KvCache { layers, n_kv_heads, head_dim, capacity, len: 0, scratch: Scratch::default() }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can take in all (the model's context).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes rows of k/v ([tokens][n_kv_heads * head_dim]) for positions pos0.. of `layer`.
    pub fn append(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, row) = (self.head_dim, self.n_kv_heads * self.head_dim);
        let m = k.len() / row;
        assert!(pos0 + m <= self.capacity);
        let n_kv_heads = self.n_kv_heads;
        let l = &mut self.layers[layer];
        assert!(pos0 >= l.base, "position {pos0} was dropped from the window (base {})", l.base);
        if pos0 + m - l.base > l.stride {
            l.make_room(pos0, m, n_kv_heads, hd);
        }
        let (cap, base) = (l.stride, l.base);
        l.kept.forget_from(pos0 - base);
        let slot0 = pos0 - base;
        assert_eq!(l.k.len(), n_kv_heads * hd * cap, "one row of slots per key dimension");
        // Keys are stored transposed ([dim][slot]): a row of slots per dimension, written
        // contiguously, dimensions in parallel (token by token was one cache line per value,
        // on one core: 1% of a 2,048-token prefill).
        // A decode step's token (or a few) stays on this thread: one task for all.
        let at_least = |per_task: usize| if m >= 16 { per_task } else { usize::MAX };
        l.k.par_chunks_mut(cap).with_min_len(at_least(16)).enumerate().for_each(|(dim, slots)| {
            for (t, dst) in slots[slot0..slot0 + m].iter_mut().enumerate() {
                *dst = k[t * row + dim];
            }
        });
        l.v.par_chunks_mut(cap * hd).with_min_len(at_least(1)).enumerate().for_each(|(h, head)| {
            for (t, vr) in v.chunks_exact(row).enumerate() {
                let at = (slot0 + t) * hd;
                head[at..at + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
            }
        });
    }

    /// Bytes of the key and value buffers (and int8 or bf16 attention's copies).
    pub fn memory_bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 4 + l.kept.memory_bytes()).sum()
    }

    /// The longest prefix, at most `len` tokens, the cache can continue from: `len`, unless a
    /// windowed layer has already dropped keys a query at position `len` sees (then 0).
    pub fn resumable(&self, len: usize) -> usize {
        let len = len.min(self.len);
        let ok = self.layers.iter().all(|l| l.window.is_none_or(|w| l.base <= (len + 1).saturating_sub(w)));
        if ok { len } else { 0 }
    }

    /// Forgets every position from `len` on (a conversation going back to a shared prefix) and
    /// returns how many it keeps: `resumable(len)`.
    pub fn truncate(&mut self, len: usize) -> usize {
        self.len = self.resumable(len);
        let len = self.len;
        for l in &mut self.layers {
            if len == 0 {
                l.base = 0;
            }
            l.kept.forget_from(len.saturating_sub(l.base));
        }
        self.len
    }

    /// Marks `n` more positions as filled (after every layer appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Layer `layer`'s keys and values.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        let l = &self.layers[layer];
        LayerView { k: &l.k, v: &l.v, stride: l.stride, base: l.base }
    }

    /// Layer `layer`'s keys and values, and attention's int8 or bf16 copy of them to keep
    /// current.
    pub fn layer_with_copies(&mut self, layer: usize) -> (LayerView<'_>, &mut KeptKv) {
        let l = &mut self.layers[layer];
        (LayerView { k: &l.k, v: &l.v, stride: l.stride, base: l.base }, &mut l.kept)
    }
}

impl LayerKv {
    /// Makes slots for positions pos0..pos0+m: drops the positions no query from pos0 on sees
    /// (moving the rest to the front), then grows the buffers if the chunk is still too big.
    fn make_room(&mut self, pos0: usize, m: usize, n_kv_heads: usize, hd: usize) {
        let stride = self.stride;
        // Slots move or the buffers grow: the int8 or bf16 copy starts again.
        self.kept.forget_from(0);
        let keep_from = self.window.map_or(self.base, |w| (pos0 + 1).saturating_sub(w).clamp(self.base, pos0));
        let (drop, keep) = (keep_from - self.base, pos0 - keep_from);
        if drop > 0 {
            for row in self.k.chunks_exact_mut(stride) {
                row.copy_within(drop..drop + keep, 0);
            }
            for head in self.v.chunks_exact_mut(stride * hd) {
                head.copy_within(drop * hd..(drop + keep) * hd, 0);
            }
            self.base = keep_from;
        }
        let needed = pos0 + m - self.base;
        if needed > stride {
            let grown = needed.next_multiple_of(POSITION_BLOCK);
            let mut k = vec![0f32; n_kv_heads * hd * grown];
            let mut v = vec![0f32; n_kv_heads * grown * hd];
            for (new, old) in k.chunks_exact_mut(grown).zip(self.k.chunks_exact(stride)) {
                new[..keep].copy_from_slice(&old[..keep]);
            }
            for (new, old) in v.chunks_exact_mut(grown * hd).zip(self.v.chunks_exact(stride * hd)) {
                new[..keep * hd].copy_from_slice(&old[..keep * hd]);
            }
            (self.k, self.v, self.stride) = (k, v, grown);
        }
    }
}
