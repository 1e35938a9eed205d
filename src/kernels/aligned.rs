//! Heap arrays that start on a 64-byte boundary. A `Vec<u8>` is only 16-byte aligned, and AMX
//! tile rows that straddle two cache lines load at well under half the speed (1,860 against
//! 4,790 GOP/s for the same tile loop on one core, measured on a Xeon with AMX).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// Element types for which every bit pattern, including all zeros, is a valid value.
///
/// # Safety
/// Implement only for such types, with alignment at most 64.
pub unsafe trait Plain: Copy {}
// SAFETY: plain integers.
unsafe impl Plain for i8 {}
// SAFETY: plain integers.
unsafe impl Plain for u8 {}
// SAFETY: plain integers.
unsafe impl Plain for i32 {}
// SAFETY: plain integers (bf16 bit patterns among them).
unsafe impl Plain for u16 {}
// SAFETY: every bit pattern is some f32 (a NaN at worst); all zeros is 0.0.
unsafe impl Plain for f32 {}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A fixed-length array of `T` whose first element is 64-byte aligned.
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    /// `len` copies of `value`.
    pub fn filled(value: T, len: usize) -> Self {
        let lines = zeroed_lines((len * size_of::<T>()).div_ceil(64));
        let mut v = AlignedVec { lines, len, _t: PhantomData };
        // The lines start zeroed: a zero value needs no second pass (the int8 GEMM packs its
        // activations into a fresh zeroed buffer per call).
        if !is_zero(value) {
            v.fill(value);
        }
        v
    }

    /// Makes this `len` copies of `value`, keeping the allocation when it is large enough.
    pub fn refill(&mut self, len: usize, value: T) {
        let lines = (len * size_of::<T>()).div_ceil(64);
        if lines > self.lines.len() {
            self.lines = zeroed_lines(lines);
        }
        self.len = len;
        self.fill(value);
    }
}

/// `n` zeroed lines from the allocator's zeroed memory: a large allocation is fresh pages from
/// the OS, touched only where written (`vec![Line(..); n]` writes every line: the kept bf16 copy
/// of a 4,096-slot cache is hundreds of MB, of which a short prompt uses a few).
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<Line>(n).expect("allocation size overflows");
    // SAFETY: the layout has a nonzero size; all-zero bytes are a valid Line; the Vec takes the
    // allocation with the layout it will free it with (n Lines, Line's alignment).
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Line;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, n, n)
    }
}

/// Whether every byte of `value` is zero.
fn is_zero<T: Plain>(value: T) -> bool {
    // SAFETY: a Plain value is size_of::<T>() initialized bytes.
    unsafe { std::slice::from_raw_parts(&value as *const T as *const u8, size_of::<T>()) }.iter().all(|&b| b == 0)
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        AlignedVec { lines: Vec::new(), len: 0, _t: PhantomData }
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least len * size_of::<T>() initialized bytes, aligned to 64
        // (>= T's alignment, `Plain`), and any bytes are a valid T.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

/// Read-only values that start on a 64-byte boundary: made in memory (`AlignedVec`), or a
/// slice of a memory-mapped file (the npu backend's kept int8 weights: nothing is copied, and
/// the page cache holds them once for every process that maps the file).
pub enum Stored<T: Plain> {
    Owned(AlignedVec<T>),
    Mapped(MappedValues<T>),
}

/// Values inside a memory-mapped file, made only by `Stored::mapped`, which checks where they
/// lie (the fields are private so that nothing else can claim other bytes).
pub struct MappedValues<T: Plain> {
    map: std::sync::Arc<memmap2::Mmap>,
    at: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Stored<T> {
    /// `len` values from byte `at` of `map`; None unless they lie inside it and start on a
    /// 64-byte boundary.
    pub fn mapped(map: std::sync::Arc<memmap2::Mmap>, at: usize, len: usize) -> Option<Self> {
        let end = len.checked_mul(size_of::<T>())?.checked_add(at)?;
        ((map.as_ptr() as usize + at) % 64 == 0 && end <= map.len()).then_some(Stored::Mapped(MappedValues { map, at, len, _t: PhantomData }))
    }
}

/// The bytes of plain values (to write them out).
pub fn bytes_of<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: a Plain slice is size_of_val initialized bytes.
    unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) }
}

impl<T: Plain> Deref for Stored<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Stored::Owned(v) => v,
            // SAFETY: `mapped` checked that the values lie inside the mapping, which lives as long
            // as self, on a 64-byte boundary (>= T's alignment); any bytes are a valid T. The file
            // is ours and mapped read-only.
            Stored::Mapped(m) => unsafe { std::slice::from_raw_parts(m.map.as_ptr().add(m.at) as *const T, m.len) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_holds_its_values() {
        for len in [0, 1, 63, 64, 65, 1000] {
            assert!(AlignedVec::filled(0i32, len).iter().all(|&x| x == 0));
            let mut v = AlignedVec::filled(7i32, len);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 7));
            if len > 0 {
                v[len - 1] = -1;
                assert_eq!(v[len - 1], -1);
            }
            v.refill(len / 2 + 3, 5);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert!(v.len() == len / 2 + 3 && v.iter().all(|&x| x == 5));
        }
    }
}
