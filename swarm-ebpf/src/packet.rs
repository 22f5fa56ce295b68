//! Bounds-checked packet access: the only way programs read packet memory.

use core::mem::size_of;

/// Pointer to a `T` at `offset` bytes into the packet `[start, end)`, or
/// `None` when it would reach past the end. The explicit comparison against
/// `end` is what the verifier needs to accept the later read.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}
