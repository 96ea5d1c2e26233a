//! The stage's allocator: the firmware's pool and pages through the `uefi`
//! crate's allocator, counted, so that the stage can say the most memory
//! it held (docs/boot-flow.md, "Memory"). Single-threaded, as UEFI boot
//! services are; the counters only observe.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use uefi::allocator::Allocator;

struct Counted;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every request goes to the `uefi` crate's allocator unchanged, with
// the caller's layout and pointer; only the counters are added.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { Allocator.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { Allocator.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static HEAP: Counted = Counted;

/// The most bytes the stage held at once so far, and what it holds now.
pub fn usage() -> (usize, usize) {
    (PEAK.load(Relaxed), IN_USE.load(Relaxed))
}
