//! The memory allocator training runs best on, for binaries to install:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: deeptune_engine::allocator::Allocator = deeptune_engine::allocator::Allocator;
//! fn main() {
//!     deeptune_engine::allocator::keep_freed_memory();
//! }
//! ```
//!
//! Why: every training step frees and reallocates the same multi-megabyte activations and
//! gradients. glibc's malloc serves blocks that large with `mmap` and returns them to the kernel
//! on free, and mimalloc (by default) purges free memory after a second; either way the next step
//! faults every page back in, and the kernel zeroes it — a third of a ResNet-18 step in the
//! profile (docs/PERFORMANCE.md, "Change 3"). Keeping freed memory costs the peak working set,
//! which a training worker needs again for its next step or job anyway.

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys names no constant for
/// it).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to give freed memory back to the operating system. Call once, first
/// thing in `main`; harmless where [`Allocator`] is not the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: sets one integer option; mimalloc reads options at any time and accepts -1 ("never").
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, -1) }
}
