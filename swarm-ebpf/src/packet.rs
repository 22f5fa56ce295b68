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

/// A copy of the `T` at `offset` bytes into an skb, read directly from its
/// linear part. When the linear part is too short (headers in paged data),
/// the skb is pulled once and read again; `None` if the packet itself is too
/// short. Cheaper than `bpf_skb_load_bytes` on the common path.
#[inline(always)]
pub fn tc_read<T: Copy>(ctx: &aya_ebpf::programs::TcContext, offset: usize) -> Option<T> {
    if let Some(p) = ptr_at::<T>(ctx.data(), ctx.data_end(), offset) {
        // SAFETY: `ptr_at` checked the bounds; `T` is plain bytes (alignment 1).
        return Some(unsafe { core::ptr::read_unaligned(p) });
    }
    ctx.pull_data((offset + size_of::<T>()) as u32).ok()?;
    let p = ptr_at::<T>(ctx.data(), ctx.data_end(), offset)?;
    // SAFETY: as above.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Mutable pointer to a `T` at `offset` bytes into an skb's linear part, or
/// `None` when the linear part is shorter. Packet pointers taken before a
/// helper that changes the packet (e.g. `adjust_room`) must not be reused.
#[inline(always)]
pub fn tc_ptr_mut<T>(ctx: &aya_ebpf::programs::TcContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx.data(), ctx.data_end(), offset).map(|p| p.cast_mut())
}
