//! The process allocator and how idle memory goes back to the OS.

/// Returns free memory held by this thread's allocator to the OS. Called by each data-path worker
/// every few seconds (see `scalegate_http::worker::Housekeeping`).
#[cfg(feature = "mimalloc")]
pub fn release_free_memory() {
    // SAFETY: mi_collect only walks and releases the calling thread's own heap; it has no
    // preconditions beyond mimalloc being the allocator, which the global_allocator ensures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Returns free memory held by glibc's malloc to the OS (every arena).
#[cfg(all(not(feature = "mimalloc"), target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// No-op where the allocator offers no way to release memory.
#[cfg(all(not(feature = "mimalloc"), not(target_env = "gnu")))]
pub fn release_free_memory() {}
