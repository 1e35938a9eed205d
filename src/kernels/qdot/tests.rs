use super::*;
use crate::tensor::dtype::to_f32;
use crate::util::Rng;

fn block_types() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|d| d.is_quantized())
}

/// Byte offsets of a block type's f16 scale fields (random bytes there could be inf or NaN).
pub(crate) fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q2K => &[80, 82],
        DType::Q3K => &[108],
        DType::Q6K => &[208],
        _ => unreachable!(),
    }
}

/// `blocks` random blocks: every bit random except the scales, which are in [0.001, 0.1).
pub(crate) fn random_row(dtype: DType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let size = dtype.block().1;
    let mut row: Vec<u8> = (0..blocks * size).map(|_| rng.next_u64() as u8).collect();
    for b in row.chunks_exact_mut(size) {
        for &at in f16_fields(dtype) {
            let v = half::f16::from_f32(0.001 + 0.099 * rng.next_f32());
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    row
}

fn random_acts(n: usize, rng: &mut Rng) -> Vec<f32> {
    // A few large values, as real activations have.
    (0..n).map(|i| (rng.next_f32() - 0.5) * if i % 37 == 5 { 40.0 } else { 2.0 }).collect()
}

#[test]
fn every_simd_kernel_equals_its_portable_twin_bit_for_bit() {
    let mut rng = Rng::new(7);
    let levels = QdotLevel::available();
    eprintln!("levels here: {levels:?}");
    for dtype in block_types() {
        let format = ActFormat::for_weights(dtype).unwrap();
        // Block counts around the 16-block steps and tails.
        for blocks in [1, 2, 7, 15, 16, 17, 31, 32, 33, 64] {
            let k = blocks * dtype.block().0;
            let row = random_row(dtype, blocks, &mut rng);
            let a = QuantizedActs::new(format, &random_acts(k, &mut rng));
            let want = row_dot_portable(dtype, &row, &a);
            assert!(want.is_finite());
            for &level in &levels {
                let got = row_dot(level, dtype, &row, &a);
                assert_eq!(got.to_bits(), want.to_bits(), "{} {blocks} blocks, {level:?}: {got} vs portable {want}", dtype.name());
            }
        }
    }
}

#[test]
fn the_portable_dot_equals_dequantize_then_dot() {
    // Against the dequantizer that matches the gguf package bit for bit, and the activation as
    // its int8 values times their scales: only float rounding may differ.
    let mut rng = Rng::new(11);
    for dtype in block_types() {
        let format = ActFormat::for_weights(dtype).unwrap();
        for blocks in [1, 3, 16, 21] {
            let k = blocks * dtype.block().0;
            let row = random_row(dtype, blocks, &mut rng);
            let a = QuantizedActs::new(format, &random_acts(k, &mut rng));
            let mut w = vec![0f32; k];
            to_f32(dtype, &row, &mut w);
            let per_block = format.block();
            let terms: Vec<f64> = (0..k).map(|i| w[i] as f64 * a.d[i / per_block] as f64 * a.qs[i] as f64).collect();
            let want: f64 = terms.iter().sum();
            let scale: f64 = terms.iter().map(|t| t.abs()).sum();
            let got = row_dot_portable(dtype, &row, &a) as f64;
            assert!((got - want).abs() <= 1e-5 * scale + 1e-12, "{} {blocks} blocks: {got} vs {want} (terms up to {scale})", dtype.name());
        }
    }
}

#[test]
fn activations_quantize_to_within_half_a_step() {
    let mut rng = Rng::new(3);
    for format in [ActFormat::Q8x32, ActFormat::Q8K] {
        let mut x = random_acts(512, &mut rng);
        x[..format.block()].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let a = QuantizedActs::new(format, &x);
        for (i, &v) in x.iter().enumerate() {
            let d = a.d[i / format.block()];
            assert!((v - d * a.qs[i] as f32).abs() <= 0.5 * d * (1.0 + 1e-5) + 1e-7, "{format:?} {i}: {v} vs {d} * {}", a.qs[i]);
        }
        assert!(a.qs[..format.block()].iter().all(|&q| q == 0) && a.d[0] == 0.0);
        for (s, q) in a.sums.iter().zip(a.qs.chunks_exact(16)) {
            assert_eq!(*s as i32, q.iter().map(|&v| v as i32).sum::<i32>());
        }
        let mut portable = QuantizedActs { format, qs: vec![0; 512], d: vec![0.0; a.d.len()], sums: vec![0; 32] };
        quantize_portable(&mut portable, &x);
        assert!(portable.qs == a.qs && portable.sums == a.sums && portable.d.iter().zip(&a.d).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

#[test]
fn the_matrix_product_is_the_row_dots_for_one_and_several_tokens() {
    let mut rng = Rng::new(5);
    for dtype in [DType::Q4_0, DType::Q4K, DType::Q5_1] {
        let (n, k) = (70, 2 * dtype.block().0.max(64));
        let bytes = random_row(dtype, n * k / dtype.block().0, &mut rng);
        let w = Encoded { dtype, bytes: &bytes, rows: n, cols: k };
        for m in [1, 3] {
            let x = random_acts(m * k, &mut rng);
            let mut y = vec![1.0f32; m * n];
            matmul(w, &x, m, &mut y, true);
            for i in 0..m {
                let a = QuantizedActs::new(ActFormat::for_weights(dtype).unwrap(), &x[i * k..(i + 1) * k]);
                for r in 0..n {
                    assert_eq!(y[i * n + r], 1.0 + row_dot(level(), dtype, w.row(r), &a), "{} m={m} token {i} row {r}", dtype.name());
                }
            }
        }
    }
}

#[test]
fn several_weights_in_one_loop_equal_one_at_a_time() {
    let mut rng = Rng::new(9);
    let k = 512;
    let types = [DType::Q4K, DType::Q8_0, DType::Q6K];
    let rows = [40, 7, 33];
    let bytes: Vec<Vec<u8>> = types.iter().zip(rows).map(|(&t, n)| random_row(t, n * k / t.block().0, &mut rng)).collect();
    let ws: Vec<Encoded> = types.iter().zip(rows).zip(&bytes).map(|((&dtype, rows), b)| Encoded { dtype, bytes: b, rows, cols: k }).collect();
    let x = random_acts(k, &mut rng);
    let mut outs: Vec<Vec<f32>> = rows.iter().map(|&n| vec![0.0; n]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    matmul_many(&ws, &x, 1, &mut refs);
    for (w, got) in ws.iter().zip(&outs) {
        let mut want = vec![0f32; w.rows];
        matmul(*w, &x, 1, &mut want, false);
        assert_eq!(got, &want, "{}", w.dtype.name());
    }
}

#[test]
fn the_integer_gemm_equals_the_portable_dot_for_every_row_and_token() {
    let mut rng = Rng::new(13);
    for dtype in block_types() {
        let k = 2 * dtype.block().0.max(256);
        // Rows not a multiple of the 16-row panel, tokens not a multiple of the 4-token pass.
        let (n, m) = (37, 11);
        let bytes = random_row(dtype, n * k / dtype.block().0, &mut rng);
        let w = Encoded { dtype, bytes: &bytes, rows: n, cols: k };
        let x = random_acts(m * k, &mut rng);
        for &lvl in &QdotLevel::available() {
            let mut y = vec![0.5f32; m * n];
            matmul_at(lvl, w, &x, m, &mut y, true);
            for i in 0..m {
                let a = QuantizedActs::new(ActFormat::for_weights(dtype).unwrap(), &x[i * k..(i + 1) * k]);
                for r in 0..n {
                    let want = 0.5 + row_dot_portable(dtype, w.row(r), &a);
                    assert_eq!(y[i * n + r].to_bits(), want.to_bits(), "{} {lvl:?} token {i} row {r}: {} vs {want}", dtype.name(), y[i * n + r]);
                }
            }
        }
    }
}
