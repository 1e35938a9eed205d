//! Tensors as the model sees them: a row-major shape and data that is either f32 borrowed straight
//! from a memory-mapped file (f32 on disk, aligned), owned f32, or another dtype kept as stored in
//! the mapped file (F16, BF16, ggml's quantized blocks). An encoded tensor's type travels with
//! it: kernels that read its blocks directly use `encoded()`, everything else may ask for f32
//! with `data()`, which decodes it once (and keeps that copy: hot paths avoid it).

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::format::FileBytes;

pub mod dtype;

use dtype::DType;

#[derive(Clone)]
enum Storage {
    Mapped { map: Arc<FileBytes>, offset: usize, len: usize },
    Owned(Arc<Vec<f32>>),
    /// `dtype` bytes at `map[offset..]`, decoded to f32 only when `data()` asks.
    Encoded { map: Arc<FileBytes>, offset: usize, dtype: DType, decoded: Arc<OnceLock<Vec<f32>>> },
}

/// A tensor, row-major, outermost dimension first (the Hugging Face / PyTorch convention).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// The stored bytes of an encoded 2-D (or 1-D) tensor, row by row.
#[derive(Clone, Copy)]
pub struct Encoded<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Encoded<'a> {
    /// Bytes of one row (rows are whole blocks).
    pub fn row_bytes(&self) -> usize {
        self.dtype.n_bytes(self.cols).expect("rows are whole blocks (checked by the reader)")
    }

    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.bytes[i * rb..(i + 1) * rb]
    }

    /// Decodes rows `r0..r0 + out.len() / cols` into `out`.
    pub fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        let rb = self.row_bytes();
        dtype::to_f32(self.dtype, &self.bytes[r0 * rb..(r0 + n) * rb], out);
    }
}

impl Tensor {
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
        Tensor { shape, storage: Storage::Owned(Arc::new(data)) }
    }

    /// Builds a tensor over `map[offset..offset + n_bytes]` holding `dtype` elements: zero-copy
    /// when the bytes are f32 and 4-byte aligned (an unaligned f32 tensor is copied), kept as
    /// stored for every other dtype. The caller has checked the byte range, that the size
    /// matches the shape, and that rows are whole blocks.
    pub fn from_mapped(map: &Arc<FileBytes>, offset: usize, shape: Vec<usize>, dtype: DType) -> Self {
        let n: usize = shape.iter().product();
        let n_bytes = dtype.n_bytes(n).expect("caller checked the size");
        let bytes = &map[offset..offset + n_bytes];
        if dtype != DType::F32 {
            return Tensor { shape, storage: Storage::Encoded { map: map.clone(), offset, dtype, decoded: Arc::default() } };
        }
        if (bytes.as_ptr() as usize) % std::mem::align_of::<f32>() == 0 {
            return Tensor { shape, storage: Storage::Mapped { map: map.clone(), offset, len: n } };
        }
        let mut data = vec![0f32; n];
        dtype::to_f32(dtype, bytes, &mut data);
        Tensor::from_vec(shape, data)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the data is read straight from the mapped file (no copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. } | Storage::Encoded { .. })
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Encoded { dtype, .. } => *dtype,
            _ => DType::F32,
        }
    }

    /// The stored bytes, when the tensor is not f32.
    pub fn encoded(&self) -> Option<Encoded<'_>> {
        let Storage::Encoded { map, offset, dtype, .. } = &self.storage else { return None };
        let cols = *self.shape.last().unwrap_or(&1);
        let n_bytes = dtype.n_bytes(self.len()).expect("checked at construction");
        Some(Encoded { dtype: *dtype, bytes: &map[*offset..*offset + n_bytes], rows: self.len() / cols.max(1), cols })
    }

    /// The elements as f32. An encoded tensor is decoded on the first call and the copy kept.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // SAFETY: alignment was checked at construction, the range lies inside the map,
                // every bit pattern is a valid f32, and the map is read-only and kept alive by the Arc.
                // (x86-64 and aarch64 are little-endian, like the file formats.)
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, *len) }
            }
            Storage::Owned(v) => v,
            Storage::Encoded { decoded, .. } => decoded.get_or_init(|| {
                let e = self.encoded().expect("encoded storage");
                let mut v = vec![0f32; self.len()];
                dtype::to_f32(e.dtype, e.bytes, &mut v);
                v
            }),
        }
    }

    /// Rows start..end of a 2-D tensor, sharing the storage (a mapped or encoded tensor is not
    /// copied; an owned one is).
    pub fn rows(&self, start: usize, end: usize) -> Tensor {
        assert!(self.shape.len() == 2 && start <= end && end <= self.shape[0], "rows {start}..{end} of {:?}", self.shape);
        let cols = self.shape[1];
        let shape = vec![end - start, cols];
        let storage = match &self.storage {
            Storage::Mapped { map, offset, .. } => Storage::Mapped { map: map.clone(), offset: offset + start * cols * 4, len: (end - start) * cols },
            Storage::Owned(v) => Storage::Owned(Arc::new(v[start * cols..end * cols].to_vec())),
            Storage::Encoded { map, offset, dtype, .. } => {
                let row_bytes = dtype.n_bytes(cols).expect("rows are whole blocks (checked by the reader)");
                Storage::Encoded { map: map.clone(), offset: offset + start * row_bytes, dtype: *dtype, decoded: Arc::default() }
            }
        };
        Tensor { shape, storage }
    }

    /// Row `i` of a 2-D tensor into `out`, decoding only that row of an encoded tensor.
    pub fn copy_row(&self, i: usize, out: &mut [f32]) {
        match self.encoded() {
            Some(e) => e.decode_rows(i, out),
            None => {
                let cols = out.len();
                out.copy_from_slice(&self.data()[i * cols..(i + 1) * cols]);
            }
        }
    }

    /// Columns `cols` of a 2-D [n, k] tensor, each as n contiguous values: `out[i][..]` = column
    /// cols[i]. An encoded tensor decodes only the blocks holding those columns. Weight rows are
    /// read once for all the columns, rows in parallel (a column at a time read one cache line
    /// per value, n of them, again for every column: 3-5% of a prefill with shadow work).
    pub fn gather_columns(&self, cols: &[u32], out: &mut [f32]) {
        use rayon::prelude::*;
        let (n, k) = (self.shape[0], self.shape[1]);
        assert_eq!(out.len(), cols.len() * n, "gather_columns: output size");
        if cols.is_empty() {
            return;
        }
        let into = crate::kernels::disjoint::DisjointWrites::new(out);
        let put = |j: usize, i: usize, v: f32| {
            // SAFETY: i < cols.len() and j < n, so the index is inside `out`; each (i, j) is
            // written by the one task that has row j.
            unsafe { into.write(i * n + j, v) };
        };
        match self.encoded() {
            None => {
                let w = self.data();
                (0..n).into_par_iter().with_min_len(256).for_each(|j| {
                    let row = &w[j * k..(j + 1) * k];
                    // The rows are far apart (a line and often a page each): ask for later rows'
                    // values ahead, or every value waits on memory in turn.
                    #[cfg(target_arch = "x86_64")]
                    if j + PREFETCH_ROWS < n {
                        for &c in cols {
                            // SAFETY: a prefetch of an address inside `w`; it never faults.
                            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(w.as_ptr().add((j + PREFETCH_ROWS) * k + c as usize) as *const i8) };
                        }
                    }
                    for (i, &c) in cols.iter().enumerate() {
                        put(j, i, row[c as usize]);
                    }
                });
            }
            Some(e) => {
                // Only the wanted weights are decoded, each from the bits it needs.
                let (weights, size) = e.dtype.block();
                (0..n).into_par_iter().with_min_len(256).for_each(|j| {
                    let row = e.row(j);
                    for (i, &c) in cols.iter().enumerate() {
                        let b = c as usize / weights;
                        put(j, i, dtype::dequantize_one(e.dtype, &row[b * size..(b + 1) * size], c as usize % weights));
                    }
                });
            }
        }
    }

    /// Bytes this tensor holds in memory: its stored bytes (mapped or owned), plus a decoded copy
    /// if one was made.
    pub fn memory_bytes(&self) -> usize {
        match &self.storage {
            Storage::Mapped { len, .. } => len * 4,
            Storage::Owned(v) => v.len() * 4,
            Storage::Encoded { dtype, decoded, .. } => dtype.n_bytes(self.len()).unwrap_or(0) + decoded.get().map_or(0, |v| v.len() * 4),
        }
    }
}

/// How many rows ahead `gather_columns` asks memory for the values it will read.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 16;

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?} {}{}", self.shape, self.dtype().name(), if self.is_mapped() { " (mapped)" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_columns_are_the_columns() {
        // More rows than one parallel block, columns out of order and at the edges.
        let (n, k) = (1000, 37);
        let t = Tensor::from_vec(vec![n, k], (0..n * k).map(|i| i as f32 * 0.5 - 3.0).collect());
        let cols = [36u32, 0, 5, 6, 20];
        let mut out = vec![f32::NAN; cols.len() * n];
        t.gather_columns(&cols, &mut out);
        for (i, &c) in cols.iter().enumerate() {
            for j in 0..n {
                assert_eq!(out[i * n + j], t.data()[j * k + c as usize], "column {c} row {j}");
            }
        }
    }
}
