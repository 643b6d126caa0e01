//! The GCRA rate: a burst and an interval.

use std::{num::NonZeroU32, time::Duration};

use tower_patterns_core::ConfigError;

/// A GCRA rate: a burst of `burst` requests, refilled one every `interval`.
///
/// `Rate::per_second(10)` allows 10 at once and then one every 100 ms; `.burst(1)` makes it
/// smooth (no two requests closer than 100 ms).
///
/// A rate is a plain value and may be invalid (a burst of 0, an interval below 1 ns, a refill
/// longer than [`Rate::MAX_REFILL`]): [`Rate::validate`] says so, builders refuse an invalid
/// default, and a limiter given an invalid rate for a request (by `rate_for`) refuses that
/// request with the [`ConfigError`] instead of admitting it.
///
/// ```
/// use std::time::Duration;
/// use tower_patterns_ratelimit::Rate;
///
/// let rate = Rate::per_minute(60).burst(5);
/// assert_eq!(rate.interval(), Duration::from_secs(1));
/// assert_eq!(rate.burst_size(), 5);
/// assert!(Rate::per_second(0).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    burst: u32,
    interval: Duration,
}

impl Rate {
    /// The longest refill time (burst × interval) a valid rate may have: 100 years of 365
    /// days. Longer ones would overflow the limiters' nanosecond and microsecond clocks.
    pub const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// `n` per `period`, with a burst of `n`.
    ///
    /// The interval is `period / n`, rounded down to the nanosecond: `n = 0`, or a period
    /// shorter than `n` nanoseconds, gives an interval of zero, which is not a valid rate.
    pub const fn new(n: u32, period: Duration) -> Self {
        let interval = if n == 0 {
            Duration::ZERO
        } else {
            let nanos = period.as_nanos() / n as u128;
            Duration::from_nanos(if nanos > u64::MAX as u128 {
                u64::MAX
            } else {
                nanos as u64
            })
        };
        Self { burst: n, interval }
    }

    /// `n` per second, with a burst of `n`.
    pub const fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `n` per minute, with a burst of `n`.
    pub const fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` per hour, with a burst of `n`.
    pub const fn per_hour(n: u32) -> Self {
        Self::new(n, Duration::from_secs(3600))
    }

    /// `n` per day as a GCRA (refilled evenly; for a calendar-day allowance that resets at
    /// midnight, see [`Quota`](crate::Quota)).
    pub const fn per_day(n: u32) -> Self {
        Self::new(n, Duration::from_secs(86_400))
    }

    /// Sets the burst: how many requests may arrive at once after a quiet spell.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The time one request's allowance takes to come back.
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// The largest burst.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The time an emptied limit takes to refill completely.
    pub fn refill(&self) -> Duration {
        self.interval.saturating_mul(self.burst)
    }

    /// Checks the rate: a burst of at least 1, an interval of at least 1 ns, and a refill time
    /// of at most [`Rate::MAX_REFILL`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.burst == 0 {
            return Err(ConfigError::new("rate", "must allow at least 1 request"));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new(
                "rate",
                "allows more than one request per nanosecond",
            ));
        }
        if self.interval.as_nanos() * u128::from(self.burst) > Self::MAX_REFILL.as_nanos() {
            return Err(ConfigError::new(
                "rate",
                "takes more than 100 years to refill",
            ));
        }
        Ok(())
    }

    /// governor's quota for a rate, or the reason it has none.
    pub(crate) fn quota(&self) -> Result<governor::Quota, ConfigError> {
        self.validate()?;
        match (
            NonZeroU32::new(self.burst),
            governor::Quota::with_period(self.interval),
        ) {
            (Some(burst), Some(quota)) => Ok(quota.allow_burst(burst)),
            // Not reached: `validate` refuses a zero burst and a zero interval.
            _ => Err(ConfigError::new("rate", "is not valid")),
        }
    }
}
