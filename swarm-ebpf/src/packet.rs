//! Bounds-checked packet access: the only way programs read packet memory.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;

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

/// Pointer to the `T` at `offset` bytes into an skb's linear part. When the
/// linear part is too short (headers in paged data) the skb is pulled once
/// and checked again; `None` if the packet itself is too short. Cheaper than
/// `bpf_skb_load_bytes`/`store_bytes` on the common path. Pointers taken
/// before a helper that changes the packet (e.g. `adjust_room`) must not be
/// reused.
#[inline(always)]
pub fn tc_ptr<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    if let Some(p) = ptr_at::<T>(ctx.data(), ctx.data_end(), offset) {
        return Some(p.cast_mut());
    }
    ctx.pull_data((offset + size_of::<T>()) as u32).ok()?;
    ptr_at::<T>(ctx.data(), ctx.data_end(), offset).map(<*const T>::cast_mut)
}

/// A copy of the `T` at `offset` bytes into an skb (see [`tc_ptr`]).
#[inline(always)]
pub fn tc_read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // SAFETY: `tc_ptr` checked the bounds; `T` is plain bytes, read unaligned.
    tc_ptr::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}
