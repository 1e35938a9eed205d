//! The npu backend's int8 weights kept on disk between runs. Quantizing a model at load reads
//! every weight (TinyLlama's 4.1 GB of f32: 1.4-1.6 s, most of a short prompt's time to its
//! first token). The packed result is kept once in llm-npu's cache folder, and later runs map
//! the file instead: nothing is computed or copied, and processes mapping the same file share
//! its pages.
//!
//! A file is `MAGIC`, the JSON header's length and where the parts start (two u64, little
//! endian), the header (the model's path, each linear's shape and where its parts lie), then
//! the parts, each on a 4,096-byte boundary: the packed weights and their offsets as the kernels
//! read them, the scales and the bias as f32 (this machine's byte order). It is written without
//! waiting for the disk; the header's check of the contents, verified at every load, catches
//! what a crash soon after may leave. Its name holds the model, the weight granularity and the
//! build (`util::cached_for_model`): a changed model, or a new build whose packing may differ,
//! quantizes anew. The folder is kept under `BUDGET`: files whose model is gone go first, then
//! the least recently used.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Int8Linear, WeightGranularity};
use crate::error::{Error, Result};
use crate::kernels::aligned::{bytes_of, Plain, Stored};
use crate::kernels::int8_gemm::PackedI8Weights;

const MAGIC: &[u8; 8] = b"llmnpu8w";
/// Bytes before the header: the magic, the header's length, where the parts start.
const PREFIX: usize = 24;
/// Every part starts on a page (so on the 64 bytes the kernels need).
const ALIGN: usize = 4096;
/// The most the folder keeps (bytes).
pub const BUDGET: u64 = 20 << 30;

/// The folder in llm-npu's cache.
const KIND: &str = "int8-weights";

/// Where the int8 weights of `model` quantized with `granularity` are kept; None where there is
/// no cache folder or the model cannot be read.
pub fn path(model: &Path, granularity: WeightGranularity) -> Option<PathBuf> {
    let what = match granularity {
        WeightGranularity::PerChannel => "per-channel",
        WeightGranularity::PerTensor => "per-tensor",
    };
    crate::util::cached_for_model(KIND, model, what, "bin")
}

#[derive(Serialize, Deserialize)]
struct Header {
    /// The model's path, so that a sweep can drop files of models that are gone.
    model: PathBuf,
    linears: Vec<Entry>,
    /// `check` of every part in order: the file is written without waiting for the disk, so a
    /// crash soon after may leave damage that only the contents show.
    check: u64,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Entry {
    n: usize,
    k: usize,
    data: Part,
    offsets: Part,
    scales: Part,
    bias: Option<Part>,
}

/// `len` bytes from byte `at` after the parts' start.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
struct Part {
    at: usize,
    len: usize,
}

/// What a caller expects of each linear: its shape and whether it has a bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub n: usize,
    pub k: usize,
    pub bias: bool,
}

/// The linears kept at `path`, checked against `shapes` (in order). Ok(None) when there is no
/// such file; an error when there is one that does not fit (damaged, or another model's).
pub fn load(path: &Path, shapes: &[Shape]) -> Result<Option<Vec<Int8Linear>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |what: &str| Error::Input(format!("{}: {what}", path.display()));
    // SAFETY: the file is llm-npu's own: written whole beside its place and renamed into it, and
    // never changed in place afterwards (a new one replaces it by another rename, which leaves
    // this mapping's file alone).
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let (header, base) = read_header(&map).filter(|&(_, base)| base <= map.len()).ok_or_else(|| bad("not a file of kept int8 weights"))?;
    if header.linears.len() != shapes.len() {
        return Err(bad(&format!("{} linears where the model has {}", header.linears.len(), shapes.len())));
    }
    let mut linears = Vec::with_capacity(shapes.len());
    for (i, (e, s)) in header.linears.iter().zip(shapes).enumerate() {
        if (e.n, e.k, e.bias.is_some()) != (s.n, s.k, s.bias) {
            return Err(bad(&format!("linear {i} is {}x{} where the model's is {}x{}", e.n, e.k, s.n, s.k)));
        }
        let floats = |p: Part| mapped::<f32>(&map, base, p).map(|s| s.to_vec());
        let scales = floats(e.scales).filter(|s| s.len() == 1 || s.len() == e.n);
        let bias = e.bias.map(|b| floats(b).filter(|b| b.len() == e.n));
        let weights = mapped(&map, base, e.data).zip(mapped(&map, base, e.offsets)).and_then(|(d, o)| PackedI8Weights::from_parts(e.n, e.k, d, o));
        match (weights, scales, bias) {
            (Some(weights), Some(scales), None) => linears.push(Int8Linear { weights, scales, bias: None }),
            (Some(weights), Some(scales), Some(Some(bias))) => linears.push(Int8Linear { weights, scales, bias: Some(bias) }),
            _ => return Err(bad(&format!("linear {i}'s parts do not fit the file"))),
        }
    }
    let refs: Vec<&Int8Linear> = linears.iter().collect();
    if check(refs.iter().flat_map(parts_of)) != header.check {
        return Err(bad("damaged (its contents do not match their check)"));
    }
    crate::util::mark_used(path);
    Ok(Some(linears))
}

/// Part `p` of a mapped file whose parts start at `base`, as values of T, if it lies inside the
/// file and holds whole values.
fn mapped<T: Plain>(map: &Arc<memmap2::Mmap>, base: usize, p: Part) -> Option<Stored<T>> {
    let size = std::mem::size_of::<T>();
    (p.len % size == 0).then_some(())?;
    Stored::mapped(map.clone(), base.checked_add(p.at)?, p.len / size)
}

/// The header and where the parts start, if `bytes` begin like a file of kept weights (the
/// parts themselves need not be in `bytes`).
fn read_header(bytes: &[u8]) -> Option<(Header, usize)> {
    let word = |i: usize| bytes.get(8 + 8 * i..16 + 8 * i).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let (len, base) = (word(0)?, word(1)?);
    let header = serde_json::from_slice(bytes.get(PREFIX..PREFIX.checked_add(len)?)?).ok()?;
    (base % ALIGN == 0).then_some((header, base))
}

/// Keeps `linears` (quantized from `model`) at `path` whole or not at all, then sweeps the
/// folder (`sweep`). Returns the file's size.
pub fn keep(path: &Path, model: &Path, linears: &[&Int8Linear]) -> Result<u64> {
    let bytes: u64 = linears.iter().flat_map(parts_of).map(|p| p.len() as u64).sum();
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(free) = crate::util::free_bytes(dir).filter(|&free| free < bytes.saturating_mul(2)) {
        return Err(Error::Input(format!("{:.1} GiB free in {}, too little to keep {:.1} GiB", free as f64 / (1u64 << 30) as f64, dir.display(), bytes as f64 / (1u64 << 30) as f64)));
    }
    // Where each part goes, in the order `parts_of` gives and `Out::part` writes them.
    let mut at = 0;
    let mut entries = Vec::with_capacity(linears.len());
    for lin in linears {
        let mut parts = parts_of(lin).map(|bytes| {
            let part = Part { at, len: bytes.len() };
            at += bytes.len().next_multiple_of(ALIGN);
            part
        });
        let mut next = || parts.next().expect("weights, offsets and scales");
        let (data, offsets, scales) = (next(), next(), next());
        entries.push(Entry { n: lin.out_features(), k: lin.in_features(), data, offsets, scales, bias: parts.next() });
    }
    let check = check(linears.iter().flat_map(parts_of));
    let header = serde_json::to_vec(&Header { model: model.canonicalize().unwrap_or_else(|_| model.to_path_buf()), linears: entries, check }).map_err(|e| Error::Input(format!("kept weights' header: {e}")))?;
    let base = (PREFIX + header.len()).next_multiple_of(ALIGN);
    crate::util::keep_cached(path, |partial| {
        let io = |e| Error::io(partial, e);
        let mut out = Out { file: BufWriter::with_capacity(1 << 20, std::fs::File::create(partial).map_err(io)?), written: 0 };
        out.put(MAGIC).map_err(io)?;
        out.put(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        out.put(&(base as u64).to_le_bytes()).map_err(io)?;
        out.put(&header).map_err(io)?;
        for part in linears.iter().flat_map(parts_of) {
            out.part(part).map_err(io)?;
        }
        out.file.into_inner().map_err(|e| io(e.into_error()))?;
        Ok(())
    })?;
    if let Some(dir) = path.parent() {
        sweep(dir, path, BUDGET);
    }
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| Error::io(path, e))
}

/// A linear's parts as bytes, in the file's order: the packed weights, their offsets, the
/// scales, the bias if any (`Entry`'s fields).
fn parts_of<'a>(lin: &&'a Int8Linear) -> impl Iterator<Item = &'a [u8]> {
    let (data, offsets) = lin.weights.parts();
    [Some(bytes_of(data)), Some(bytes_of(offsets)), Some(bytes_of(&lin.scales)), lin.bias.as_deref().map(bytes_of)].into_iter().flatten()
}

/// `util::checksum_wide` of the parts' bytes, 1 MiB blocks at a time in parallel, joined in order.
fn check<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u64 {
    use rayon::prelude::*;
    let blocks: Vec<u64> = parts.flat_map(|part| part.par_chunks(1 << 20).map(crate::util::checksum_wide).collect::<Vec<_>>().into_iter().chain([part.len() as u64])).collect();
    crate::util::checksum(&blocks.iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<u8>>())
}

/// A file being written, and how far.
struct Out {
    file: BufWriter<std::fs::File>,
    written: usize,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len();
        Ok(())
    }

    /// `bytes` from the next multiple of ALIGN (zeros before).
    fn part(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let pad = self.written.next_multiple_of(ALIGN) - self.written;
        self.put(&[0u8; ALIGN][..pad])?;
        self.put(bytes)
    }
}

/// `util::sweep_kept` over the kept weights in `dir`, `keep` (the file just written) staying.
pub fn sweep(dir: &Path, keep: &Path, budget: u64) {
    crate::util::sweep_kept(dir, keep, "bin", budget, model_of);
}

/// The model a kept file was made from, from its header.
fn model_of(path: &Path) -> Option<PathBuf> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut prefix = [0u8; PREFIX];
    file.read_exact(&mut prefix).ok()?;
    let len = u64::from_le_bytes(prefix[8..16].try_into().unwrap()) as usize;
    let mut bytes = prefix.to_vec();
    bytes.resize(PREFIX + len.min(64 << 20), 0);
    file.read_exact(&mut bytes[PREFIX..]).ok()?;
    read_header(&bytes).map(|(h, _)| h.model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linears() -> Vec<Int8Linear> {
        let w = |n: usize, k: usize, seed: usize| -> Vec<f32> { (0..n * k).map(|i| (((i + seed) * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + (i + seed) % 3) as f32).collect() };
        vec![
            Int8Linear::new(&w(70, 130, 1), 70, 130, None, WeightGranularity::PerChannel),
            Int8Linear::new(&w(33, 7, 2), 33, 7, Some(&(0..33).map(|i| i as f32 * 0.5).collect::<Vec<_>>()), WeightGranularity::PerTensor),
            Int8Linear::new(&w(1, 64, 3), 1, 64, None, WeightGranularity::PerChannel),
        ]
    }

    fn shapes(l: &[Int8Linear]) -> Vec<Shape> {
        l.iter().map(|l| Shape { n: l.out_features(), k: l.in_features(), bias: l.bias.is_some() }).collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llm-npu-weight-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn kept_weights_load_back_the_same_and_damaged_files_are_refused() {
        let dir = temp_dir("roundtrip");
        let model = dir.join("model.gguf");
        std::fs::write(&model, b"a model").unwrap();
        let path = dir.join("m-per-channel-0123456789abcdef.bin");
        let made = linears();
        let size = keep(&path, &model, &made.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let loaded = load(&path, &shapes(&made)).unwrap().expect("kept");
        for (a, b) in made.iter().zip(&loaded) {
            assert_eq!(a.int8_rows(), b.int8_rows());
            assert_eq!((&a.scales, &a.bias), (&b.scales, &b.bias));
            let ((da, oa), (db, ob)) = (a.weights.parts(), b.weights.parts());
            assert_eq!((&da[..], &oa[..]), (&db[..], &ob[..]));
            assert!(matches!(db, Stored::Mapped(_)), "mapped, not copied");
        }
        // Another model's shapes, a missing file, a truncated one, a damaged header.
        let mut other = shapes(&made);
        other[1].n += 1;
        assert!(load(&path, &other).is_err());
        assert!(load(&path, &other[..2]).is_err());
        assert!(load(&dir.join("missing.bin"), &other).unwrap().is_none());
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for damaged in [&bytes[..bytes.len() - 4096], &bytes[..20], &[&b"llmnpu8x"[..], &bytes[8..]].concat()[..], &flipped[..]] {
            std::fs::write(&path, damaged).unwrap();
            assert!(load(&path, &shapes(&made)).is_err(), "{} bytes", damaged.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sweep_drops_files_of_vanished_models_then_the_least_recently_used() {
        let dir = temp_dir("sweep");
        let lin = linears();
        let refs: Vec<&Int8Linear> = lin.iter().collect();
        let (kept, gone) = (dir.join("kept-model"), dir.join("gone-model"));
        std::fs::write(&kept, b"x").unwrap();
        std::fs::write(&gone, b"x").unwrap();
        let names = ["a-per-channel-0000000000000001.bin", "b-per-channel-0000000000000002.bin", "c-per-channel-0000000000000003.bin"];
        for (i, name) in names.iter().enumerate() {
            keep(&dir.join(name), if i == 1 { &gone } else { &kept }, &refs).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::remove_file(&gone).unwrap();
        let size = std::fs::metadata(dir.join(names[0])).unwrap().len();
        // Room for two files: b's model is gone, and a is older than c, which was just written.
        sweep(&dir, &dir.join(names[2]), 2 * size);
        let left = |n: &str| dir.join(n).exists();
        assert!(left(names[0]) && !left(names[1]) && left(names[2]));
        sweep(&dir, &dir.join(names[2]), size);
        assert!(!left(names[0]) && left(names[2]), "the least recently used goes first");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
