//! Key/value cache, per layer and KV head. Keys are stored transposed ([head_dim][capacity]) so
//! the attention kernel computes 16 scores per vector instruction with no horizontal sums;
//! values are stored by position ([capacity][head_dim]) for the weighted sum.

pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    /// Positions per head in memory: capacity rounded up to whole 16-lane blocks, so the
    /// attention kernel always reads full vectors.
    stride: usize,
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

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let stride = capacity.next_multiple_of(POSITION_BLOCK);
        let size = n_kv_heads * stride * head_dim;
        KvCache { k: vec![vec![0.0; size]; n_layers], v: vec![vec![0.0; size]; n_layers], n_kv_heads, head_dim, capacity, stride, len: 0, scratch: Scratch::default() }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions per head in the buffers (>= capacity, a multiple of POSITION_BLOCK).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Writes rows of k/v ([tokens][n_kv_heads * head_dim]) for positions pos0.. of `layer`.
    pub fn append(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, cap, row) = (self.head_dim, self.stride, self.n_kv_heads * self.head_dim);
        assert!(pos0 + k.len() / row <= self.capacity);
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        for (t, (kr, vr)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
            let pos = pos0 + t;
            for h in 0..self.n_kv_heads {
                for d in 0..hd {
                    kc[(h * hd + d) * cap + pos] = kr[h * hd + d];
                }
                let at = (h * cap + pos) * hd;
                vc[at..at + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
            }
        }
    }

    /// Bytes of the key and value buffers.
    pub fn memory_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 4).sum()
    }

    /// Forgets every position from `len` on (a conversation going back to a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Marks `n` more positions as filled (after every layer appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// (keys [n_kv_heads][head_dim][stride], values [n_kv_heads][stride][head_dim]).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
