//! Float tensors as the model sees them: a row-major shape and f32 data that is either borrowed
//! straight from a memory-mapped file (f32 on disk, aligned) or owned (converted from another dtype).

use std::fmt;
use std::sync::Arc;

use memmap2::Mmap;

pub mod dtype;

use dtype::DType;

#[derive(Clone)]
enum Storage {
    Mapped { map: Arc<Mmap>, offset: usize, len: usize },
    Owned(Arc<Vec<f32>>),
}

/// An f32 tensor, row-major, outermost dimension first (the Hugging Face / PyTorch convention).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
        Tensor { shape, storage: Storage::Owned(Arc::new(data)) }
    }

    /// Builds a tensor over `map[offset..offset + n_bytes]` holding `dtype` elements: zero-copy when
    /// the bytes are f32 and 4-byte aligned, converted to an owned f32 buffer otherwise.
    /// The caller has checked the byte range and that the size matches the shape.
    pub fn from_mapped(map: &Arc<Mmap>, offset: usize, shape: Vec<usize>, dtype: DType) -> Self {
        let n: usize = shape.iter().product();
        let n_bytes = dtype.n_bytes(n).expect("caller checked the size");
        let bytes = &map[offset..offset + n_bytes];
        if dtype == DType::F32 && (bytes.as_ptr() as usize) % std::mem::align_of::<f32>() == 0 {
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
        matches!(self.storage, Storage::Mapped { .. })
    }

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
        }
    }

    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f32] {
        let cols = *self.shape.last().unwrap_or(&1);
        &self.data()[i * cols..(i + 1) * cols]
    }

}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}{}", self.shape, if self.is_mapped() { " (mapped)" } else { "" })
    }
}
