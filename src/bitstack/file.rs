//! The stack file: every block of every matrix in one sorted stack, so that the best blocks for
//! any memory budget are a prefix of the file and loading more is reading further.
//!
//! ```text
//! "LNPUBSTK"  u32 version  u32 0  u64 header length
//! header      JSON: the model's shape, each linear (layer, group, index, rows, cols, rank) and
//!             the stack order (linear, level, checksum of the block's bytes)
//! scales      per linear, in header order: s, cols f32
//! blocks      in stack order: sign bits (u64), U (f16), V (f16), padded to 8 bytes
//! ```
//!
//! All numbers little-endian. Every size in the header is checked against the file before
//! anything is allocated, and every block read is checked against its checksum, so a cut or
//! damaged file gives one line naming what is wrong, never a panic or a wrong model.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;
use serde::{Deserialize, Serialize};

use super::decompose::Block;
use crate::error::{Error, Result};
use crate::kernels::sign_blocks::SignBlock;
use crate::util::{checksum, Progress};

const MAGIC: &[u8; 8] = b"LNPUBSTK";
const VERSION: u32 = 1;
/// A header larger than this is not one we wrote (a 7B model's is ~2 MB).
const MAX_HEADER: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinearEntry {
    pub layer: usize,
    /// `LinearGroup::index()`: 0 q/k/v, 1 o, 2 gate/up, 3 down
    pub group: usize,
    /// position in the group (q, k, v = 0, 1, 2)
    pub index: usize,
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// the scaled residual's share of energy left after each block (decomposition record)
    #[serde(default)]
    pub residual: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BlockEntry {
    pub linear: usize,
    pub level: usize,
    pub checksum: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// What the scales and the order were measured on.
    pub calibration: String,
    /// Of the scales section.
    #[serde(default)]
    pub scales_checksum: u64,
    /// `model_fingerprint` of the model the stack was made from.
    pub model_fingerprint: u64,
    pub linears: Vec<LinearEntry>,
    /// Stack order: the first blocks of every linear come first (a model needs them all),
    /// then the rest, most valuable first.
    pub blocks: Vec<BlockEntry>,
}

impl Header {
    /// Bytes of one block of `linear` in the file (padded to 8).
    pub fn block_bytes(&self, linear: usize) -> usize {
        let l = &self.linears[linear];
        Block::bytes_for(l.rows, l.cols, l.rank).next_multiple_of(8)
    }

    /// Blocks every model needs: the first of each linear (they lead the stack).
    pub fn required_blocks(&self) -> usize {
        self.linears.len()
    }
}

/// An opened stack file: header and scales read and checked, blocks read on demand.
pub struct StackFile {
    pub path: PathBuf,
    pub header: Header,
    pub scales: Vec<Vec<f32>>,
    /// File offset of each block in stack order, and of the end.
    offsets: Vec<u64>,
}

fn encode_block(b: &Block, padded: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(padded);
    b.signs.iter().for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
    b.u.iter().chain(&b.v).for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    out.resize(padded, 0);
    out
}

/// Writes a stack: `scales[i]` and `blocks[i]` (all levels, in level order) of `header.linears[i]`,
/// in the order `header.blocks` gives (their checksums are filled in here).
pub fn write(path: &Path, mut header: Header, scales: &[Vec<f32>], blocks: &[Vec<Block>]) -> Result<()> {
    let encoded: Vec<Vec<u8>> = header.blocks.iter().map(|e| encode_block(&blocks[e.linear][e.level], header.block_bytes(e.linear))).collect();
    for (e, bytes) in header.blocks.iter_mut().zip(&encoded) {
        e.checksum = checksum(bytes);
    }
    let scale_bytes: Vec<u8> = scales.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    header.scales_checksum = checksum(&scale_bytes);
    let json = serde_json::to_vec(&header).map_err(|e| Error::Input(format!("bitstack header: {e}")))?;
    let tmp = path.with_extension("partial");
    let io = |e| Error::io(&tmp, e);
    let mut f = BufWriter::new(File::create(&tmp).map_err(io)?);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&VERSION.to_le_bytes()).map_err(io)?;
    f.write_all(&0u32.to_le_bytes()).map_err(io)?;
    f.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&json).map_err(io)?;
    f.write_all(&vec![0u8; json.len().next_multiple_of(8) - json.len()]).map_err(io)?;
    f.write_all(&scale_bytes).map_err(io)?;
    encoded.iter().try_for_each(|b| f.write_all(b)).map_err(io)?;
    f.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    // Written whole, then renamed: a crash never leaves a cut file under the real name.
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl StackFile {
    pub fn open(path: &Path) -> Result<StackFile> {
        let corrupt = |msg: String| Error::corrupt(path, msg);
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut fixed = [0u8; 24];
        f.read_exact(&mut fixed).map_err(|_| corrupt(format!("{len} bytes: too short for a BitStack file")))?;
        if &fixed[..8] != MAGIC {
            return Err(corrupt("not a BitStack file (made by `llm-npu bitstack`)".into()));
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(corrupt(format!("BitStack file version {version}; this build reads version {VERSION}")));
        }
        let header_len = u64::from_le_bytes(fixed[16..24].try_into().unwrap());
        if header_len > MAX_HEADER || 24 + header_len > len {
            return Err(corrupt(format!("header of {header_len} bytes in a file of {len}: cut or damaged")));
        }
        let mut json = vec![0u8; header_len as usize];
        f.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
        let header: Header = serde_json::from_slice(&json).map_err(|e| corrupt(format!("header: {e}")))?;
        let offset = 24 + header_len.next_multiple_of(8);
        check_header(&header).map_err(corrupt)?;
        // Sizes in u64 with checked arithmetic: a hostile header cannot overflow into a small number.
        let scale_bytes = header.linears.iter().try_fold(0u64, |t, l| t.checked_add(4 * l.cols as u64)).ok_or_else(|| corrupt("sizes overflow".into()))?;
        let mut offsets = Vec::with_capacity(header.blocks.len() + 1);
        let mut end = offset.checked_add(scale_bytes).ok_or_else(|| corrupt("sizes overflow".into()))?;
        for e in &header.blocks {
            offsets.push(end);
            end = end.checked_add(header.block_bytes(e.linear) as u64).ok_or_else(|| corrupt("sizes overflow".into()))?;
        }
        offsets.push(end);
        if end != len {
            return Err(corrupt(format!("{len} bytes, but its header describes {end}: {}", if end > len { "the file is cut short" } else { "trailing bytes" })));
        }
        f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(path, e))?;
        let mut bytes = vec![0u8; scale_bytes as usize];
        f.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
        if checksum(&bytes) != header.scales_checksum {
            return Err(corrupt("the input scales are damaged: checksum mismatch".into()));
        }
        let mut values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        let scales: Vec<Vec<f32>> = header.linears.iter().map(|l| values.by_ref().take(l.cols).collect()).collect();
        if scales.iter().flatten().any(|x| !x.is_finite() || *x <= 0.0) {
            return Err(corrupt("input scales must be positive and finite".into()));
        }
        Ok(StackFile { path: path.to_path_buf(), header, scales, offsets })
    }

    /// Bytes of the first `n` blocks of the stack.
    pub fn prefix_bytes(&self, n: usize) -> u64 {
        self.offsets[n] - self.offsets[0]
    }

    /// Blocks `range` of the stack, read from the file (which may have been replaced since it
    /// was opened: every block is checked against the header's checksum).
    pub fn read_blocks(&self, range: std::ops::Range<usize>, progress: &dyn Progress) -> Result<Vec<Block>> {
        let (start, total) = (self.offsets[range.start], self.offsets[range.end] - self.offsets[range.start]);
        progress.start("reading BitStack blocks", "bytes", total);
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(self.offsets[range.start])).map_err(|e| Error::io(&self.path, e))?;
        let mut f = std::io::BufReader::with_capacity(1 << 20, f);
        let mut out = Vec::with_capacity(range.len());
        for k in range.clone() {
            let e = self.header.blocks[k];
            let l = &self.header.linears[e.linear];
            let mut bytes = vec![0u8; self.header.block_bytes(e.linear)];
            f.read_exact(&mut bytes).map_err(|_| Error::corrupt(&self.path, format!("block {k} is cut short (the file changed after it was opened?)")))?;
            if checksum(&bytes) != e.checksum {
                return Err(Error::corrupt(&self.path, format!("block {k} (layer {} linear {} level {}) is damaged: checksum mismatch", l.layer, l.index, e.level)));
            }
            let words = l.rows * SignBlock::words_per_row(l.cols);
            let (signs, rest) = bytes.split_at(words * 8);
            let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]);
            let (u, v) = rest.split_at(2 * l.rows * l.rank);
            let block = Block {
                signs: signs.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect(),
                u: u.chunks_exact(2).map(half).collect(),
                v: v[..2 * l.rank * l.cols].chunks_exact(2).map(half).collect(),
            };
            if block.u.iter().chain(&block.v).any(|x| !x.is_finite()) {
                return Err(Error::corrupt(&self.path, format!("block {k}: factors are not finite")));
            }
            out.push(block);
            progress.set(self.offsets[k + 1] - start, total);
        }
        progress.finish();
        Ok(out)
    }
}

/// The header's promises that the rest of the code relies on.
fn check_header(h: &Header) -> std::result::Result<(), String> {
    if h.linears.is_empty() {
        return Err("no linear layers".into());
    }
    for (i, l) in h.linears.iter().enumerate() {
        let plausible = (1..=1 << 20).contains(&l.rows) && (1..=1 << 20).contains(&l.cols) && l.rank >= 1 && l.rank <= l.rows.min(l.cols) && l.group < 4 && l.index < 3 && l.layer < h.num_layers;
        if !plausible {
            return Err(format!("linear {i}: impossible shape (layer {}, group {}, {}x{} rank {})", l.layer, l.group, l.rows, l.cols, l.rank));
        }
    }
    // Each linear's levels appear in order 0, 1, 2, ... and every level 0 leads the stack, so
    // any prefix that holds the first blocks is a model.
    let mut next = vec![0usize; h.linears.len()];
    for (k, e) in h.blocks.iter().enumerate() {
        if e.linear >= h.linears.len() || e.level != next[e.linear] {
            return Err(format!("block {k}: out of order (linear {}, level {})", e.linear, e.level));
        }
        if (e.level == 0) != (k < h.linears.len()) {
            return Err(format!("block {k}: the first block of every linear must lead the stack"));
        }
        next[e.linear] += 1;
    }
    if next.contains(&0) {
        return Err("a linear has no blocks".into());
    }
    Ok(())
}
