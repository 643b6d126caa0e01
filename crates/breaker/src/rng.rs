//! The breaker's shared, seedable generator: core's SplitMix64 over an atomic counter, so
//! ramp sampling from many threads at once is one `fetch_add` and no lock.

use tower_patterns_core::rng::{GOLDEN_GAMMA, mix, unit};

use crate::sync::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct AtomicRng {
    state: AtomicU64,
}

impl AtomicRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA))
    }

    /// A float uniform in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        unit(self.next_u64())
    }
}
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_are_uniform() {
        let a = AtomicRng::new(7);
        let b = AtomicRng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let rng = AtomicRng::new(1);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
