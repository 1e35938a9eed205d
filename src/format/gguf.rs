//! GGUF reader (versions 1, 2 and 3): metadata key/values and tensor descriptors, with tensor data
//! read from the memory-mapped file. Version 1 uses 32-bit counts and lengths; 2 and 3 use 64-bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::FileBytes;

use crate::error::{Error, Result};
use crate::tensor::dtype::DType;
use crate::tensor::Tensor;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: fastest-varying first (the reverse of the row-major shape).
    pub dims: Vec<u64>,
    /// ggml type id as stored; `dtype` is Some when this reader can convert it.
    pub ggml_type: u32,
    pub dtype: Option<DType>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Row-major shape, outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    map: Arc<FileBytes>,
}

fn ggml_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8",
        "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}


/// A bounds-checked little-endian cursor; every read past the end is a "truncated" error.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    wide: bool,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::corrupt(
                self.path,
                format!("truncated GGUF header: {what} at byte {} needs {n} bytes, file has {}", self.pos, self.buf.len()),
            )),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A count or length: u32 in GGUF v1, u64 later.
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let n = usize::try_from(n).map_err(|_| Error::corrupt(self.path, format!("{what}: length {n} too large")))?;
        let bytes = self.take(n, what)?;
        // Vocabularies occasionally hold invalid UTF-8 pieces; keep them lossily rather than fail.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => Value::Bool(self.u8(key)? != 0),
            8 => Value::String(self.string(key)?),
            9 if depth == 0 => {
                let item_ty = self.u32(key)?;
                let n = self.len(key)?;
                // Every item takes at least one byte: a larger count can only be corruption.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(Error::corrupt(self.path, format!("metadata '{key}': array length {n} exceeds the file size")));
                }
                // Preallocate only what the remaining bytes could hold (a Value is larger than its encoding).
                let mut items = Vec::with_capacity((n as usize).min((self.buf.len() - self.pos) / 32));
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            _ => return Err(Error::corrupt(self.path, format!("metadata '{key}': unknown value type {ty}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = crate::format::map_file(path)?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<FileBytes>) -> Result<Self> {
        let buf: &[u8] = &map;
        if buf.len() < 8 || &buf[..4] != MAGIC {
            return Err(Error::corrupt(path, "not a GGUF file (bad magic)"));
        }
        let version = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if !(1..=3).contains(&version) {
            return Err(Error::corrupt(path, format!("unsupported GGUF version {version} (supported: 1, 2, 3)")));
        }
        let mut c = Cursor { buf, pos: 8, wide: version >= 2, path };
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        if n_kv > buf.len() as u64 || n_tensors > buf.len() as u64 {
            return Err(Error::corrupt(path, format!("impossible counts: {n_tensors} tensors, {n_kv} metadata entries")));
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity((n_tensors as usize).min(buf.len() / 64));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims > 4 {
                return Err(Error::corrupt(path, format!("tensor '{name}': {n_dims} dimensions (at most 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.len(&name)?);
            }
            let ggml_type = c.u32(&name)?;
            let rel_offset = c.u64(&name)?;
            tensors.push((name, dims, ggml_type, rel_offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                Error::field(path, "general.alignment", "must be a power of two")
            })?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;

        let mut infos = Vec::with_capacity(tensors.len());
        let mut by_name = HashMap::new();
        for (name, dims, ggml_type, rel_offset) in tensors {
            let dtype = DType::from_ggml(ggml_type);
            // Every tensor may be converted to f32, so its element count must fit 4-byte elements.
            let n_elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as u64));
            let n_bytes = match (dtype, n_elems) {
                // Blocks run along the innermost dimension (ggml's ne0).
                (Some(dt), Some(n)) if dims.first().is_some_and(|&d0| d0 % dt.block().0 as u64 == 0) => dt.n_bytes(n as usize).ok_or_else(|| {
                    Error::corrupt(path, format!("tensor '{name}': {n} elements do not fit {} blocks", dt.name()))
                })? as u64,
                (Some(dt), Some(_)) => {
                    return Err(Error::corrupt(path, format!("tensor '{name}': rows of {} elements do not fit {} blocks of {}", dims.first().copied().unwrap_or(0), dt.name(), dt.block().0)))
                }
                (None, _) => 0, // size unknown for types we do not read; checked when requested
                (_, None) => return Err(Error::corrupt(path, format!("tensor '{name}': dimensions overflow"))),
            };
            let offset = data_start.checked_add(rel_offset).filter(|&o| o.checked_add(n_bytes).is_some_and(|end| end <= buf.len() as u64));
            let Some(offset) = offset else {
                return Err(Error::corrupt(
                    path,
                    format!("tensor '{name}': data at offset {rel_offset} (+{n_bytes} bytes) lies past the end of the file ({} bytes); truncated?", buf.len()),
                ));
            };
            by_name.insert(name.clone(), infos.len());
            infos.push(TensorInfo { name, dims, ggml_type, dtype, offset: offset as usize, n_bytes: n_bytes as usize });
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors: infos, by_name, map })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Reads a tensor as f32 (zero-copy for aligned F32 data).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::field(&self.path, format!("tensor '{name}'"), "missing"))?;
        let dtype = info.dtype.ok_or_else(|| {
            Error::field(
                &self.path,
                format!("tensor '{name}'"),
                format!(
                    "type {} is not supported (supported: {})",
                    ggml_type_name(info.ggml_type),
                    DType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        Ok(Tensor::from_mapped(&self.map, info.offset, info.shape(), dtype))
    }
}
