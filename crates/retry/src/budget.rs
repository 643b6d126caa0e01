//! A retry budget shared by every request through a layer, with gRPC's retry-throttling
//! semantics, and an optional cap on retries in flight.
//!
//! Tokens start at `max_tokens`; every retryable failure takes one, every success gives back
//! `token_ratio`; retries are allowed only while more than half the tokens remain. When the
//! dependency is down, retries stop after about `max_tokens / 2` failures and resume as
//! successes return: at most `token_ratio` retries per success in the long run.
//!
//! Chosen over tower's `TpsBudget` because it needs no clock (so recording never reads the
//! time), follows the dependency's health rather than a rate, and is what gRPC clients already
//! do. Lock-free: one compare-and-swap per change, and a success over a full bucket writes
//! nothing.
//!
//! ```
//! use tower_patterns_retry::RetryBudget;
//!
//! let budget = RetryBudget::new(10.0, 0.1).unwrap();
//! let mut allowed = 0;
//! for _ in 0..100 {
//!     budget.failure();
//!     if budget.can_retry() { allowed += 1; }
//! }
//! assert_eq!(allowed, 4); // 10 tokens: retries stop at half
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use tower_patterns_core::ConfigError;

const SCALE: f64 = 1_000.0;

/// A shared retry budget; see the [module docs](self).
#[derive(Debug)]
pub struct RetryBudget {
    /// Tokens × 1000.
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
    in_flight: AtomicU32,
    max_in_flight: u32,
}

impl RetryBudget {
    /// A budget of `max_tokens` (1 to 1,000, as in gRPC) refilled by `token_ratio` per success.
    ///
    /// # Errors
    ///
    /// When `max_tokens` is outside 1..=1000 or `token_ratio` is not positive.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<Self, ConfigError> {
        if !(1.0..=1_000.0).contains(&max_tokens) {
            return Err(ConfigError::new("budget", "max_tokens must be in 1..=1000"));
        }
        if !(token_ratio > 0.0 && token_ratio.is_finite()) {
            return Err(ConfigError::new("budget", "token_ratio must be positive"));
        }
        let max = (max_tokens * SCALE) as u64;
        Ok(Self {
            tokens: AtomicU64::new(max),
            max,
            ratio: ((token_ratio * SCALE) as u64).max(1),
            in_flight: AtomicU32::new(0),
            max_in_flight: u32::MAX,
        })
    }

    /// Also allow at most `n` retries in flight at once (Envoy's `max_retries`).
    #[must_use]
    pub fn max_concurrent_retries(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens.load(Relaxed) as f64 / SCALE
    }

    /// The most tokens it holds.
    pub fn max_tokens(&self) -> f64 {
        self.max as f64 / SCALE
    }

    /// Retries in flight now (counted only for requests that took a slot).
    pub fn retries_in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// A call succeeded.
    #[inline]
    pub fn success(&self) {
        let mut t = self.tokens.load(Relaxed);
        while t < self.max {
            let next = (t + self.ratio).min(self.max);
            match self.tokens.compare_exchange_weak(t, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => t = actual,
            }
        }
    }

    /// A call failed in a way that would be retried.
    pub fn failure(&self) {
        let _ = self
            .tokens
            .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(SCALE as u64)));
    }

    /// Whether a retry may go now.
    pub fn can_retry(&self) -> bool {
        self.tokens.load(Relaxed) > self.max / 2
    }

    /// Takes a slot for a retry in flight, if one is free.
    pub(crate) fn enter(&self) -> bool {
        self.in_flight
            .fetch_update(AcqRel, Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`enter`](Self::enter).
    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, AcqRel);
    }
}

impl Default for RetryBudget {
    /// gRPC's usual settings: 100 tokens, 0.1 per success (retries at most 10% of successes).
    fn default() -> Self {
        Self::new(100.0, 0.1).expect("valid defaults")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_dependency_exhausts_it_and_successes_refill_it() {
        let b = RetryBudget::new(100.0, 0.1).unwrap();
        let mut retries = 0;
        for _ in 0..10_000 {
            b.failure();
            if b.can_retry() {
                retries += 1;
            }
        }
        assert_eq!(retries, 49, "retries stop once half the tokens are gone");
        for _ in 0..10 {
            b.success();
        }
        assert!(!b.can_retry(), "one token back is not above half yet");
        for _ in 0..500 {
            b.success();
        }
        assert!(b.can_retry());
        assert!((b.tokens() - 51.0).abs() < 0.01, "{}", b.tokens());
        assert!(RetryBudget::new(0.5, 0.1).is_err());
        assert!(RetryBudget::new(10.0, 0.0).is_err());
    }

    #[test]
    fn concurrent_retries_are_capped() {
        let b = RetryBudget::default().max_concurrent_retries(2);
        assert!(b.enter());
        assert!(b.enter());
        assert!(!b.enter());
        b.leave();
        assert!(b.enter());
    }
}
