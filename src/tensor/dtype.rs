//! On-disk element types and their conversion to f32: plain floats and ggml's block-quantized
//! types (the layouts of ggml-common.h). A quantized type stores weights in blocks along a row:
//! `block()` gives (weights, bytes) per block, and `dequantize` decodes whole blocks.

use half::{bf16, f16};

/// Element types the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 weights: f16 scale d, 16 bytes of 4-bit q; w = d (q - 8).
    Q4_0,
    /// 32 weights: f16 d, f16 m, 16 bytes of 4-bit q; w = d q + m.
    Q4_1,
    /// 32 weights: f16 d, 32 high bits, 16 bytes of low nibbles; w = d (q - 16).
    Q5_0,
    /// 32 weights: f16 d, f16 m, 32 high bits, 16 bytes of low nibbles; w = d q + m.
    Q5_1,
    /// 32 weights: f16 d, 32 i8 q; w = d q.
    Q8_0,
    /// 256 weights in 16 groups: 4-bit scales and mins, 2-bit q, f16 d and dmin.
    Q2K,
    /// 256 weights in 16 groups: 6-bit scales, 2-bit q plus a high-bit mask, f16 d.
    Q3K,
    /// 256 weights in 8 groups of 32: 6-bit scales and mins, 4-bit q, f16 d and dmin.
    Q4K,
    /// 256 weights in 8 groups of 32: 6-bit scales and mins, 5-bit q, f16 d and dmin.
    Q5K,
    /// 256 weights in 16 groups: i8 scales, 6-bit q, f16 d.
    Q6K,
}

/// Weights per block of the legacy quantized types.
pub const QK: usize = 32;
/// Weights per block of the K-quants.
pub const QK_K: usize = 256;
pub const Q8_0_BLOCK: usize = QK;

impl DType {
    /// The ggml type id as GGUF stores it, and back.
    pub fn from_ggml(t: u32) -> Option<DType> {
        Some(match t {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            10 => DType::Q2K,
            11 => DType::Q3K,
            12 => DType::Q4K,
            13 => DType::Q5K,
            14 => DType::Q6K,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// Every type this build reads, by name (for messages).
    pub const ALL: [DType; 13] =
        [DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2K, DType::Q3K, DType::Q4K, DType::Q5K, DType::Q6K];

    /// (weights, bytes) per block; plain floats are blocks of one.
    pub fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            DType::Q4_0 => (QK, 18),
            DType::Q4_1 => (QK, 20),
            DType::Q5_0 => (QK, 22),
            DType::Q5_1 => (QK, 24),
            DType::Q8_0 => (QK, 34),
            DType::Q2K => (QK_K, 84),
            DType::Q3K => (QK_K, 110),
            DType::Q4K => (QK_K, 144),
            DType::Q5K => (QK_K, 176),
            DType::Q6K => (QK_K, 210),
        }
    }

    /// What a block type's stored unsigned value exceeds the signed weight value by (the
    /// Q8_0 byte counts as unsigned + 128): w = d (q - offset) [...].
    pub fn offset(self) -> i32 {
        match self {
            DType::Q4_0 => 8,
            DType::Q5_0 => 16,
            DType::Q8_0 => 128,
            DType::Q3K => 4,
            DType::Q6K => 32,
            _ => 0,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// Bytes needed for `n` elements, or None when `n` does not fit the block size.
    pub fn n_bytes(self, n: usize) -> Option<usize> {
        let (weights, bytes) = self.block();
        (n % weights == 0).then(|| (n / weights).checked_mul(bytes)).flatten()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q2K => "Q2_K",
            DType::Q3K => "Q3_K",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
        }
    }
}

/// Every f16 as f32 (256 KiB), as ggml keeps it: a block's scales are looked up instead of
/// converted one call at a time (a function call per block dominated decoding).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|bits| f16::from_bits(bits).to_f32()).collect())
}

/// Converts `bytes` holding `out.len()` elements of `dtype` (little-endian) into f32.
/// The caller has checked that `bytes.len() == dtype.n_bytes(out.len())`. The same code is
/// compiled for AVX-512 too (decoding is on the decode path of quantized models, and the
/// baseline build only vectorizes for SSE2); tests check both builds give the same bits.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { to_f32_avx512(dtype, bytes, out) };
    }
    to_f32_portable(dtype, bytes, out)
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| {
        std::env::var("LLM_NPU_SIMD").map_or(true, |v| v != "portable") && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn to_f32_avx512(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    to_f32_portable(dtype, bytes, out)
}

/// The portable build of `to_f32`.
#[inline(always)]
pub fn to_f32_portable(dtype: DType, bytes: &[u8], out: &mut [f32]) {
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
        _ => {
            let (weights, size) = dtype.block();
            let table = f16_table();
            let half = |b: &[u8], at: usize| table[u16::from_le_bytes([b[at], b[at + 1]]) as usize];
            for (o, b) in out.chunks_exact_mut(weights).zip(bytes.chunks_exact(size)) {
                dequantize_block(dtype, b, o, &half);
            }
        }
    }
}

/// One block of a quantized type into `y` (its block's weights). The arithmetic and its order
/// follow ggml's reference dequantizers, so results equal the gguf package's bit for bit.
#[inline(always)]
fn dequantize_block(dtype: DType, b: &[u8], y: &mut [f32], half: &impl Fn(&[u8], usize) -> f32) {
    let off = dtype.offset();
    if dtype.block().0 == QK {
        let blk = unpack_legacy(dtype, b, half);
        match blk.min {
            None => y.iter_mut().zip(&blk.q).for_each(|(y, &q)| *y = (q as i32 - off) as f32 * blk.d),
            Some(m) => y.iter_mut().zip(&blk.q).for_each(|(y, &q)| *y = (q as i32 - off) as f32 * blk.d + m),
        }
    } else {
        let mut blk = KBlock::default();
        unpack_k(dtype, b, half, &mut blk);
        for ((y, q), (&sc, &mn)) in y.chunks_exact_mut(16).zip(blk.q.chunks_exact(16)).zip(blk.scales.iter().zip(&blk.mins)) {
            let (dl, ml) = (blk.d * sc as f32, blk.dmin * mn as f32);
            y.iter_mut().zip(q).for_each(|(y, &q)| *y = dl * (q as i32 - off) as f32 - ml);
        }
    }
}

/// A legacy block (32 weights) as integers: w_i = d (q_i - offset), or d (q_i - offset) + min,
/// with the type's `DType::offset`.
pub struct LegacyBlock {
    pub d: f32,
    pub min: Option<f32>,
    /// The stored unsigned values (Q8_0's signed bytes made unsigned by + 128).
    pub q: [u8; QK],
}

/// A K-quant superblock (256 weights, 16 groups of 16) as integers:
/// w_i = (d scales[g]) (q_i - offset) - dmin mins[g], g = i / 16 (types without mins have 0 there).
pub struct KBlock {
    pub d: f32,
    pub dmin: f32,
    pub scales: [i32; 16],
    pub mins: [i32; 16],
    /// The stored unsigned values (Q3_K: 2 bits + 4 when the high bit is set).
    pub q: [u8; QK_K],
}

/// Unpacks a Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 block (the bit layouts of ggml-common.h).
#[inline(always)]
pub fn unpack_legacy(dtype: DType, b: &[u8], half: &impl Fn(&[u8], usize) -> f32) -> LegacyBlock {
    let d = half(b, 0);
    let mut q = [0u8; QK];
    if dtype == DType::Q8_0 {
        q.iter_mut().zip(&b[2..34]).for_each(|(q, &v)| *q = v ^ 0x80);
        return LegacyBlock { d, min: None, q };
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // (min, fifth bits, nibbles)
    let (min, qh, qs) = match dtype {
        DType::Q4_0 => (None, None, &b[2..18]),
        DType::Q4_1 => (Some(half(b, 2)), None, &b[4..20]),
        DType::Q5_0 => (None, Some(u32_at(2)), &b[6..22]),
        DType::Q5_1 => (Some(half(b, 2)), Some(u32_at(4)), &b[8..24]),
        _ => unreachable!("not a legacy block type"),
    };
    for (j, &v) in qs.iter().enumerate() {
        (q[j], q[j + 16]) = (v & 0xF, v >> 4);
    }
    if let Some(qh) = qh {
        for j in 0..16 {
            q[j] |= (((qh >> j) << 4) & 0x10) as u8;
            q[j + 16] |= ((qh >> (j + 12)) & 0x10) as u8;
        }
    }
    LegacyBlock { d, min, q }
}

impl Default for KBlock {
    fn default() -> Self {
        KBlock { d: 0.0, dmin: 0.0, scales: [0; 16], mins: [0; 16], q: [0; QK_K] }
    }
}

/// Unpacks a Q2_K / Q3_K / Q4_K / Q5_K / Q6_K superblock (the bit layouts of ggml-common.h)
/// into `k` (every field is written; filled in place, as a returned 400-byte struct was copied).
#[inline(always)]
pub fn unpack_k(dtype: DType, b: &[u8], half: &impl Fn(&[u8], usize) -> f32, k: &mut KBlock) {
    (k.d, k.dmin) = (0.0, 0.0);
    k.mins = [0; 16];
    match dtype {
        DType::Q2K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            (k.d, k.dmin) = (half(b, 80), half(b, 82));
            for (g, &sc) in scales.iter().enumerate() {
                (k.scales[g], k.mins[g]) = ((sc & 0xF) as i32, (sc >> 4) as i32);
            }
            // Each 32-byte chunk holds 128 weights: four 2-bit planes of 32.
            for (c, q) in qs.chunks_exact(32).enumerate() {
                for (p, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                    for (l, &v) in q.iter().enumerate() {
                        k.q[128 * c + 32 * p + l] = (v >> shift) & 3;
                    }
                }
            }
        }
        DType::Q3K => {
            let (hmask, qs) = (&b[0..32], &b[32..96]);
            k.d = half(b, 108);
            for (g, &sc) in q3k_scales(&b[96..108]).iter().enumerate() {
                k.scales[g] = sc as i32 - 32;
            }
            for (c, q) in qs.chunks_exact(32).enumerate() {
                for (p, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                    let m = 1u8 << (4 * c + p);
                    for (l, &v) in q.iter().enumerate() {
                        k.q[128 * c + 32 * p + l] = ((v >> shift) & 3) | if hmask[l] & m != 0 { 4 } else { 0 };
                    }
                }
            }
        }
        DType::Q4K | DType::Q5K => {
            (k.d, k.dmin) = (half(b, 0), half(b, 2));
            for j in 0..8 {
                let (sc, mn) = k4_scale_min(j, &b[4..16]);
                (k.scales[2 * j], k.scales[2 * j + 1]) = (sc as i32, sc as i32);
                (k.mins[2 * j], k.mins[2 * j + 1]) = (mn as i32, mn as i32);
            }
            let qs = if dtype == DType::Q5K { &b[48..176] } else { &b[16..144] };
            // Each 32-byte chunk holds 64 weights: low nibbles, then high nibbles.
            for (c, q) in qs.chunks_exact(32).enumerate() {
                for (l, &v) in q.iter().enumerate() {
                    (k.q[64 * c + l], k.q[64 * c + 32 + l]) = (v & 0xF, v >> 4);
                }
            }
            if dtype == DType::Q5K {
                // The fifth bits: bit j of qh[l] belongs to weight 32 j + l.
                for (l, &h) in b[16..48].iter().enumerate() {
                    for j in 0..8 {
                        k.q[32 * j + l] |= ((h >> j) & 1) << 4;
                    }
                }
            }
        }
        DType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            k.d = half(b, 208);
            for (g, &s) in sc.iter().enumerate() {
                k.scales[g] = s as i8 as i32;
            }
            for n in 0..2 {
                let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut k.q[128 * n..]);
                for l in 0..32 {
                    q[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("not a K-quant type"),
    }
}

/// Weight `i` of one block, equal to element `i` of the whole block's decoding (the same float
/// operations), reading only the bits it needs: shadow execution wants single columns of a
/// quantized matrix, and a K-quant block holds 256 weights. (Tests compare it with `to_f32` on
/// every position of every type.)
pub fn dequantize_one(dtype: DType, b: &[u8], i: usize) -> f32 {
    let half = f16_at;
    let bit = |byte: u8, at: usize| (byte >> at) & 1;
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let mut v = [0f32];
            let size = dtype.block().1;
            to_f32_portable(dtype, &b[i * size..(i + 1) * size], &mut v);
            v[0]
        }
        DType::Q8_0 => (((b[2 + i] ^ 0x80) as i32) - 128) as f32 * half(b, 0),
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            let (j, high) = (i % 16, i >= 16);
            let (min, qh, qs) = match dtype {
                DType::Q4_0 => (None, None, &b[2..18]),
                DType::Q4_1 => (Some(half(b, 2)), None, &b[4..20]),
                DType::Q5_0 => (None, Some(&b[2..6]), &b[6..22]),
                _ => (Some(half(b, 2)), Some(&b[4..8]), &b[8..24]),
            };
            let mut q = if high { qs[j] >> 4 } else { qs[j] & 0xF };
            if let Some(qh) = qh {
                q |= bit(qh[i / 8], i % 8) << 4;
            }
            let v = (q as i32 - dtype.offset()) as f32 * half(b, 0);
            min.map_or(v, |m| v + m)
        }
        _ => {
            // K-quants: (d scale) (q - offset) - dmin min of the weight's group of 16.
            let (g, c, l) = (i / 16, i / 128, i % 32);
            let (q, sc, mn, d, dmin) = match dtype {
                DType::Q2K => {
                    let sc = b[g];
                    ((b[16 + 32 * c + l] >> (2 * ((i % 128) / 32))) & 3, (sc & 0xF) as i32, (sc >> 4) as i32, half(b, 80), half(b, 82))
                }
                DType::Q3K => {
                    let p = (i % 128) / 32;
                    let q = ((b[32 + 32 * c + l] >> (2 * p)) & 3) | (bit(b[l], 4 * c + p) << 2);
                    (q, q3k_scales(&b[96..108])[g] as i32 - 32, 0, half(b, 108), 0.0)
                }
                DType::Q4K | DType::Q5K => {
                    let (chunk, part) = (i / 64, (i % 64) / 32);
                    let qs = if dtype == DType::Q5K { &b[48..176] } else { &b[16..144] };
                    let mut q = (qs[32 * chunk + l] >> (4 * part)) & 0xF;
                    if dtype == DType::Q5K {
                        q |= bit(b[16 + l], i / 32) << 4;
                    }
                    let (sc, mn) = k4_scale_min(i / 32, &b[4..16]);
                    (q, sc as i32, mn as i32, half(b, 0), half(b, 2))
                }
                DType::Q6K => {
                    let (n, quarter) = (i / 128, (i % 128) / 32);
                    let low = (b[64 * n + l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0xF;
                    let high = (b[128 + 32 * n + l] >> (2 * quarter)) & 3;
                    (low | (high << 4), b[192 + g] as i8 as i32, 0, half(b, 208), 0.0)
                }
                _ => unreachable!("every block type is matched"),
            };
            (d * sc as f32) * (q as i32 - dtype.offset()) as f32 - dmin * mn as f32
        }
    }
}

/// The f16 at `b[at..at + 2]` as f32 (table lookup).
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_table()[u16::from_le_bytes([b[at], b[at + 1]]) as usize]
}

/// Q3_K's 16 6-bit scales, packed in 12 bytes (low 4 bits in the first 8 bytes, high 2 bits in
/// the last 4).
fn q3k_scales(packed: &[u8]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for (i, v) in s.iter_mut().enumerate() {
        let low = if i < 8 { packed[i] & 0xF } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *v = low | (high << 4);
    }
    s
}

/// Q4_K / Q5_K: scale and min of group `j` (of 8), 6 bits each, packed in 12 bytes.
fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
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
        assert_eq!(DType::Q4K.n_bytes(512), Some(288));
    }

    #[test]
    fn one_weight_decodes_like_its_whole_block() {
        let mut rng = crate::util::Rng::new(17);
        for dtype in DType::ALL {
            let (weights, size) = dtype.block();
            // Two blocks per type under Miri (tools/miri.sh), which interprets every step.
            for _ in 0..if cfg!(miri) { 2 } else { 20 } {
                let mut b: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
                // Sane f16 scales where the layout has them (random bits could be NaN).
                for at in [0usize, 2, 80, 82, 108, 208].into_iter().filter(|&at| at + 2 <= size && (dtype.is_quantized() || at == 0)) {
                    let keep = match dtype {
                        DType::Q2K => at >= 80,
                        DType::Q3K => at == 108,
                        DType::Q6K => at == 208,
                        DType::Q4K | DType::Q5K | DType::Q4_1 | DType::Q5_1 => at <= 2,
                        _ => at == 0,
                    };
                    if keep {
                        b[at..at + 2].copy_from_slice(&f16::from_f32(0.01 + rng.next_f32()).to_le_bytes());
                    }
                }
                let mut all = vec![0f32; weights];
                to_f32_portable(dtype, &b, &mut all);
                for (i, &want) in all.iter().enumerate() {
                    let got = dequantize_one(dtype, &b, i);
                    assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{} weight {i}: {got} vs {want}", dtype.name());
                }
            }
        }
    }

    #[test]
    fn the_q3k_scale_unpacking_matches_ggmls_bit_twiddling() {
        // ggml unpacks with 32-bit masks (kmask1 0x03030303, kmask2 0x0f0f0f0f); ours goes
        // byte by byte. Same result for every bit pattern of one byte position at a time.
        for pos in 0..12 {
            for v in 0..=255u8 {
                let mut packed = [0u8; 12];
                packed[pos] = v;
                let aux: Vec<u32> = packed.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                let (k1, k2, tmp) = (0x0303_0303u32, 0x0f0f_0f0fu32, aux[2]);
                let want = [
                    (aux[0] & k2) | ((tmp & k1) << 4),
                    (aux[1] & k2) | (((tmp >> 2) & k1) << 4),
                    ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4),
                    ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4),
                ];
                let want: Vec<u8> = want.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert_eq!(q3k_scales(&packed).to_vec(), want, "byte {pos} = {v:#x}");
            }
        }
    }
}
