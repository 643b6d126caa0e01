//! One side's answers over an evaluation window: counts, errors and a latency histogram in
//! atomics, read and reset by the ramp driver.
//!
//! Written by hand rather than with an HDR histogram crate: the request path needs a lock-free
//! record of three relaxed additions, and the driver needs one p99 per window, which a fixed
//! log-linear array of counters (four sub-buckets per power of two, so a p99 is within 25% of
//! the truth) gives without allocating.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Linear buckets for 0 to 7 µs, then four per power of two up to about 68 s.
const BUCKETS: usize = 8 + 34 * 4;

/// What one side did over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Answers.
    pub requests: u64,
    /// Answers that were errors (a 5xx or a failed call).
    pub errors: u64,
    /// The 99th percentile latency to the answer's head, if there were answers.
    pub p99: Option<Duration>,
}

impl Sample {
    /// The error rate, 0.0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// A side's window.
#[derive(Debug)]
pub(crate) struct Window {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn index(micros: u64) -> usize {
    if micros < 8 {
        return micros as usize;
    }
    let log = 63 - micros.leading_zeros() as usize; // 3 and up
    let sub = ((micros >> (log - 2)) & 3) as usize;
    (8 + (log - 3) * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in microseconds.
fn upper(i: usize) -> u64 {
    if i < 8 {
        return i as u64 + 1;
    }
    let log = (i - 8) / 4 + 3;
    let sub = ((i - 8) % 4) as u64;
    (5 + sub) << (log - 2)
}

impl Window {
    /// Records one answer.
    #[inline]
    pub(crate) fn record(&self, error: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the window and starts a new one.
    pub(crate) fn take(&self) -> Sample {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed).min(requests);
        let total: u64 = counts.iter().sum();
        let p99 = (total > 0).then(|| {
            let rank = total - total / 100; // ceil(0.99 * total) for total >= 1, within one
            let mut seen = 0;
            let mut at = BUCKETS - 1;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    at = i;
                    break;
                }
            }
            Duration::from_micros(upper(at))
        });
        Sample {
            requests,
            errors,
            p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for micros in (0..100_000u64).chain([1 << 30, 1 << 35, u64::MAX / 2]) {
            let i = index(micros);
            assert!(i < BUCKETS);
            if i < BUCKETS - 1 {
                assert!(micros < upper(i), "{micros} in {i}");
                assert!(i == 0 || micros >= upper(i - 1), "{micros} in {i}");
                // Within 25% above.
                assert!(
                    upper(i) as f64 <= (micros as f64 + 1.0) * 1.25 + 1.0,
                    "{micros}"
                );
            }
        }
    }

    #[test]
    fn the_p99_is_the_slowest_hundredth() {
        let w = Window::default();
        for _ in 0..990 {
            w.record(false, Duration::from_millis(1));
        }
        for _ in 0..10 {
            w.record(true, Duration::from_millis(200));
        }
        let s = w.take();
        assert_eq!((s.requests, s.errors), (1000, 10));
        let p99 = s.p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(1) && p99 <= Duration::from_micros(1280),
            "{p99:?}"
        );
        assert!((s.error_rate() - 0.01).abs() < 1e-9);
        // One more slow answer than a hundredth: the p99 is slow.
        for _ in 0..98 {
            w.record(false, Duration::from_millis(1));
        }
        for _ in 0..2 {
            w.record(false, Duration::from_millis(200));
        }
        let p99 = w.take().p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(200) && p99 <= Duration::from_millis(250),
            "{p99:?}"
        );
        assert_eq!(w.take(), Sample::default(), "take resets");
        assert_eq!(Sample::default().error_rate(), 0.0);
    }
}
