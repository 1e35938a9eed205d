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
            DType::Q8_0 => (n % Q8_0_BLOCK == 0).then(|| (n / Q8_0_BLOCK).checked_mul(Q8_0_BYTES)).flatten(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_known_values() {
        let mut out = [0f32; 3];
        // bf16 is the top half of an f32: 1.0 = 0x3F80, -2.0 = 0xC000, 0.15625 = 0x3E20.
        to_f32(DType::BF16, &[0x80, 0x3F, 0x00, 0xC0, 0x20, 0x3E], &mut out);
        assert_eq!(out, [1.0, -2.0, 0.15625]);
        // f16: 1.0 = 0x3C00, -0.5 = 0xB800, 65504 = 0x7BFF (largest normal).
        to_f32(DType::F16, &[0x00, 0x3C, 0x00, 0xB8, 0xFF, 0x7B], &mut out);
        assert_eq!(out, [1.0, -0.5, 65504.0]);
        // Q8_0: scale 0.5 (f16 0x3800) times int8 values.
        let mut block = vec![0x00, 0x38];
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut q = [0f32; 32];
        to_f32(DType::Q8_0, &block, &mut q);
        assert!(q.iter().enumerate().all(|(i, &v)| v == 0.5 * (i as f32 - 16.0)));
        assert_eq!(DType::Q8_0.n_bytes(64), Some(68));
        assert_eq!(DType::Q8_0.n_bytes(33), None);
    }
}
