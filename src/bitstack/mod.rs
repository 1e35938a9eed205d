//! BitStack (Wang et al., "BitStack: Any-Size Compression of Large Language Models in Variable
//! Memory Environments", ICLR 2025): weights whose size follows the memory the device has free.
//!
//! Each linear of the decoder layers is decomposed into residual blocks of about one bit per
//! weight (`decompose.rs`); all blocks of the model are sorted by how much they lower the
//! calibration loss into one stack (`make.rs`), stored in that order in one file (`file.rs`).
//! At run time a prefix of the stack is held (`BitStack`): as many blocks as the memory budget
//! allows, grown or shrunk while the engine runs (`resize`). The linears then run on the blocks
//! (`StackLinears`): decode multiplies the sign bits directly (`kernels::sign_blocks`), prefill
//! rebuilds panels of rows for the GEMM. Embeddings, norms and the LM head stay as the base
//! model stores them.

pub mod decompose;
pub mod file;
mod low_rank;
pub mod make;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use decompose::Block;
use file::StackFile;

use crate::error::{Error, Result};
use crate::kernels::{self, sign_blocks};
use crate::model::transformer::LinearExecutor;
use crate::model::{LinearGroup, Transformer};
use crate::util::{Progress, Silent};

/// How much of the stack to hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Megabytes (10^6 bytes) for all the model's weights: embeddings, norms and LM head as the
    /// base model holds them, the input scales, and as many blocks as fit.
    MemoryMb(f64),
    /// The first n blocks of the stack.
    Blocks(usize),
    /// Every block.
    All,
}

/// A linear's blocks as held now.
struct HeldLinear {
    rows: usize,
    cols: usize,
    rank: usize,
    inv_scale: Vec<f32>,
    blocks: Vec<Block>,
}

/// The prefix of the stack held in memory.
pub struct Held {
    linears: Vec<HeldLinear>,
    /// (layer, group) -> the index of its first linear
    first: HashMap<(usize, LinearGroup), usize>,
    /// Blocks of the stack held (a prefix).
    pub blocks: usize,
}

/// What a stack holds, for reports and the server's admin endpoint.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StackSize {
    pub blocks: usize,
    pub total_blocks: usize,
    /// Bytes of the blocks and scales held.
    pub stack_bytes: u64,
    /// Bytes of the rest of the model's weights (embeddings, norms, LM head).
    pub other_bytes: u64,
    /// Bits per weight of the decoder's linears as held (blocks and scales).
    pub bits_per_weight: f64,
}

/// A stack file attached to a model, holding a prefix of its blocks.
pub struct BitStack {
    file: StackFile,
    other_bytes: u64,
    linear_weights: u64,
    held: RwLock<Held>,
    /// Counts resizes that changed the blocks held (caches made before are stale).
    version: AtomicU64,
}

impl BitStack {
    /// Opens `path` for `model` and loads the blocks `budget` allows.
    pub fn open(path: &Path, model: &Transformer, budget: Budget, progress: &dyn Progress) -> Result<BitStack> {
        let file = StackFile::open(path)?;
        let ids = make::linear_ids(model);
        let h = &file.header;
        if h.num_layers != model.layers.len() || h.linears.len() != ids.len() || h.hidden_size != model.config.hidden_size {
            return Err(Error::Input(format!(
                "{}: a stack for a model of {} layers x {} linears (hidden size {}), not this one ({} layers x {}, hidden size {}); make one with `llm-npu bitstack`",
                path.display(),
                h.num_layers,
                h.linears.len() / h.num_layers.max(1),
                h.hidden_size,
                model.layers.len(),
                ids.len() / model.layers.len().max(1),
                model.config.hidden_size
            )));
        }
        let mut first = HashMap::new();
        let mut linears = Vec::with_capacity(ids.len());
        for (n, (&(layer, group, index), e)) in ids.iter().zip(&h.linears).enumerate() {
            let lin = model.layers[layer].linears(group)[index];
            if (e.layer, e.group, e.index, e.rows, e.cols) != (layer, group.index(), index, lin.out_features(), lin.in_features()) {
                return Err(Error::Input(format!("{}: linear {n} is {}x{} at layer {} group {} in the stack, but the model's layer {layer} {} is {}x{}", path.display(), e.rows, e.cols, e.layer, e.group, group.name(), lin.out_features(), lin.in_features())));
            }
            if index == 0 {
                first.insert((layer, group), n);
            }
            let inv_scale = file.scales[n].iter().map(|s| 1.0 / s).collect();
            linears.push(HeldLinear { rows: e.rows, cols: e.cols, rank: e.rank, inv_scale, blocks: Vec::new() });
        }
        if h.model_fingerprint != make::model_fingerprint(model) {
            return Err(Error::Input(format!("{}: made from other weights than this model's (same shapes, different values); make a stack of this model with `llm-npu bitstack`", path.display())));
        }
        let linear_weights: u64 = h.linears.iter().map(|l| (l.rows * l.cols) as u64).sum();
        let linear_bytes: usize = ids.iter().map(|&(l, g, i)| model.layers[l].linears(g)[i].weight.memory_bytes()).sum();
        let other_bytes = (model.weight_memory_bytes() - linear_bytes) as u64;
        let stack = BitStack { file, other_bytes, linear_weights, held: RwLock::new(Held { linears, first, blocks: 0 }), version: AtomicU64::new(0) };
        stack.resize_with(budget, progress)?;
        Ok(stack)
    }

    /// Changes whenever a resize changes the blocks held.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    fn scale_bytes(&self) -> u64 {
        self.file.header.linears.iter().map(|l| 4 * l.cols as u64).sum()
    }

    /// The number of blocks `budget` allows.
    pub fn blocks_for(&self, budget: Budget) -> Result<usize> {
        let total = self.file.header.blocks.len();
        let required = self.file.header.required_blocks();
        let n = match budget {
            Budget::All => total,
            Budget::Blocks(n) => n.min(total),
            Budget::MemoryMb(mb) => {
                let budget = (mb * 1e6) as u64;
                let fixed = self.other_bytes + self.scale_bytes();
                // The largest prefix that fits (prefix sizes grow with n).
                let (mut lo, mut hi) = (0, total);
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    if fixed + self.file.prefix_bytes(mid) <= budget {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                if lo < required {
                    let need = fixed + self.file.prefix_bytes(required);
                    return Err(Error::Input(format!("--memory {mb} MB is below the smallest model this stack makes: {:.1} MB ({:.1} MB for embeddings, norms and LM head, {:.1} MB for one block per matrix)", need as f64 / 1e6, self.other_bytes as f64 / 1e6, (need - self.other_bytes) as f64 / 1e6)));
                }
                lo
            }
        };
        if n < required {
            return Err(Error::Input(format!("a model needs at least the first {required} blocks of the stack (one per matrix), got {n}")));
        }
        Ok(n)
    }

    /// Grows or shrinks the held stack to what `budget` allows. Growing reads the next blocks
    /// from the file; shrinking frees the last ones. Inference waits while this runs.
    pub fn resize(&self, budget: Budget) -> Result<StackSize> {
        self.resize_with(budget, &Silent)
    }

    /// `resize`, reporting the blocks read to `progress`.
    pub fn resize_with(&self, budget: Budget, progress: &dyn Progress) -> Result<StackSize> {
        let n = self.blocks_for(budget)?;
        let held = self.held.read().unwrap_or_else(|e| e.into_inner()).blocks;
        // Read before taking the write lock, so inference runs on while the file is read.
        let new = if n > held { self.file.read_blocks(held..n, progress)? } else { Vec::new() };
        let mut h = self.held.write().unwrap_or_else(|e| e.into_inner());
        if h.blocks != held {
            return Err(Error::Input("the stack was resized by another request meanwhile; try again".into()));
        }
        for (k, b) in (held..n).zip(new) {
            h.linears[self.file.header.blocks[k].linear].blocks.push(b);
        }
        for k in (n..held).rev() {
            // The stack order keeps each linear's levels in order, so block k is its linear's last.
            let linear = &mut h.linears[self.file.header.blocks[k].linear];
            linear.blocks.pop();
            linear.blocks.shrink_to_fit();
        }
        if h.blocks != n {
            self.version.fetch_add(1, Ordering::SeqCst);
        }
        h.blocks = n;
        drop(h);
        if n < held {
            release_freed_memory();
        }
        Ok(self.size())
    }

    pub fn size(&self) -> StackSize {
        let blocks = self.held.read().unwrap_or_else(|e| e.into_inner()).blocks;
        let stack_bytes = self.scale_bytes() + self.file.prefix_bytes(blocks);
        StackSize {
            blocks,
            total_blocks: self.file.header.blocks.len(),
            stack_bytes,
            other_bytes: self.other_bytes,
            bits_per_weight: 8.0 * stack_bytes as f64 / self.linear_weights as f64,
        }
    }

    /// The blocks held now, for a forward pass (a resize waits for it to finish).
    pub fn held(&self) -> RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands memory freed by a shrink back to the system. glibc keeps freed blocks for reuse: blocks
/// under its mmap threshold, and larger ones too once freeing an mmapped block has raised that
/// threshold (measured: shrinking a TinyLlama stack from 1,151 to 175 MB freed no resident
/// memory without this).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The decoder's linears on the held blocks.
pub struct StackLinears<'a> {
    pub model: &'a Transformer,
    pub held: &'a Held,
}

impl LinearExecutor for StackLinears<'_> {
    fn run(&self, layer: usize, group: LinearGroup, input: &[f32], m: usize, outputs: &mut [&mut [f32]]) -> Result<()> {
        let first = self.held.first[&(layer, group)];
        for (i, (lin, y)) in self.model.layers[layer].linears(group).into_iter().zip(outputs.iter_mut()).enumerate() {
            let h = &self.held.linears[first + i];
            // W x = W' (x / s): the input divided by the scale the blocks were made with.
            let xs: Vec<f32> = input.chunks_exact(h.cols).flat_map(|row| row.iter().zip(&h.inv_scale).map(|(&x, &r)| x * r)).collect();
            h.forward(&xs, m, y, group.adds_to_residual());
            if let Some(b) = &lin.bias {
                kernels::ops::add_bias(y, b.data());
            }
        }
        Ok(())
    }
}

impl HeldLinear {
    /// y = xs W'^T (or y += that), W' the sum of the held blocks.
    fn forward(&self, xs: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
        let factors: Vec<decompose::BlockF32> = self.blocks.iter().map(Block::to_f32).collect();
        let views: Vec<sign_blocks::SignBlock> = self.blocks.iter().zip(&factors).map(|(b, f)| f.view(b, self.rows, self.cols, self.rank)).collect();
        if m >= kernels::SMALL_BATCH {
            return kernels::linear_by_panels(xs, m, self.cols, self.rows, y, accumulate, |r0, panel| views.iter().for_each(|v| v.add_dense_rows(r0, panel)));
        }
        if !accumulate {
            y.fill(0.0);
        }
        for (x, y) in xs.chunks_exact(self.cols).zip(y.chunks_exact_mut(self.rows)) {
            sign_blocks::sign_blocks_matvec(&views, x, y);
        }
    }
}

/// Where the engine gets its stack from.
#[derive(Debug, Clone)]
pub struct BitStackOptions {
    pub path: std::path::PathBuf,
    pub budget: Budget,
}

/// Opens the stack `opts` names for `model`.
pub fn attach(model: &Transformer, opts: &BitStackOptions, progress: &dyn Progress) -> Result<Arc<BitStack>> {
    Ok(Arc::new(BitStack::open(&opts.path, model, opts.budget, progress)?))
}
