//! Counting allocations, for the tests that claim a path allocates nothing (or at most so much).
//!
//! One test file per claim (a global allocator is per process), declaring dhat's allocator:
//!
//! ```no_run
//! use tower_patterns_testkit::alloc::{Alloc, Counter};
//!
//! #[global_allocator]
//! static ALLOC: Alloc = Alloc;
//!
//! let counter = Counter::start();
//! let mut v = Vec::with_capacity(8);
//! assert_eq!(counter.fewest(3, || v.push(1)), 0);
//! ```
//!
//! [`Counter::start`] checks the counter counts (one allocation is seen as exactly one), so a
//! zero from it is a real zero and not a counter that never ran.

pub use dhat::Alloc;

use crate::fewest;

/// Counts the heap blocks the process allocates, while it lives (dhat's testing profiler).
#[derive(Debug)]
pub struct Counter {
    _profiler: dhat::Profiler,
}

impl Counter {
    /// Starts counting.
    ///
    /// # Panics
    ///
    /// When the test file did not declare [`Alloc`] as its global allocator (dhat panics), or
    /// the counter does not see one allocation as exactly one.
    pub fn start() -> Self {
        let counter = Self {
            _profiler: dhat::Profiler::builder().testing().build(),
        };
        // The quietest of a few windows: the test harness's own thread allocates at moments
        // that race with a test's start (see `fewest`), which is when this runs; another
        // thread's allocation only adds, so the fewest is exactly 1 when the counter counts.
        let seen = counter.fewest(5, || drop(std::hint::black_box(Box::new(1u64))));
        assert_eq!(
            seen, 1,
            "the allocation counter counts one allocation as one"
        );
        counter
    }

    /// The blocks allocated so far, by every thread.
    pub fn total(&self) -> u64 {
        dhat::HeapStats::get().total_blocks
    }

    /// The blocks allocated while `f` ran.
    pub fn during(&self, f: impl FnOnce()) -> u64 {
        let before = self.total();
        f();
        self.total() - before
    }

    /// The fewest blocks allocated by one run of `body`, over up to `windows` runs (see
    /// [`fewest`] for why the quietest window is the honest figure).
    pub fn fewest(&self, windows: usize, mut body: impl FnMut()) -> u64 {
        fewest(windows, || self.during(&mut body))
    }
}
