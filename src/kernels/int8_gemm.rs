//! W8A8 integer GEMM, the accelerator's matmul: y[m, n] = sum_k x[m, k] * w[n, k] with int8
//! inputs and exact int32 results.
//!
//! Kernels, chosen at run time (best first): AMX (`tdpbusd` on 16x64-byte tiles, see
//! `kernels::amx`), AVX-512 VNNI (512-bit `vpdpbusd`), 256-bit VNNI in
//! its EVEX (AVX512-VL) and VEX (AVX-VNNI) encodings, AVX2, portable. All read the same weight
//! layout, packed once at load: panels of `NR_I8` = 32 output rows, k-major in groups of 4 bytes
//! (`[k/4][32][4]`), so one 512-bit load holds 16 outputs x 4 k, and 16 group rows at a stride
//! of 128 bytes are an AMX tile of 16 outputs x 64 k. `vpdpbusd` (and `tdpbusd`) multiply *unsigned*
//! by signed bytes, so the VNNI kernels see activations offset by +128 (x + 128 in 1..=255) and
//! subtract 128 * sum_k w[n, k] at the end. AVX2 has no such instruction; `vpmaddubsw` adds two
//! u8 x i8 products in saturating i16, so it gets signed activations and the sign trick
//! (|x| times w with x's sign: both within +-127, a pair sums to at most 32258 < 32767, exact).

use rayon::prelude::*;
use std::sync::OnceLock;

use super::aligned::{AlignedVec, Stored};

/// Output rows per weight panel.
pub const NR_I8: usize = 32;
/// Weight rows per parallel task (a multiple of NR_I8).
const NC: usize = 4 * NR_I8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Int8Kernel {
    Portable,
    Avx2,
    /// 256-bit VNNI, VEX encoding (Intel Alder Lake and later client CPUs).
    AvxVnni,
    /// 256-bit VNNI, EVEX encoding (any CPU with AVX512-VNNI + VL).
    Avx512VlVnni,
    /// 512-bit VNNI.
    Avx512Vnni,
    /// AMX tiles for prefill (32 tokens x 32 outputs per call); one-token products (decode) take
    /// the 512-bit VNNI kernel.
    Amx,
}

impl Int8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Portable => "portable",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx512VlVnni => "avx512vl-vnni",
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::Amx => "amx",
        }
    }

    /// Tokens per microkernel tile for an `m`-row product: a full tile for prefill, one row at a
    /// time for decode (a 12-row tile would waste 11/12 of the work on one row).
    fn mr(self, m: usize) -> usize {
        match self {
            Int8Kernel::Avx512Vnni | Int8Kernel::Amx if m <= 2 => 1,
            Int8Kernel::Amx => AMX_MR,
            Int8Kernel::Avx512Vnni | Int8Kernel::Portable => 12,
            Int8Kernel::AvxVnni | Int8Kernel::Avx512VlVnni => 3,
            Int8Kernel::Avx2 => 2,
        }
    }

    /// Whether the kernel reads activations offset to unsigned (x + 128).
    fn unsigned_acts(self) -> bool {
        matches!(self, Int8Kernel::AvxVnni | Int8Kernel::Avx512VlVnni | Int8Kernel::Avx512Vnni | Int8Kernel::Amx)
    }

    /// Whether an `mr`-token activation panel holds whole token rows (`[mr][k padded to 64]`,
    /// AMX's A tiles) rather than groups of 4 k (`[k4/4][mr][4]`, a broadcast per token).
    fn row_panels(self, mr: usize) -> bool {
        self == Int8Kernel::Amx && mr == AMX_MR
    }

    /// True when this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Int8Kernel::Portable => true,
                Int8Kernel::Avx2 => has!("avx2"),
                Int8Kernel::AvxVnni => has!("avxvnni") && has!("avx2"),
                Int8Kernel::Avx512VlVnni => has!("avx512vnni") && has!("avx512vl") && has!("avx512f"),
                Int8Kernel::Avx512Vnni => has!("avx512vnni") && has!("avx512bw") && has!("avx512f"),
                Int8Kernel::Amx => Int8Kernel::Avx512Vnni.is_supported() && super::amx::available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Kernel::Portable
        }
    }

    pub const ALL: [Int8Kernel; 6] = [Int8Kernel::Portable, Int8Kernel::Avx2, Int8Kernel::AvxVnni, Int8Kernel::Avx512VlVnni, Int8Kernel::Avx512Vnni, Int8Kernel::Amx];
}

/// The best supported kernel (detected once). `LLM_NPU_INT8=<name>` picks another supported one.
pub fn best_kernel() -> Int8Kernel {
    static K: OnceLock<Int8Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        if let Ok(name) = std::env::var("LLM_NPU_INT8") {
            match Int8Kernel::ALL.into_iter().find(|k| k.name() == name) {
                Some(k) if k.is_supported() => return k,
                Some(_) => eprintln!("warning: LLM_NPU_INT8={name}: not supported on this CPU; using the best supported kernel"),
                None => eprintln!(
                    "warning: LLM_NPU_INT8={name}: unknown kernel (known: {}); using the best supported kernel",
                    Int8Kernel::ALL.map(|k| k.name()).join(", ")
                ),
            }
        }
        Int8Kernel::ALL.into_iter().rev().find(|k| k.is_supported()).unwrap_or(Int8Kernel::Portable)
    })
}

/// int8 weights [n, k] in the kernels' panel layout, with per-row offsets for the unsigned activations.
pub struct PackedI8Weights {
    pub n: usize,
    pub k: usize,
    /// k rounded up to a multiple of 4 (zero padding).
    k4: usize,
    /// [n / NR_I8 panels][k4 / 4][NR_I8][4], then AMX's slack (`SLACK_BYTES`)
    data: Stored<i8>,
    /// -128 x sum_k w[r, k] per output row (padded to whole panels with 0): what the
    /// activations' +128 adds to a product, taken back (AMX results start from it; 64-byte
    /// aligned, so a panel's 32 are one bias row).
    offsets: Stored<i32>,
}

/// Bytes of zeros past the last panel: AMX reads whole 64-k steps, up to 15 groups past the last
/// panel's end (their products meet zero activations).
const SLACK_BYTES: usize = 16 * NR_I8 * 4;

impl PackedI8Weights {
    /// Weights must lie in -127..=127, as symmetric quantization gives: the AVX2 kernel's sign
    /// trick cannot negate -128.
    pub fn new(w: &[i8], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        Self::from_rows(n, k, || (), |_, r, out| out.copy_from_slice(&w[r * k..(r + 1) * k])).0
    }

    /// Packs rows made one at a time: `fill_row(scratch, r, out)` writes row r's k weights
    /// (in -127..=127) into `out` and returns what the caller wants kept per row (a scale), in
    /// row order. Each row is made where it is packed (quantizing a billion weights at load
    /// reads them once, with no plain int8 copy of the matrix); `scratch()` makes one per task.
    pub fn from_rows<S, T: Send>(
        n: usize,
        k: usize,
        scratch: impl Fn() -> S + Sync + Send,
        fill_row: impl Fn(&mut S, usize, &mut [i8]) -> T + Sync + Send,
    ) -> (Self, Vec<T>) {
        let k4 = k.next_multiple_of(4);
        let panels = n.div_ceil(NR_I8);
        let mut data = AlignedVec::filled(0i8, panels * k4 * NR_I8 + SLACK_BYTES);
        let mut offsets = AlignedVec::filled(0i32, panels * NR_I8);
        // k = 0: rows of nothing, offsets 0 (chunks of 0 would panic).
        let kept: Vec<Vec<T>> = data[..panels * k4 * NR_I8]
            .par_chunks_mut((k4 * NR_I8).max(1))
            .zip(offsets.par_chunks_mut(NR_I8))
            .enumerate()
            .map_init(
                // The row is made in a buffer of whole 4-byte groups (the padding stays 0).
                || (scratch(), vec![0i8; k4]),
                |(s, row), (p, (panel, offsets))| {
                    let rows = NR_I8.min(n - p * NR_I8);
                    let mut kept = Vec::with_capacity(rows);
                    for r in 0..rows {
                        kept.push(fill_row(s, p * NR_I8 + r, &mut row[..k]));
                        assert!(!row.contains(&i8::MIN), "int8 weights must lie in -127..=127");
                        for (g, group) in row.chunks_exact(4).enumerate() {
                            panel[(g * NR_I8 + r) * 4..][..4].copy_from_slice(group);
                        }
                        offsets[r] = -128 * row.iter().map(|&v| v as i32).sum::<i32>();
                    }
                    kept
                },
            )
            .collect();
        (PackedI8Weights { n, k, k4, data: Stored::Owned(data), offsets: Stored::Owned(offsets) }, kept.into_iter().flatten().collect())
    }

    /// The packed weights and their offsets as stored, to be kept in a file
    /// (`quant::weight_cache`) and given back to `from_parts`.
    pub fn parts(&self) -> (&Stored<i8>, &Stored<i32>) {
        (&self.data, &self.offsets)
    }

    /// [n, k] weights from the parts `parts` gave; None unless their lengths fit n and k (the
    /// values themselves are trusted: every one is some int8 or int32, so the kernels stay in
    /// bounds whatever they are).
    pub fn from_parts(n: usize, k: usize, data: Stored<i8>, offsets: Stored<i32>) -> Option<Self> {
        let (k4, panels) = (k.next_multiple_of(4), n.div_ceil(NR_I8));
        (data.len() == panels.checked_mul(k4)?.checked_mul(NR_I8)?.checked_add(SLACK_BYTES)? && offsets.len() == panels * NR_I8).then_some(PackedI8Weights { n, k, k4, data, offsets })
    }

    /// The weights back in plain [n][k] rows.
    pub fn unpack(&self) -> Vec<i8> {
        let mut w = vec![0i8; self.n * self.k];
        for (r, row) in w.chunks_exact_mut(self.k).enumerate() {
            let panel = self.panel(r / NR_I8);
            for (kk, v) in row.iter_mut().enumerate() {
                *v = panel[(kk / 4) * NR_I8 * 4 + (r % NR_I8) * 4 + kk % 4];
            }
        }
        w
    }

    /// Bytes held (weights + offsets).
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.offsets.len() * 4
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.k4 * NR_I8..(p + 1) * self.k4 * NR_I8]
    }
}

/// Activations packed for one kernel: panels of MR tokens, `[k4/4][MR][4]` bytes (or whole rows,
/// `[MR][kp]`, for AMX), offset to unsigned for the VNNI and AMX kernels; padding is the zero
/// activation, except in AMX rows, where it is the byte 0: past k4 it meets the next groups'
/// weights, not zeros. Several weights reading the same input (q/k/v) share one packing.
pub struct PackedI8Acts {
    data: AlignedVec<u8>,
    mr: usize,
    /// Bytes of k per token in a panel: k4, or `amx::row_bytes(k4)`.
    kp: usize,
    m: usize,
    k: usize,
    kernel: Int8Kernel,
}

impl PackedI8Acts {
    /// Packs int8 activations [m, k].
    pub fn new(x: &[i8], m: usize, k: usize, kernel: Int8Kernel) -> Self {
        assert_eq!(x.len(), m * k);
        Self::pack(m, k, kernel, |i, offset, row| {
            for (o, &v) in row.iter_mut().zip(&x[i * k..(i + 1) * k]) {
                *o = (v as u8).wrapping_add(offset);
            }
        })
    }

    /// Quantizes f32 activations [m, k] with a static scale (clip to +-127, ties to even) while
    /// packing them: one pass, no intermediate int8 matrix.
    pub fn quantized(x: &[f32], m: usize, k: usize, scale: f32, kernel: Int8Kernel) -> Self {
        assert_eq!(x.len(), m * k);
        let inv = 1.0 / scale;
        Self::pack(m, k, kernel, |i, offset, row| super::quantize::quantize_row_offset(&x[i * k..(i + 1) * k], inv, offset, row))
    }

    /// `fill_row(i, offset, row)` writes token i's k activations, plus `offset`, into `row`; each
    /// row is then scattered into its panel four bytes at a time.
    fn pack(m: usize, k: usize, kernel: Int8Kernel, fill_row: impl Fn(usize, u8, &mut [u8]) + Sync) -> Self {
        let (mr, k4) = (kernel.mr(m), k.next_multiple_of(4));
        let offset = if kernel.unsigned_acts() { 128u8 } else { 0 };
        if kernel.row_panels(mr) {
            let kp = super::amx::row_bytes(k4);
            let mut data = AlignedVec::filled(0u8, m.div_ceil(mr) * kp * mr);
            data.par_chunks_mut((kp * mr).max(1)).enumerate().for_each(|(p, panel)| {
                for (i, row) in panel.chunks_exact_mut(kp).take(mr.min(m - p * mr)).enumerate() {
                    fill_row(p * mr + i, offset, &mut row[..k]);
                }
            });
            return PackedI8Acts { data, mr, kp, m, k, kernel };
        }
        let mut data = AlignedVec::filled(offset, m.div_ceil(mr) * k4 * mr);
        // The row buffer's tail beyond k stays `offset`: the zero activation.
        data.par_chunks_mut((k4 * mr).max(1)).enumerate().for_each_init(
            || vec![offset; k4],
            |row, (p, panel)| {
                for i in 0..mr.min(m - p * mr) {
                    fill_row(p * mr + i, offset, &mut row[..k]);
                    for (g, four) in row.chunks_exact(4).enumerate() {
                        let at = g * mr * 4 + i * 4;
                        panel[at..at + 4].copy_from_slice(four);
                    }
                }
            },
        );
        PackedI8Acts { data, mr, kp: k4, m, k, kernel }
    }

    fn panel(&self, p: usize) -> &[u8] {
        &self.data[p * self.kp * self.mr..(p + 1) * self.kp * self.mr]
    }
}

/// y[m, n] = x[m, k] . w[n, k]^T exactly, in int32, with `kernel` (which must be supported).
/// Activations must lie in -127..=127 (symmetric quantization never produces -128).
pub fn gemm_i8(kernel: Int8Kernel, x: &[i8], m: usize, w: &PackedI8Weights, y: &mut [i32]) {
    assert_eq!(y.len(), m * w.n);
    gemm_i8_with(kernel, x, m, w, &I32Out { y: y.as_mut_ptr(), ld: w.n });
}

/// Consumes the exact int32 results tile by tile while they are hot in L1 (an accelerator's
/// fused epilogue: dequantize, bias, residual), instead of a full int32 matrix and a second pass.
pub trait Epilogue: Sync {
    /// `acc` holds `tokens` rows of `cols` results (row stride `ld`) for output rows
    /// row0..row0+tokens and columns col0..col0+cols.
    ///
    /// # Safety
    /// Called concurrently from several threads, each (row, column) region exactly once: an
    /// implementation writing through a shared pointer relies on that.
    unsafe fn tile(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32], ld: usize);
}

/// Plain int32 output: y[m, n].
struct I32Out {
    y: *mut i32,
    ld: usize,
}
// SAFETY: tiles are disjoint (Epilogue contract).
unsafe impl Sync for I32Out {}

impl Epilogue for I32Out {
    unsafe fn tile(&self, row0: usize, col0: usize, tokens: usize, cols: usize, acc: &[i32], ld: usize) {
        for t in 0..tokens {
            assert!(acc.len() >= t * ld + cols);
            std::ptr::copy_nonoverlapping(acc.as_ptr().add(t * ld), self.y.add((row0 + t) * self.ld + col0), cols);
        }
    }
}

/// The int8 product x[m, k] . w^T handed to `epilogue` tile by tile (see `gemm_i8`).
pub fn gemm_i8_with(kernel: Int8Kernel, x: &[i8], m: usize, w: &PackedI8Weights, epilogue: &dyn Epilogue) {
    assert!(kernel.is_supported(), "int8 kernel {} is not supported on this CPU", kernel.name());
    gemm_packed_with(&PackedI8Acts::new(x, m, w.k, kernel), w, epilogue);
}

/// The int8 product of packed activations and packed weights, through `epilogue`.
pub fn gemm_packed_with(xp: &PackedI8Acts, w: &PackedI8Weights, epilogue: &dyn Epilogue) {
    gemm_packed_group(xp, &[(w, epilogue)]);
}

/// Several products of the same packed activations (a linear group: q/k/v, gate/up), each
/// through its own epilogue, in one parallel loop over all their column blocks: one wait for
/// the threads instead of one per weight, and the small ones (k, v) balance against the rest.
pub fn gemm_packed_group(xp: &PackedI8Acts, jobs: &[(&PackedI8Weights, &dyn Epilogue)]) {
    let kernel = xp.kernel;
    assert!(kernel.is_supported(), "int8 kernel {} is not supported on this CPU", kernel.name());
    for (w, _) in jobs {
        assert_eq!(xp.k, w.k, "activations and weights disagree on k");
    }
    let blocks: Vec<(usize, usize)> = jobs.iter().enumerate().flat_map(|(i, (w, _))| (0..w.n.div_ceil(NC)).map(move |b| (i, b * NC))).collect();
    blocks.into_par_iter().for_each(|(i, n0)| {
        let (w, epilogue) = jobs[i];
        column_block(xp, w, n0, epilogue);
    });
}

/// Columns n0..n0 + NC of one product, every token.
fn column_block(xp: &PackedI8Acts, w: &PackedI8Weights, n0: usize, epilogue: &dyn Epilogue) {
    let (n, m, kernel) = (w.n, xp.m, xp.kernel);
    #[cfg(target_arch = "x86_64")]
    if kernel.row_panels(xp.mr) {
        return amx_columns(xp, w, n0, epilogue);
    }
    let panels = (NC.min(n - n0)).div_ceil(NR_I8);
    let mut acc = [0i32; MAX_MR * NR_I8];
    for p in 0..m.div_ceil(xp.mr) {
        let tokens = xp.mr.min(m - p * xp.mr);
        for j in 0..panels {
            let col0 = n0 + j * NR_I8;
            let cols = NR_I8.min(n - col0);
            let tile = Tile { x: xp.panel(p).as_ptr(), w: w.panel(col0 / NR_I8).as_ptr(), offsets: w.offsets[col0..].as_ptr(), groups: w.k4 / 4, mr: xp.mr, tokens, cols };
            // SAFETY: the panels hold `groups` k-groups; `acc` holds MAX_MR rows of NR_I8.
            // Each (p, col0) tile is produced by this task alone, as the epilogue requires.
            unsafe {
                tile.run(kernel, acc.as_mut_ptr(), NR_I8);
                epilogue.tile(p * xp.mr, col0, tokens, cols, &acc, NR_I8);
            }
        }
    }
}

/// Tokens per AMX call: two 16-row tiles.
const AMX_MR: usize = 32;
/// 64-k steps per block of `amx_columns`: a token panel's block (32 x 512 bytes) stays in L1
/// while the task's column panels pass over it.
#[cfg(target_arch = "x86_64")]
const AMX_BLOCK_STEPS: usize = 8;

/// One task's columns n0..n0 + NC on AMX, k in blocks: every token panel's block meets every
/// column panel's block, the int32 results waiting in a per-thread buffer between blocks (a
/// token panel's whole k, 32 x 2,048 bytes and more, does not fit L1; tiles reloaded from L2
/// at every step ran at a fifth of the peak). The first block starts from the unsigned offset
/// (-128 x each column's weight sum), so the epilogue reads the finished results in place.
#[cfg(target_arch = "x86_64")]
fn amx_columns(xp: &PackedI8Acts, w: &PackedI8Weights, n0: usize, epilogue: &dyn Epilogue) {
    use super::amx::{self, Start};
    use std::cell::RefCell;
    thread_local! {
        static RESULTS: RefCell<AlignedVec<i32>> = RefCell::new(AlignedVec::filled(0, 0));
    }
    let (n, m) = (w.n, xp.m);
    let panels = NC.min(n - n0).div_ceil(NR_I8);
    let (ldc, token_panels, k_steps) = (panels * NR_I8, m.div_ceil(AMX_MR), w.k4.div_ceil(amx::K_STEP));
    RESULTS.with_borrow_mut(|acc| {
        let len = token_panels * AMX_MR * ldc;
        if acc.len() < len {
            *acc = AlignedVec::filled(0, len);
        }
        if k_steps == 0 {
            // No products, and the offsets are 0.
            acc.fill(0);
        }
        for ks in (0..k_steps).step_by(AMX_BLOCK_STEPS) {
            let steps = AMX_BLOCK_STEPS.min(k_steps - ks);
            for p in 0..token_panels {
                let a = xp.panel(p)[ks * amx::K_STEP..].as_ptr();
                for j in 0..panels {
                    // Groups of this block in panel n0 / NR_I8 + j; the last block may read up to
                    // 15 groups past the panel, which the weights' slack covers.
                    let b = w.data.as_ptr().wrapping_add((n0 / NR_I8 + j) * w.k4 * NR_I8 + ks * 16 * NR_I8 * 4);
                    let start = if ks == 0 { Start::Bias(w.offsets[n0 + j * NR_I8..][..NR_I8].as_ptr()) } else { Start::Accumulate };
                    // SAFETY: AMX is supported (checked by the caller); the activation panel holds
                    // 32 rows of kp >= k_steps * 64 bytes, the weights k_steps * 16 groups from the
                    // panel start (with the slack), `acc` 32 rows of ldc from this tile's corner,
                    // the weights' offsets 32 values (64-byte aligned: NR_I8 int32 are 128 bytes) from j's.
                    unsafe { amx::tile_32x32(a, xp.kp, b, NR_I8 * 4, steps, acc.as_mut_ptr().add(p * AMX_MR * ldc + j * NR_I8), ldc, start) };
                }
            }
        }
        for p in 0..token_panels {
            let tokens = AMX_MR.min(m - p * AMX_MR);
            for j in 0..panels {
                let col0 = n0 + j * NR_I8;
                // SAFETY: this task alone produces columns n0..n0 + NC (Epilogue contract).
                unsafe { epilogue.tile(p * AMX_MR, col0, tokens, NR_I8.min(n - col0), &acc[p * AMX_MR * ldc + j * NR_I8..], ldc) };
            }
        }
    });
}
/// The tallest tile of any kernel.
const MAX_MR: usize = AMX_MR;

/// One microkernel call: `tokens` rows x `cols` columns over `groups` groups of 4 k.
struct Tile {
    x: *const u8,
    w: *const i8,
    /// The columns' `PackedI8Weights::offsets`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    offsets: *const i32,
    groups: usize,
    /// rows of the packed activation panel
    mr: usize,
    tokens: usize,
    cols: usize,
}

impl Tile {
    unsafe fn run(&self, kernel: Int8Kernel, y: *mut i32, ldy: usize) {
        match kernel {
            Int8Kernel::Portable => self.portable(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni if self.mr == 1 => self.avx512_vnni::<1>(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni => self.avx512_vnni::<12>(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Amx if self.mr == 1 => self.avx512_vnni::<1>(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512VlVnni => self.vnni256_evex(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::AvxVnni => self.vnni256_vex(y, ldy),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => self.avx2(y, ldy),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by is_supported"),
        }
    }

    /// Reference: plain integer loops over the packed layouts.
    unsafe fn portable(&self, y: *mut i32, ldy: usize) {
        let mr = self.mr;
        for i in 0..self.tokens {
            for c in 0..self.cols {
                let mut acc = 0i32;
                for g in 0..self.groups {
                    for b in 0..4 {
                        let xv = *self.x.add(g * mr * 4 + i * 4 + b) as i8 as i32;
                        acc += xv * *self.w.add(g * NR_I8 * 4 + c * 4 + b) as i32;
                    }
                }
                *y.add(i * ldy + c) = acc;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn avx512_vnni<const MR: usize>(&self, y: *mut i32, ldy: usize) {
        use std::arch::x86_64::*;
        let mut c0 = [_mm512_setzero_si512(); MR];
        let mut c1 = [_mm512_setzero_si512(); MR];
        for g in 0..self.groups {
            let b0 = _mm512_loadu_si512(self.w.add(g * NR_I8 * 4) as *const __m512i);
            let b1 = _mm512_loadu_si512(self.w.add(g * NR_I8 * 4 + 64) as *const __m512i);
            let xg = self.x.add(g * MR * 4) as *const i32;
            for i in 0..MR {
                let a = _mm512_set1_epi32(xg.add(i).read_unaligned());
                c0[i] = _mm512_dpbusd_epi32(c0[i], a, b0);
                c1[i] = _mm512_dpbusd_epi32(c1[i], a, b1);
            }
        }
        use super::ops::first_lanes;
        let (m0, m1) = (first_lanes(self.cols), first_lanes(self.cols.saturating_sub(16)));
        // Undo the +128 offset: add -128 * sum_k w.
        let s0 = _mm512_maskz_loadu_epi32(m0, self.offsets);
        let s1 = _mm512_maskz_loadu_epi32(m1, self.offsets.add(16));
        for i in 0..MR {
            if i < self.tokens {
                _mm512_mask_storeu_epi32(y.add(i * ldy), m0, _mm512_add_epi32(c0[i], s0));
                _mm512_mask_storeu_epi32(y.add(i * ldy + 16), m1, _mm512_add_epi32(c1[i], s1));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    unsafe fn vnni256_evex(&self, y: *mut i32, ldy: usize) {
        self.vnni256(y, ldy, |acc, a, b| std::arch::x86_64::_mm256_dpbusd_epi32(acc, a, b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn vnni256_vex(&self, y: *mut i32, ldy: usize) {
        self.vnni256(y, ldy, |acc, a, b| std::arch::x86_64::_mm256_dpbusd_avx_epi32(acc, a, b))
    }

    /// 256-bit VNNI body shared by the EVEX and VEX encodings: 3 tokens x 32 outputs (4 registers).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn vnni256(&self, y: *mut i32, ldy: usize, dot: impl Fn(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        const MR: usize = 3;
        let mut c = [[_mm256_setzero_si256(); 4]; MR];
        for g in 0..self.groups {
            let b: [__m256i; 4] = std::array::from_fn(|q| _mm256_loadu_si256(self.w.add(g * NR_I8 * 4 + q * 32) as *const __m256i));
            let xg = self.x.add(g * MR * 4) as *const i32;
            for (i, ci) in c.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(xg.add(i).read_unaligned());
                for q in 0..4 {
                    ci[q] = dot(ci[q], a, b[q]);
                }
            }
        }
        self.store256(&c, y, ldy, true);
    }

    /// AVX2 without VNNI: signed activations, |x| * (w with x's sign) through vpmaddubsw, exact.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(&self, y: *mut i32, ldy: usize) {
        use std::arch::x86_64::*;
        const MR: usize = 2;
        let ones = _mm256_set1_epi16(1);
        let mut c = [[_mm256_setzero_si256(); 4]; MR];
        for g in 0..self.groups {
            let xg = self.x.add(g * MR * 4) as *const i32;
            for (i, ci) in c.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(xg.add(i).read_unaligned());
                let a_abs = _mm256_sign_epi8(a, a);
                for q in 0..4 {
                    let b = _mm256_loadu_si256(self.w.add(g * NR_I8 * 4 + q * 32) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(b, a));
                    ci[q] = _mm256_add_epi32(ci[q], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        self.store256(&c, y, ldy, false);
    }

    /// Stores 256-bit accumulators (4 per token row), plus the columns' offsets when `offset`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store256<const MR: usize>(&self, c: &[[std::arch::x86_64::__m256i; 4]; MR], y: *mut i32, ldy: usize, offset: bool) {
        use std::arch::x86_64::*;
        let mut buf = [0i32; 32];
        for (i, ci) in c.iter().enumerate().take(self.tokens) {
            for q in 0..4 {
                _mm256_storeu_si256(buf.as_mut_ptr().add(q * 8) as *mut __m256i, ci[q]);
            }
            for (col, v) in buf.iter().enumerate().take(self.cols) {
                let fix = if offset { *self.offsets.add(col) } else { 0 };
                *y.add(i * ldy + col) = v + fix;
            }
        }
    }
}

/// Reference for tests and benchmarks: y = x . w^T in plain loops over the unpacked matrices.
pub fn gemm_i8_reference(x: &[i8], m: usize, k: usize, w: &[i8], n: usize) -> Vec<i32> {
    let mut y = vec![0i32; m * n];
    for i in 0..m {
        for r in 0..n {
            y[i * n + r] = (0..k).map(|kk| x[i * k + kk] as i32 * w[r * k + kk] as i32).sum();
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn rand_i8(n: usize, seed: u64) -> Vec<i8> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect()
    }

    #[test]
    fn every_supported_kernel_is_exact_on_random_and_edge_shapes() {
        let shapes = [(1, 1, 1), (1, 4, 32), (1, 2048, 300), (2, 77, 40), (3, 5, 7), (12, 64, 32), (13, 67, 33), (2, 3, 129), (25, 130, 96), (40, 256, 200), (7, 1000, 64), (33, 2048, 64), (64, 192, 96)];
        let mut ran = Vec::new();
        for kernel in Int8Kernel::ALL {
            if !kernel.is_supported() {
                eprintln!("SKIPPED int8 kernel {}: not supported on this CPU", kernel.name());
                continue;
            }
            ran.push(kernel.name());
            for (si, &(m, k, n)) in shapes.iter().enumerate() {
                let x = rand_i8(m * k, si as u64);
                let w = rand_i8(n * k, 1000 + si as u64);
                let packed = PackedI8Weights::new(&w, n, k);
                let mut y = vec![0i32; m * n];
                gemm_i8(kernel, &x, m, &packed, &mut y);
                assert_eq!(y, gemm_i8_reference(&x, m, k, &w, n), "{} at {m}x{k}x{n}", kernel.name());
            }
        }
        assert!(ran.contains(&"portable"));
        eprintln!("int8 kernels checked: {ran:?}");
    }

    #[test]
    fn unpacking_gives_back_the_plain_rows() {
        for (n, k) in [(1, 1), (33, 5), (64, 128), (70, 131)] {
            let w = rand_i8(n * k, (n * k) as u64);
            assert_eq!(PackedI8Weights::new(&w, n, k).unpack(), w, "{n}x{k}");
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // All +-127: the worst case for vpmaddubsw's saturating i16 pairs (AVX2) and for the
        // unsigned offset (VNNI): 127 * 127 * 2 per pair, large sums over k.
        let (m, k, n) = (5, 4096, 40);
        for (xs, ws) in [(127i8, 127i8), (-127, 127), (127, -127), (-127, -127)] {
            let x = vec![xs; m * k];
            let w = vec![ws; n * k];
            let packed = PackedI8Weights::new(&w, n, k);
            for kernel in Int8Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut y = vec![0i32; m * n];
                gemm_i8(kernel, &x, m, &packed, &mut y);
                assert!(y.iter().all(|&v| v == xs as i32 * ws as i32 * k as i32), "{} {xs} {ws}", kernel.name());
            }
        }
    }
}
