//! Histogram samples must not pile up when nobody scrapes `/metrics` (issue 13: the ingress
//! grew 11 → 49 MB and the worker 10 → 83 MB in 10 minutes at 2,950 jobs/s).
//!
//! The recorder keeps each sample in memory until it is folded into its histogram's
//! buckets, which happens on a render or on the recorder's upkeep. This test counts the
//! bytes this process holds (a counting global allocator), records two million samples
//! (~16 MiB of pending blocks), never renders, and awaits — with a bounded wait — the
//! moment those bytes are released. Without an upkeep task nothing ever releases them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use surge_common::metrics::{self as m, UPKEEP_INTERVAL};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SAMPLES: usize = 2_000_000;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn pending_histogram_samples_are_released_without_a_scrape() {
    let _handle = m::install();
    let histogram = metrics::histogram!(m::JOB_SECONDS);
    histogram.record(0.001); // the histogram's first block and its bucket set
    let before = live();
    for i in 0..SAMPLES {
        histogram.record((i % 1000) as f64 / 1000.0);
    }
    let grown = live() - before;
    assert!(
        grown > 8 << 20,
        "recording {SAMPLES} samples should hold at least 8 MiB until they are folded in, held {grown} bytes"
    );

    // Released memory is reclaimed through crossbeam-epoch, which frees deferred blocks as
    // threads pin it; recording a few samples per poll keeps pinning.
    let deadline = Instant::now() + UPKEEP_INTERVAL * 6;
    loop {
        let held = live() - before;
        if held < grown / 4 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pending samples still hold {held} bytes (of {grown}) after {:?} without a scrape: \
             nothing runs the recorder's upkeep",
            UPKEEP_INTERVAL * 6
        );
        for _ in 0..256 {
            histogram.record(0.0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
