//! Bench-only: the system allocator (what the gateway uses in production), counting every
//! allocator call, so `make bench-gateway` can report allocations per request of the
//! gateway and of bare Pingora side by side (issue 19).
//!
//! Counted: `alloc`, `alloc_zeroed` and `realloc` (a `realloc` is a call to the allocator
//! like any other; frees are not counted, each one pairs with a counted call). One relaxed
//! atomic add per call: the benchmark measures throughput without this allocator and
//! allocations in a separate pass with it, so its own cost never colours the CPU figures.
//!
//! How the count leaves the process: [`report_from_env`] starts a thread that writes the
//! running total to the file named by `RUSTRONAUT_ALLOC_COUNT_FILE` every 50 ms (written to
//! a temporary name, then renamed, so a reader never sees half a number). The benchmark
//! reads it before and after a run of N requests, waits for the next write, and divides.
//! Allocations of idle background work (timers, health checks) are in the count too; the
//! benchmark measures them over an idle interval and reports them beside the result.

// A global allocator is unsafe by definition (`GlobalAlloc`); this crate is built only
// into benchmark binaries, never into a shipped one (the gateway's `count-allocs` feature).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static CALLS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls. Install with
/// `#[global_allocator] static A: Counting = Counting;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is the only addition.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocator calls since the process started.
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Starts the reporting thread when `RUSTRONAUT_ALLOC_COUNT_FILE` is set (see the crate
/// docs); does nothing otherwise.
pub fn report_from_env() {
    let Some(path) = std::env::var_os("RUSTRONAUT_ALLOC_COUNT_FILE") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let tmp = path.with_extension("tmp");
    let spawned = std::thread::Builder::new()
        .name("alloc-count".into())
        .spawn(move || {
            loop {
                // The write allocates too (a few calls every 50 ms), which the benchmark's
                // idle measurement includes.
                if std::fs::write(&tmp, calls().to_string()).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    if let Err(e) = spawned {
        eprintln!("alloc-count: no reporting thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: Counting = Counting;

    #[test]
    fn every_allocation_is_counted() {
        let before = calls();
        let v: Vec<Box<u64>> = (0..100).map(Box::new).collect();
        let after = calls();
        // 100 boxes and at least the vector's own buffer; other test threads may allocate
        // too, so only the lower bound is exact.
        assert!(after - before >= 101, "{before} -> {after}");
        drop(v);
    }
}
