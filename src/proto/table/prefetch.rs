//! Cache prefetch hints: the one place the crate uses `unsafe`.

/// One cache line, as far as prefetching is concerned.
const LINE: usize = 64;

/// Hints that all of `value` will be read soon. A hint only: it never faults and changes
/// nothing but timing (a no-op off x86_64).
#[inline]
pub(crate) fn prefetch_all<T>(value: &T) {
    prefetch_bytes(std::ptr::from_ref(value).cast(), size_of::<T>());
}

#[inline]
#[allow(unsafe_code)]
fn prefetch_bytes(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut offset = 0;
        while offset < len.max(1) {
            // SAFETY: a prefetch is a hint that never faults, whatever the address; the
            // addresses lie within (or one line past) a live reference's object. SSE is part of
            // every x86_64 target.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset).cast()) };
            offset += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}
