//! The process allocator and how idle memory goes back to the OS.

#[cfg(feature = "mimalloc")]
use std::alloc::{GlobalAlloc, Layout};
#[cfg(feature = "mimalloc")]
use std::ffi::c_void;

#[cfg(feature = "mimalloc")]
use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every mimalloc block has whatever it was asked for: blocks are whole words
/// from word-aligned page starts (mimalloc's own `mi_realloc_aligned` treats an alignment up to
/// this as no constraint).
#[cfg(feature = "mimalloc")]
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator, asked for an aligned block only when the alignment is more
/// than a word. The `mimalloc` crate passes every layout's alignment to `mi_malloc_aligned`,
/// and mimalloc 3 serves a block over 1 KiB whose size is not a power of two by
/// over-allocating and offsetting even when the alignment asked is 8, which every block has:
/// 4 such allocations per proxied HTTP/2 request (the request's boxed future among them), about
/// 1,000 of its ~60,000 user-space instructions, and up to a word of waste each.
#[cfg(feature = "mimalloc")]
pub struct Mimalloc;

/// A block for `layout` from `plain` (word alignment is enough) or `aligned` (more is asked):
/// `mi_malloc`/`mi_malloc_aligned`, or their zeroing twins.
///
/// # Safety
/// `layout` has a non-zero size (GlobalAlloc's contract).
#[cfg(feature = "mimalloc")]
#[inline(always)]
unsafe fn block(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: plain calls into the allocator with a valid size and a power-of-two alignment.
    unsafe {
        if layout.align() <= WORD {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of any
// alignment); a layout's alignment is honoured either by mimalloc's word alignment (up to
// `WORD`) or by its aligned entry points, and a size of 0 is never asked (GlobalAlloc's
// contract).
#[cfg(feature = "mimalloc")]
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into the allocator; see the impl's comment.
        unsafe { block(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { block(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc's `arena_eager_commit` option (see mimalloc.h, `mi_option_e`).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commits mimalloc's arenas on demand rather than up front. With eager commit (its default on
/// Linux) a purge of free pages only resets them (MADV_FREE), which leaves them counted in RSS
/// until the kernel runs short; committed on demand, a purge decommits them (MADV_DONTNEED) and
/// RSS falls at once. Measured with 10,000 idle keep-alive connections after 64 KiB traffic:
/// 61-71 MiB with the default, 50-58 MiB without eager commit.
///
/// It must run before the first arena is reserved, which happens on the first allocation, so it
/// is a constructor (run by the loader before Rust's runtime starts and allocates).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
extern "C" fn commit_on_demand() {
    // SAFETY: mi_option_set only stores a value in mimalloc's option table; it allocates
    // nothing and is valid before mimalloc has initialised.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
// SAFETY: a plain `extern "C" fn()` in .init_array is what the loader calls before main.
#[unsafe(link_section = ".init_array")]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

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
