//! Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later Xeons): eight tile registers
//! of up to 16 rows x 64 bytes and `tdpbusd`, which multiplies a 16x64 tile of unsigned bytes by
//! a 64x16 tile of signed bytes (stored as 16 rows of 16 columns x 4 k) into a 16x16 int32 tile:
//! 16,384 multiply-adds per instruction, eight times what 512-bit VNNI does in the same cycles.
//!
//! Stable Rust has no AMX intrinsics (`x86_amx_intrinsics` is unstable), so the instructions
//! are written as inline assembly; the tile registers are invisible to the compiler, which never
//! uses them. Linux hands out the 8 KiB tile state only to a process that asks for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), and each thread configures its tiles (`ldtilecfg`)
//! before the first use.

use std::cell::Cell;
use std::sync::OnceLock;

/// True when this CPU has AMX-INT8 and the kernel gave this process the tile state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // Miri runs neither CPUID nor the system call (nor the tiles).
        #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
        {
            // CPUID.(EAX=7,ECX=0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels
            // without AMX support.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
        {
            false
        }
    })
}

/// True when, besides `available()`, the CPU has AMX-BF16 (`tdpbf16ps`). Asked once: CPUID
/// exits to the hypervisor in a VM, and attention asks on every call.
pub fn bf16_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            // CPUID.(EAX=7,ECX=0):EDX bit 22 AMX-BF16.
            available() && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        {
            false
        }
    })
}

/// `ldtilecfg`'s 64-byte operand (palette 1): bytes per row and rows of each tile.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// The eight tiles of palette 1 each 16 rows x 64 bytes, the one shape our kernels use; the
/// entries past the eighth must be 0 (`ldtilecfg` faults otherwise).
#[cfg(target_arch = "x86_64")]
static FULL_TILES: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

thread_local! {
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads the tile configuration on this thread once (it lasts until the thread ends: nothing
/// else in the process changes or releases it).
///
/// # Safety
/// `available()` must be true.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn configure_thread() {
    if !CONFIGURED.get() {
        std::arch::asm!("ldtilecfg [{0}]", in(reg) &FULL_TILES as *const TileConfig, options(nostack, readonly));
        CONFIGURED.set(true);
    }
}

/// Bytes of k per tile step.
pub const K_STEP: usize = 64;

/// The row stride for rows of `k` bytes read by whole steps: k rounded up to 64, plus 64 when
/// that is an even number of cache lines, so that a 16-row tile at a power-of-two k (2,048)
/// does not put all its rows in two of L1's 64 sets. A guard, not a measured gain: it was
/// timed only before the buffers were aligned, when misalignment hid any difference.
pub fn row_bytes(k: usize) -> usize {
    let kp = k.next_multiple_of(K_STEP);
    if (kp / K_STEP) % 2 == 0 {
        kp + K_STEP
    } else {
        kp
    }
}

/// What the results of `tile_32x32` start from.
#[derive(Clone, Copy)]
pub enum Start {
    Zero,
    /// c's own values.
    Accumulate,
    /// 32 int32 (64-byte aligned), one per column, the same for every row: the offset of the
    /// unsigned operand, -128 x the column's sum (the GEMM's weights, attention's keys).
    Bias(*const i32),
}

/// c[32][32] (row stride `ldc` int32) = start + a . b, for 32
/// rows of unsigned bytes (`a`, row stride `lda` bytes, `k_steps` * 64 bytes read per row) and 32
/// columns of signed bytes in VNNI groups (`b`: for each 4 k, a group row of 16 columns x 4 bytes
/// and, 64 bytes on, the next 16 columns; group rows `ldb` bytes apart, 16 per step). The GEMM's
/// weight panels have ldb = 128; attention's keys and values are read in place at their own
/// strides.
///
/// # Safety
/// `available()` must be true; `a` must hold 32 rows of lda >= k_steps * 64 bytes, `b`
/// k_steps * 16 group rows of 128 bytes at stride `ldb`, `c` 32 rows of ldc >= 32 int32, a
/// bias 32 int32.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_32x32(a: *const u8, lda: usize, b: *const i8, ldb: usize, k_steps: usize, c: *mut i32, ldc: usize, start: Start) {
    tile_32x32_with::<false, u8>(&[(a, b as *const u8)], lda, ldb, k_steps, c as *mut u8, ldc, start)
}

/// `tile_32x32` in bf16 (`tdpbf16ps`) over several operand pairs: c[32][32] f32 (+)= the sum
/// over `operands` (a, b) of a . b, for 32 rows of bf16 (32 of k per 64-byte step) and 32
/// columns of bf16 in pairs of k (a group row of 16 columns x 2 and, 64 bytes on, the next 16;
/// 16 group rows per step). Step by step, each step over the pairs in order, into the same
/// tiles (stored once at the end); pairs in a row with the same a (or the same b) load it once
/// per step.
/// f32-accurate attention sums six products of operands split into bf16 parts this way. Each
/// product of two bf16 is exact in f32 and is added rounded to nearest even (denormals
/// flushed).
///
/// # Safety
/// `bf16_available()` must be true; each pair as `tile_32x32`'s operands (bf16 for bytes), no bias.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_32x32_bf16(operands: &[(*const u16, *const u16)], lda: usize, ldb: usize, k_steps: usize, c: *mut f32, ldc: usize, start: Start) {
    debug_assert!(!matches!(start, Start::Bias(_)));
    tile_32x32_with::<true, u16>(operands, lda, ldb, k_steps, c as *mut u8, ldc, start)
}

/// The tile loop of both: `tdpbf16ps` when BF16, else `tdpbusd`; c holds 4-byte elements.
/// Each step runs every (a, b) pair into the same results.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_32x32_with<const BF16: bool, T>(operands: &[(*const T, *const T)], lda: usize, ldb: usize, k_steps: usize, c: *mut u8, ldc: usize, start: Start) {
    use std::arch::asm;
    configure_thread();
    // tmm0..3: the four 16x16 results; tmm4/5: rows 0-15 / 16-31 of a; tmm6/7: columns 0-15 /
    // 16-31 of b.
    let (c1, c2, c3, ldc_bytes) = (c.add(64), c.add(64 * ldc), c.add(64 * ldc + 64), ldc * 4);
    match start {
        Start::Accumulate => asm!(
            "tileloadd tmm0, [{c0} + {ldc}*1]",
            "tileloadd tmm1, [{c1} + {ldc}*1]",
            "tileloadd tmm2, [{c2} + {ldc}*1]",
            "tileloadd tmm3, [{c3} + {ldc}*1]",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_bytes,
            options(nostack, readonly),
        ),
        Start::Zero => asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)),
        // A row stride of 0 loads the same 64 bytes into all 16 rows.
        Start::Bias(bias) => asm!(
            "tileloadd tmm0, [{b0} + {zero}*1]",
            "tileloadd tmm1, [{b1} + {zero}*1]",
            "tileloadd tmm2, [{b0} + {zero}*1]",
            "tileloadd tmm3, [{b1} + {zero}*1]",
            b0 = in(reg) bias, b1 = in(reg) bias.add(16), zero = in(reg) 0usize,
            options(nostack, readonly),
        ),
    }
    for s in 0..k_steps {
        for (i, &(a, b)) in operands.iter().enumerate() {
            let (a, b) = (a as *const u8, b as *const u8);
            let b0 = b.add(s * 16 * ldb);
            // Both halves of a and of b, each loaded once for the pairs in a row that share it.
            let (new_a, new_b) = match i.checked_sub(1).map(|p| operands[p]) {
                Some((pa, pb)) => (pa as *const u8 != a, pb as *const u8 != b),
                None => (true, true),
            };
            // The next b to load (the next pair's, or the first pair's next step) into L1: tile
            // loads from L2 stall for their latency.
            let next = match operands.get(i + 1) {
                Some(&(_, nb)) if nb as *const u8 != b => Some((nb as *const u8).add(s * 16 * ldb)),
                Some(_) => None,
                None if s + 1 < k_steps => Some((operands[0].1 as *const u8).add((s + 1) * 16 * ldb)),
                None => None,
            };
            if let Some(next) = next {
                for row in 0..16 {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(next.add(row * ldb) as *const i8);
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(next.add(row * ldb + 64) as *const i8);
                }
            }
            if new_a {
                let a0 = a.add(s * K_STEP);
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    a0 = in(reg) a0, a1 = in(reg) a0.add(16 * lda), lda = in(reg) lda,
                    options(nostack, readonly),
                );
            }
            if new_b {
                asm!(
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    b0 = in(reg) b0, b1 = in(reg) b0.add(64), ldb = in(reg) ldb,
                    options(nostack, readonly),
                );
            }
            // One k step: both halves of a against both halves of b, with `op`.
            macro_rules! step {
                ($op:literal) => {
                    asm!(
                        concat!($op, " tmm0, tmm4, tmm6"),
                        concat!($op, " tmm1, tmm4, tmm7"),
                        concat!($op, " tmm2, tmm5, tmm6"),
                        concat!($op, " tmm3, tmm5, tmm7"),
                        options(nostack, nomem),
                    )
                };
            }
            if BF16 {
                step!("tdpbf16ps");
            } else {
                step!("tdpbusd");
            }
        }
    }
    asm!(
        "tilestored [{c0} + {ldc}*1], tmm0",
        "tilestored [{c1} + {ldc}*1], tmm1",
        "tilestored [{c2} + {ldc}*1], tmm2",
        "tilestored [{c3} + {ldc}*1], tmm3",
        c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_bytes,
        options(nostack),
    );
}

/// The peak probe for `measure::limits`: `n` rounds of four independent `tdpbusd` (or, with
/// BF16, `tdpbf16ps`) on tiles already loaded; returns the operations done (a multiply and an
/// add each).
///
/// # Safety
/// `available()` must be true, and with BF16 `bf16_available()`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn peak_step<const BF16: bool>(n: usize) -> f64 {
    use std::arch::asm;
    configure_thread();
    // Ones in both forms (0x01 bytes; 0x3f80 is bf16 1.0): no denormals, no overflow.
    let bytes = [if BF16 { 0x3f80u16 } else { 0x0101 }; 16 * 32];
    asm!(
        "tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{p} + {s}*1]",
        "tileloadd tmm6, [{p} + {s}*1]", "tileloadd tmm7, [{p} + {s}*1]",
        "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
        p = in(reg) bytes.as_ptr(), s = in(reg) 64usize, options(nostack, readonly),
    );
    macro_rules! rounds {
        ($op:literal) => {
            for _ in 0..n {
                asm!(
                    concat!($op, " tmm0, tmm4, tmm6"), concat!($op, " tmm1, tmm4, tmm7"),
                    concat!($op, " tmm2, tmm5, tmm6"), concat!($op, " tmm3, tmm5, tmm7"),
                    options(nostack, nomem),
                );
            }
        };
    }
    if BF16 {
        rounds!("tdpbf16ps");
    } else {
        rounds!("tdpbusd");
    }
    // Multiply-adds per instruction: 16 x 16 results, each over 64 bytes or 32 bf16.
    (n * 4 * 16 * 16 * if BF16 { 32 } else { 64 } * 2) as f64
}

/// `peak_step`'s four products per step with their operands loaded as a GEMM loads them: `n`
/// rounds over `steps` k steps, each loading two 16-row tiles of `a` (row stride 64) and two of
/// `b` (row stride 128) from the step's 2 KiB of each, into results that stay in the tiles. For
/// `amx_tile_probe`: what the instruction stream reaches before any blocking. Returns the
/// operations done.
///
/// # Safety
/// `available()` must be true; `a` and `b` must hold `steps` * 2,048 bytes.
#[cfg(target_arch = "x86_64")]
pub unsafe fn loaded_step(a: *const u8, b: *const u8, steps: usize, n: usize) -> f64 {
    use std::arch::asm;
    configure_thread();
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
    for _ in 0..n {
        for s in 0..steps {
            let (a0, b0) = (a.add(s * 2048), b.add(s * 2048));
            asm!(
                "tileloadd tmm4, [{a0} + {lda}*1]", "tileloadd tmm5, [{a1} + {lda}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]", "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tdpbusd tmm0, tmm4, tmm6", "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6", "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a0.add(1024), lda = in(reg) 64usize,
                b0 = in(reg) b0, b1 = in(reg) b0.add(64), ldb = in(reg) 128usize,
                options(nostack, readonly),
            );
        }
    }
    (n * steps * 4 * 16 * 16 * 64 * 2) as f64
}
