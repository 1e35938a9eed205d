//! Key/value cache: per layer, per KV head, `capacity` positions of `head_dim` floats, so one
//! head's keys are contiguous for the attention kernel.

pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let size = n_kv_heads * capacity * head_dim;
        KvCache { k: vec![vec![0.0; size]; n_layers], v: vec![vec![0.0; size]; n_layers], n_kv_heads, head_dim, capacity, len: 0 }
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

    /// Forgets everything (the buffers are kept for the next sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Writes rows of k/v ([tokens][n_kv_heads * head_dim]) for positions pos0.. of `layer`.
    pub fn append(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, row) = (self.head_dim, self.n_kv_heads * self.head_dim);
        assert!(pos0 + k.len() / row <= self.capacity);
        for (src, dst) in [(k, &mut self.k[layer]), (v, &mut self.v[layer])] {
            for (t, r) in src.chunks_exact(row).enumerate() {
                for h in 0..self.n_kv_heads {
                    let at = (h * self.capacity + pos0 + t) * hd;
                    dst[at..at + hd].copy_from_slice(&r[h * hd..(h + 1) * hd]);
                }
            }
        }
    }

    /// Marks `n` more positions as filled (after every layer appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
