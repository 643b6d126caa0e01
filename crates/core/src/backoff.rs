//! Delays between attempts: the common backoff families, each a pure function of the retry
//! number, the previous delay and a seeded random source, and every delay capped.
//!
//! With `n` the retry number (1 for the first retry), `b` the base, `c` the cap and `U(x, y)`
//! uniform:
//!
//! | family | delay before retry `n` | mean |
//! |---|---|---|
//! | `Constant` | `b` | `b` |
//! | `Linear` | `b · n` | |
//! | `Exponential` | `b · m^(n−1)` | |
//! | `FullJitter` | `U(0, t)`, `t = min(c, b · 2^(n−1))` | `t / 2` |
//! | `EqualJitter` | `t/2 + U(0, t/2)` | `3t / 4` |
//! | `Decorrelated` | `min(c, U(b, 3 · previous))` | `(b + 3·previous) / 2` |
//! | `DecorrelatedV2` (Polly's curve) | `(f(n−1+r) − f(n−2+r)) · b / 1.4`, `f(t) = 2^t · tanh(√(4t))`, `r = U(0,1)` | median of the first ≈ 0.9 `b` |
//! | `Grpc` | `min(c, b · m^(n−1)) · U(0.8, 1.2)` | `min(c, b · m^(n−1))` |
//!
//! Every result is then capped at `c` (so gRPC's +20% never passes the cap). Our v2 takes both
//! points of Polly's curve at the same jitter offset, so it needs no state between attempts and
//! is never negative; Polly carries the previous point from one attempt to the next.
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_core::backoff::Backoff;
//! use tower_patterns_core::rng::SplitMix64;
//!
//! let backoff = Backoff::Exponential { base: Duration::from_millis(100), multiplier: 2.0 };
//! let cap = Duration::from_secs(1);
//! let mut rng = SplitMix64::new(1);
//! let delays: Vec<_> = (1..=5)
//!     .map(|n| backoff.delay(n, Duration::ZERO, cap, &mut rng).as_millis())
//!     .collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000]);
//! ```

use std::time::Duration;

use crate::{ConfigError, rng::SplitMix64};

/// How long to wait before each retry; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay every time.
    Constant(Duration),
    /// `base · n`.
    Linear {
        /// The first delay, and the step.
        base: Duration,
    },
    /// `base · multiplier^(n−1)`.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The growth per retry (at least 1).
        multiplier: f64,
    },
    /// AWS's "full jitter": `U(0, min(cap, base · 2^(n−1)))`.
    FullJitter {
        /// The first ceiling.
        base: Duration,
    },
    /// AWS's "equal jitter": half fixed, half random.
    EqualJitter {
        /// The first ceiling.
        base: Duration,
    },
    /// AWS's "decorrelated jitter": `min(cap, U(base, 3 · previous))`.
    Decorrelated {
        /// The smallest delay.
        base: Duration,
    },
    /// Polly's decorrelated jitter v2: well spread, no clustering, median first delay `base`.
    DecorrelatedV2 {
        /// The median of the first delay.
        median_first: Duration,
    },
    /// gRPC's: `min(cap, initial · multiplier^(n−1))`, ±20%.
    Grpc {
        /// The first delay.
        initial: Duration,
        /// The growth per retry (at least 1).
        multiplier: f64,
    },
}

impl Default for Backoff {
    /// Full jitter from 100 ms: spreads retries of many clients best (AWS's measurements).
    fn default() -> Self {
        Self::FullJitter {
            base: Duration::from_millis(100),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn from_secs(s: f64, cap: Duration) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(secs(cap)))
    } else {
        Duration::ZERO
    }
}

/// Polly's v2 curve.
fn polly(t: f64) -> f64 {
    2f64.powf(t) * (4.0 * t).sqrt().tanh()
}

impl Backoff {
    /// The delay before retry `n` (1 for the first), given the previous delay, capped.
    pub fn delay(
        &self,
        n: u32,
        previous: Duration,
        cap: Duration,
        rng: &mut SplitMix64,
    ) -> Duration {
        let n = n.max(1);
        let exp = |m: f64| m.powi(i32::try_from(n - 1).unwrap_or(i32::MAX).min(1_023));
        let ceiling = |base: Duration| (secs(base) * exp(2.0)).min(secs(cap));
        let s = match *self {
            Self::Constant(d) => secs(d),
            Self::Linear { base } => secs(base) * f64::from(n),
            Self::Exponential { base, multiplier } => secs(base) * exp(multiplier),
            Self::FullJitter { base } => ceiling(base) * rng.next_f64(),
            Self::EqualJitter { base } => {
                let t = ceiling(base);
                t / 2.0 + t / 2.0 * rng.next_f64()
            }
            Self::Decorrelated { base } => {
                let low = secs(base);
                let high = (3.0 * secs(previous)).max(low);
                low + (high - low) * rng.next_f64()
            }
            Self::DecorrelatedV2 { median_first } => {
                // Polly's formula: the difference of the curve at two jittered points.
                let attempt = f64::from(n - 1);
                let r = rng.next_f64();
                let t = attempt + r;
                let prev = if n == 1 { 0.0 } else { polly(t - 1.0) };
                (polly(t) - prev) * secs(median_first) / 1.4
            }
            Self::Grpc {
                initial,
                multiplier,
            } => (secs(initial) * exp(multiplier)).min(secs(cap)) * (0.8 + 0.4 * rng.next_f64()),
        };
        from_secs(s, cap)
    }

    /// Checks the settings, as a builder's `build()` does.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `backoff` when a multiplier is below 1 or not finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let multiplier_ok = |m: f64| m.is_finite() && m >= 1.0;
        match *self {
            Self::Exponential { multiplier, .. } | Self::Grpc { multiplier, .. }
                if !multiplier_ok(multiplier) =>
            {
                Err(ConfigError::new("backoff", "multiplier must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn families(base: Duration) -> Vec<Backoff> {
        vec![
            Backoff::Constant(base),
            Backoff::Linear { base },
            Backoff::Exponential {
                base,
                multiplier: 2.0,
            },
            Backoff::FullJitter { base },
            Backoff::EqualJitter { base },
            Backoff::Decorrelated { base },
            Backoff::DecorrelatedV2 { median_first: base },
            Backoff::Grpc {
                initial: base,
                multiplier: 1.6,
            },
        ]
    }

    proptest! {
        #[test]
        fn every_delay_lies_within_zero_and_the_cap(
            base_ms in 0u64..5_000,
            cap_ms in 0u64..60_000,
            n in 1u32..200,
            prev_ms in 0u64..100_000,
            seed in any::<u64>(),
        ) {
            let cap = Duration::from_millis(cap_ms);
            let mut rng = SplitMix64::new(seed);
            for b in families(Duration::from_millis(base_ms)) {
                let d = b.delay(n, Duration::from_millis(prev_ms), cap, &mut rng);
                prop_assert!(d <= cap, "{b:?}: {d:?} over the cap {cap:?}");
            }
        }
    }

    fn mean(f: impl FnMut(&mut SplitMix64) -> Duration) -> f64 {
        let mut rng = SplitMix64::new(99);
        let mut f = f;
        let n = 20_000;
        (0..n).map(|_| secs(f(&mut rng))).sum::<f64>() / f64::from(n)
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 0.03
    }

    #[test]
    fn jitter_families_have_their_documented_means() {
        let cap = Duration::from_secs(100);
        let base = 100 * MS;
        for n in [1, 3, 5] {
            let t = 0.1 * 2f64.powi(n as i32 - 1);
            let full = mean(|r| Backoff::FullJitter { base }.delay(n, Duration::ZERO, cap, r));
            assert!(
                close(full, t / 2.0),
                "full jitter n={n}: {full} vs {}",
                t / 2.0
            );
            let equal = mean(|r| Backoff::EqualJitter { base }.delay(n, Duration::ZERO, cap, r));
            assert!(close(equal, 0.75 * t), "equal jitter n={n}: {equal}");
            let grpc = mean(|r| {
                Backoff::Grpc {
                    initial: base,
                    multiplier: 2.0,
                }
                .delay(n, Duration::ZERO, cap, r)
            });
            assert!(close(grpc, t), "grpc n={n}: {grpc}");
        }
        let prev = 400 * MS;
        let dec = mean(|r| Backoff::Decorrelated { base }.delay(2, prev, cap, r));
        assert!(close(dec, (0.1 + 1.2) / 2.0), "decorrelated: {dec}");
    }

    #[test]
    fn polly_v2_first_delay_has_the_median_asked_for() {
        let mut rng = SplitMix64::new(5);
        let median_first = Duration::from_secs(1);
        let mut first: Vec<f64> = (0..20_001)
            .map(|_| {
                secs(Backoff::DecorrelatedV2 { median_first }.delay(
                    1,
                    Duration::ZERO,
                    Duration::from_secs(100),
                    &mut rng,
                ))
            })
            .collect();
        first.sort_by(f64::total_cmp);
        let median = first[first.len() / 2];
        assert!((median - 1.0).abs() < 0.15, "median first delay {median}");
        // Later delays grow roughly exponentially.
        let later = mean(|r| {
            Backoff::DecorrelatedV2 { median_first }.delay(
                5,
                Duration::ZERO,
                Duration::from_secs(100),
                r,
            )
        });
        assert!(later > 4.0, "fifth delay mean {later}");
    }

    #[test]
    fn deterministic_families() {
        let cap = Duration::from_secs(10);
        let mut r = SplitMix64::new(0);
        let base = 100 * MS;
        assert_eq!(
            Backoff::Constant(base).delay(7, Duration::ZERO, cap, &mut r),
            base
        );
        assert_eq!(
            Backoff::Linear { base }.delay(3, Duration::ZERO, cap, &mut r),
            300 * MS
        );
        assert_eq!(
            Backoff::Exponential {
                base,
                multiplier: 3.0
            }
            .delay(3, Duration::ZERO, cap, &mut r),
            900 * MS
        );
        assert_eq!(
            Backoff::Exponential {
                base,
                multiplier: 2.0
            }
            .delay(u32::MAX, Duration::ZERO, cap, &mut r),
            cap
        );
        assert!(
            Backoff::Exponential {
                base,
                multiplier: 0.5
            }
            .validate()
            .is_err(),
            "shrinking backoff refused"
        );
    }
}
