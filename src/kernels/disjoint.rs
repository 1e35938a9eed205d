//! A float buffer that parallel tasks write at once, each task its own elements: the GEMMs'
//! output columns, attention's (token, head) rows, the shadow's outlier rows, gathered columns.
//! Rust's borrows cannot split a buffer along such patterns, so the tasks share a pointer and
//! each call site states why its writes are disjoint.

/// See the module: a `&mut [f32]` lent to tasks that write disjoint elements of it.
#[derive(Clone, Copy)]
pub struct DisjointWrites(*mut f32);

// SAFETY: the pointer is only written through `slice`/`write`/`ptr`, whose callers promise
// that no two tasks touch the same element.
unsafe impl Send for DisjointWrites {}
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    pub fn new(buf: &mut [f32]) -> Self {
        DisjointWrites(buf.as_mut_ptr())
    }

    /// The buffer's start, for kernels that address it themselves.
    pub fn ptr(self) -> *mut f32 {
        self.0
    }

    /// Elements at..at + len.
    ///
    /// # Safety
    /// They must lie in the buffer, which must still be alive, and no other task may use them
    /// while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }

    /// Element `at` = v.
    ///
    /// # Safety
    /// As `slice`, for the one element.
    pub unsafe fn write(&self, at: usize, v: f32) {
        *self.0.add(at) = v;
    }
}
