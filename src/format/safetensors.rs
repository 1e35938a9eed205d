//! Safetensors files (single or sharded through `model.safetensors.index.json`), memory-mapped.
//! F32 tensors are used in place; F16 and BF16 are converted to f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::FileBytes;
use safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensors, TensorInfo};

use crate::error::{Error, Result};
use crate::tensor::dtype::DType;
use crate::tensor::Tensor;

struct Shard {
    path: PathBuf,
    map: Arc<FileBytes>,
    /// Absolute offset of the data section (8-byte length + JSON header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// All tensors of a model, possibly spread over several shards.
pub struct SafetensorsModel {
    shards: Vec<Shard>,
    location: HashMap<String, usize>,
}

pub struct RawTensorInfo<'a> {
    pub name: &'a str,
    pub dtype: &'static str,
    pub shape: &'a [usize],
}

fn open_shard(path: &Path) -> Result<Shard> {
    let map = crate::format::map_file(path)?;
    let (header_len, metadata): (usize, Metadata) = SafeTensors::read_metadata(&map)
        .map_err(|e| Error::corrupt(path, format!("bad safetensors header: {e}")))?;
    let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
    Ok(Shard { path: path.to_path_buf(), map: Arc::new(map), data_start: 8 + header_len, tensors })
}

impl SafetensorsModel {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::corrupt(&index, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::field(&index, "weight_map", "missing or not an object"))?;
            let mut files: Vec<PathBuf> = Vec::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| Error::field(&index, "weight_map", "values must be file names"))?;
                let p = dir.join(f);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::corrupt(dir, "no model.safetensors or model.safetensors.index.json in this folder"));
        };
        let mut shards = Vec::new();
        let mut location = HashMap::new();
        for f in files {
            let shard = open_shard(&f)?;
            for name in shard.tensors.keys() {
                location.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(SafetensorsModel { shards, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Names, on-disk dtypes and shapes of every tensor, sorted by name.
    pub fn infos(&self) -> Vec<RawTensorInfo<'_>> {
        let mut v: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.tensors.iter())
            .map(|(n, i)| RawTensorInfo { name: n, dtype: dtype_name(i.dtype), shape: &i.shape })
            .collect();
        v.sort_by(|a, b| a.name.cmp(b.name));
        v
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let Some(&si) = self.location.get(name) else {
            let path = self.shards.first().map(|s| s.path.as_path()).unwrap_or(Path::new("model.safetensors"));
            return Err(Error::field(path, format!("tensor '{name}'"), "missing"));
        };
        let shard = &self.shards[si];
        let info = &shard.tensors[name];
        let dtype = match info.dtype {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(Error::field(
                    &shard.path,
                    format!("tensor '{name}'"),
                    format!("dtype {other:?} is not supported (supported: F32, F16, BF16)"),
                ))
            }
        };
        let n: usize = info.shape.iter().product();
        let (start, end) = info.data_offsets;
        // read_metadata already checked that offsets match dtype x shape and lie in the buffer.
        debug_assert_eq!(Some(end - start), dtype.n_bytes(n));
        Ok(Tensor::from_mapped(&shard.map, shard.data_start + start, info.shape.clone(), dtype))
    }
}

fn dtype_name(d: StDtype) -> &'static str {
    match d {
        StDtype::F32 => "F32",
        StDtype::F16 => "F16",
        StDtype::BF16 => "BF16",
        StDtype::F64 => "F64",
        StDtype::I8 => "I8",
        StDtype::U8 => "U8",
        StDtype::I32 => "I32",
        StDtype::I64 => "I64",
        _ => "other",
    }
}
