//! On-disk element types and their conversion to f32.

use half::{bf16, f16};

/// Element types the readers understand. Quantized block types carry their block geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// ggml Q8_0: blocks of 32 weights, one f16 scale then 32 i8 (34 bytes).
    Q8_0,
}

pub const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;

impl DType {
    /// Bytes needed for `n` elements, or None when `n` does not fit the block size.
    pub fn n_bytes(self, n: usize) -> Option<usize> {
        match self {
            DType::F32 => n.checked_mul(4),
            DType::F16 | DType::BF16 => n.checked_mul(2),
            DType::Q8_0 => (n % Q8_0_BLOCK == 0).then(|| n / Q8_0_BLOCK * Q8_0_BYTES),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
        }
    }
}

/// Converts `bytes` holding `out.len()` elements of `dtype` (little-endian) into f32.
/// The caller has checked that `bytes.len() == dtype.n_bytes(out.len())`.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(Q8_0_BLOCK).zip(bytes.chunks_exact(Q8_0_BYTES)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (oi, &q) in o.iter_mut().zip(&b[2..]) {
                    *oi = d * (q as i8) as f32;
                }
            }
        }
    }
}
