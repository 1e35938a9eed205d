//! NumPy .npy files (format 1.0, little-endian float32, C order): written by `llm-npu logits`,
//! read by the tests that compare against Hugging Face reference logits.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `data` with `shape` as a float32 .npy file.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&out).map_err(|e| Error::io(path, e))
}

/// Reads a little-endian float32 C-order .npy file: (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(Error::corrupt(path, "not a .npy file"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(Error::corrupt(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes.get(hstart..hstart + hlen).map(String::from_utf8_lossy).ok_or_else(|| Error::corrupt(path, "truncated header"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(Error::corrupt(path, format!("only little-endian float32 in C order is supported: {header}")));
    }
    let shape_str = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| Error::corrupt(path, "no shape"))?;
    let shape: Vec<usize> = shape_str.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|_| Error::corrupt(path, "bad shape"))).collect::<Result<_>>()?;
    let data_bytes = &bytes[hstart + hlen..];
    let n: usize = shape.iter().product();
    if data_bytes.len() != n * 4 {
        return Err(Error::corrupt(path, format!("{} data bytes for shape {shape:?}", data_bytes.len())));
    }
    Ok((shape, data_bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
}
