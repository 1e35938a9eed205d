//! File formats: bytes in, typed tensors and metadata out. Nothing outside this module knows a
//! file layout.


pub mod gguf;
pub mod llama2c;
pub mod safetensors;

use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// Maps a model file read-only, with its pages faulted in up front (MAP_POPULATE): one pass of
/// the kernel instead of a page fault per 4 KiB on first use, which for a 4 GiB f32 model costs
/// seconds inside the first forward pass.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is mapped read-only; like every mmap-based loader we assume it is not
    // truncated or rewritten while the model is loaded.
    unsafe { MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))
}
