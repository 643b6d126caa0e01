//! Configuration of a circuit breaker, validated when built.

use std::{sync::Arc, time::Duration};

use tower_patterns_core::ConfigError;

use crate::circuit::window::Stats;

/// Which calls the failure and slow-call rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls (default: 100).
    Count(u32),
    /// The calls of the last `size`, counted in `buckets` buckets of `size / buckets` each.
    Time {
        /// The length of the window.
        size: Duration,
        /// How many buckets it is counted in (1 to 1,000; each at least 1 ms).
        buckets: u32,
    },
}

/// How long the circuit stays open once it trips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpenDuration {
    /// Always the same (default: 30 s).
    Fixed(Duration),
    /// Grows across consecutive trips (open, half-open fails, open again) and starts over
    /// once the circuit closes: `min(max, base · multiplier^(trips − 1))`, of which the
    /// fraction `jitter` is random (`d · (1 − jitter · U[0, 1))`), so breakers that tripped
    /// together do not probe together.
    Exponential {
        /// The first open duration.
        base: Duration,
        /// The longest open duration.
        max: Duration,
        /// The growth per consecutive trip (at least 1).
        multiplier: f64,
        /// The random fraction of each duration, in `[0, 1]`.
        jitter: f64,
    },
}

impl OpenDuration {
    pub(crate) fn nanos(&self, consecutive_trips: u32, unit_random: f64) -> u64 {
        match *self {
            Self::Fixed(d) => saturating_nanos(d),
            Self::Exponential {
                base,
                max,
                multiplier,
                jitter,
            } => {
                let exp = multiplier.powi(consecutive_trips.saturating_sub(1).min(1_000) as i32);
                let full = (base.as_secs_f64() * exp).min(max.as_secs_f64());
                let d = full * (1.0 - jitter * unit_random);
                (d * 1e9) as u64
            }
        }
    }
}

pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why the circuit tripped or changed state.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// The failure rate in the window reached the threshold.
    FailureRate(f64),
    /// The number of failures in the window reached the threshold.
    FailureCount(u64),
    /// This many calls in a row failed.
    ConsecutiveFailures(u64),
    /// The rate of slow calls (finished or still in flight) reached the threshold.
    SlowCallRate(f64),
    /// The open duration elapsed.
    OpenElapsed,
    /// The half-open probes (or the last ramp stage) passed.
    ProbesPassed,
    /// A ramp stage passed; the next admits more traffic.
    StagePassed,
    /// Half-open probes failed.
    ProbesFailed,
    /// No verdict on the probes within the maximum wait in half-open.
    HalfOpenTimeout,
    /// Forced through the handle.
    Forced,
    /// Reset through the handle.
    Reset,
}

/// The settings of a breaker; built by [`CircuitBreakerLayer::builder`](crate::CircuitBreakerLayer::builder).
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) window: SlidingWindow,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) failure_count: Option<u64>,
    pub(crate) consecutive_failures: Option<u64>,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate: f64,
    pub(crate) minimum_calls: u64,
    pub(crate) open_duration: OpenDuration,
    pub(crate) probes: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) ramp: Vec<f64>,
    pub(crate) seed: u64,
    pub(crate) backpressure: bool,
    pub(crate) call_metrics: bool,
    pub(crate) automatic_transition: bool,
}

/// The most half-open probes (they are counted in 12 bits of the state word).
pub const MAX_PROBES: u32 = 4_095;

impl Config {
    /// The defaults; see [`CircuitBreakerBuilder`](crate::CircuitBreakerBuilder).
    pub(crate) fn defaults(name: Arc<str>) -> Self {
        Self {
            name,
            window: SlidingWindow::Count(100),
            failure_rate: Some(0.5),
            failure_count: None,
            consecutive_failures: None,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            minimum_calls: 20,
            open_duration: OpenDuration::Fixed(Duration::from_secs(30)),
            probes: 5,
            max_wait_in_half_open: Some(Duration::from_secs(30)),
            ramp: Vec::new(),
            seed: 0x5eed_b7ea_ce75,
            backpressure: false,
            call_metrics: false,
            automatic_transition: false,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the circuit must trip, given the window, the current run of failures and the
    /// slow calls still in flight. Pure, for the reference model and the property tests.
    pub(crate) fn trip_reason(
        &self,
        stats: Stats,
        consecutive: u64,
        slow_in_flight: u64,
    ) -> Option<Reason> {
        if let Some(k) = self.consecutive_failures
            && consecutive >= k
        {
            return Some(Reason::ConsecutiveFailures(consecutive));
        }
        if let Some(k) = self.failure_count
            && stats.failures >= k
        {
            return Some(Reason::FailureCount(stats.failures));
        }
        if let Some(threshold) = self.failure_rate
            && stats.calls >= self.minimum_calls
            && stats.calls > 0
        {
            let rate = stats.failures as f64 / stats.calls as f64;
            if rate >= threshold {
                return Some(Reason::FailureRate(rate));
            }
        }
        if self.slow_call_duration.is_some() {
            let calls = stats.calls + slow_in_flight;
            if calls >= self.minimum_calls && calls > 0 {
                let rate = (stats.slow + slow_in_flight) as f64 / calls as f64;
                if rate >= self.slow_call_rate {
                    return Some(Reason::SlowCallRate(rate));
                }
            }
        }
        None
    }

    /// Whether `failures` failed probes out of `probes` already decide to reopen.
    pub(crate) fn probes_fail(&self, failures: u64) -> bool {
        match self.failure_rate {
            Some(threshold) => failures as f64 / f64::from(self.probes) >= threshold,
            None => failures > 0,
        }
    }

    pub(crate) fn stages(&self) -> usize {
        self.ramp.len().max(1)
    }

    /// Validates the settings and settles those that depend on each other: a minimum number
    /// of calls larger than a count window is the window's size (as resilience4j does), so
    /// the rates are judged once the window is full.
    pub(crate) fn validated(mut self) -> Result<Self, ConfigError> {
        self.validate()?;
        if let SlidingWindow::Count(n) = self.window {
            self.minimum_calls = self.minimum_calls.min(u64::from(n));
        }
        Ok(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rate = |field, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("must be in (0, 1], got {v}"),
                ))
            }
        };
        if let Some(r) = self.failure_rate {
            rate("failure_rate", r)?;
        }
        if self.slow_call_duration.is_some() {
            rate("slow_call_rate", self.slow_call_rate)?;
        }
        if self.failure_rate.is_none()
            && self.failure_count.is_none()
            && self.consecutive_failures.is_none()
            && self.slow_call_duration.is_none()
        {
            return Err(ConfigError::new(
                "trip conditions",
                "need at least one of failure_rate, failure_count, consecutive_failures, slow_calls",
            ));
        }
        if self.failure_count == Some(0) {
            return Err(ConfigError::new("failure_count", "must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        match self.window {
            SlidingWindow::Count(n) => {
                if !(1..=1_000_000).contains(&n) {
                    return Err(ConfigError::new("window", "count must be in 1..=1000000"));
                }
                if let Some(k) = self.failure_count
                    && k > u64::from(n)
                {
                    return Err(ConfigError::new(
                        "failure_count",
                        format!("is {k} but the window holds only {n} calls"),
                    ));
                }
            }
            SlidingWindow::Time { size, buckets } => {
                if !(1..=1_000).contains(&buckets) {
                    return Err(ConfigError::new("window", "buckets must be in 1..=1000"));
                }
                if size / buckets < Duration::from_millis(1) {
                    return Err(ConfigError::new(
                        "window",
                        "buckets must be at least 1 ms each",
                    ));
                }
            }
        }
        match self.open_duration {
            OpenDuration::Fixed(d) if d.is_zero() => {
                return Err(ConfigError::new(
                    "open_duration",
                    "must be greater than zero",
                ));
            }
            OpenDuration::Exponential {
                base,
                max,
                multiplier,
                jitter,
            } => {
                if base.is_zero() || max < base {
                    return Err(ConfigError::new("open_duration", "needs 0 < base <= max"));
                }
                if !(multiplier >= 1.0 && multiplier.is_finite()) {
                    return Err(ConfigError::new("open_duration", "multiplier must be >= 1"));
                }
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(ConfigError::new(
                        "open_duration",
                        "jitter must be in [0, 1]",
                    ));
                }
            }
            OpenDuration::Fixed(_) => {}
        }
        if !(1..=MAX_PROBES).contains(&self.probes) {
            return Err(ConfigError::new(
                "half_open_probes",
                format!("must be in 1..={MAX_PROBES}"),
            ));
        }
        if self.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_wait_in_half_open",
                "must be greater than zero",
            ));
        }
        if self.ramp.len() > 8 {
            return Err(ConfigError::new("half_open_ramp", "at most 8 stages"));
        }
        let mut last = 0.0;
        for &share in &self.ramp {
            if !(share > last && share <= 1.0) {
                return Err(ConfigError::new(
                    "half_open_ramp",
                    "shares must be in (0, 1] and strictly increasing",
                ));
            }
            last = share;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::defaults("t".into())
    }

    #[test]
    fn defaults_are_valid_and_bad_settings_are_refused() {
        cfg().validate().unwrap();
        let bad = |f: fn(&mut Config)| {
            let mut c = cfg();
            f(&mut c);
            c.validate().unwrap_err().field()
        };
        assert_eq!(bad(|c| c.failure_rate = Some(0.0)), "failure_rate");
        assert_eq!(bad(|c| c.failure_rate = Some(1.5)), "failure_rate");
        assert_eq!(bad(|c| c.failure_rate = None), "trip conditions");
        assert_eq!(bad(|c| c.minimum_calls = 0), "minimum_calls");
        assert_eq!(bad(|c| c.window = SlidingWindow::Count(0)), "window");
        assert_eq!(
            bad(|c| c.window = SlidingWindow::Time {
                size: Duration::from_millis(5),
                buckets: 10
            }),
            "window"
        );
        assert_eq!(
            bad(|c| c.open_duration = OpenDuration::Fixed(Duration::ZERO)),
            "open_duration"
        );
        assert_eq!(bad(|c| c.probes = 0), "half_open_probes");
        assert_eq!(bad(|c| c.probes = 5_000), "half_open_probes");
        assert_eq!(bad(|c| c.ramp = vec![0.5, 0.25]), "half_open_ramp");
        assert_eq!(bad(|c| c.failure_count = Some(101)), "failure_count");
        assert_eq!(
            bad(|c| c.slow_call_duration = Some(Duration::ZERO)),
            "slow_call_duration"
        );
        assert_eq!(
            bad(|c| {
                c.open_duration = OpenDuration::Exponential {
                    base: Duration::from_secs(1),
                    max: Duration::from_secs(10),
                    multiplier: 0.5,
                    jitter: 0.0,
                }
            }),
            "open_duration"
        );
    }

    #[test]
    fn a_minimum_larger_than_the_count_window_is_the_window() {
        let mut c = cfg();
        c.window = SlidingWindow::Count(10);
        assert_eq!(c.clone().validated().unwrap().minimum_calls, 10);
        c.minimum_calls = 7;
        assert_eq!(c.clone().validated().unwrap().minimum_calls, 7);
        c.window = SlidingWindow::Time {
            size: Duration::from_secs(10),
            buckets: 10,
        };
        c.minimum_calls = 500;
        assert_eq!(
            c.validated().unwrap().minimum_calls,
            500,
            "time windows keep it"
        );
    }

    #[test]
    fn exponential_open_duration_grows_caps_and_jitters() {
        let d = OpenDuration::Exponential {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.5,
        };
        let s = |trips, u| d.nanos(trips, u) as f64 / 1e9;
        assert_eq!(s(1, 0.0), 10.0);
        assert_eq!(s(2, 0.0), 20.0);
        assert_eq!(s(3, 0.0), 40.0);
        assert_eq!(s(10, 0.0), 300.0);
        assert_eq!(s(1, 0.999_999), 5.000_005);
        assert_eq!(s(u32::MAX, 0.0), 300.0);
    }

    #[test]
    fn trip_conditions() {
        let mut c = cfg();
        c.minimum_calls = 10;
        let st = |calls, failures, slow| Stats {
            calls,
            failures,
            slow,
        };
        assert_eq!(
            c.trip_reason(st(9, 9, 0), 0, 0),
            None,
            "below minimum calls"
        );
        assert_eq!(
            c.trip_reason(st(10, 5, 0), 0, 0),
            Some(Reason::FailureRate(0.5))
        );
        assert_eq!(c.trip_reason(st(10, 4, 0), 0, 0), None);
        c.consecutive_failures = Some(3);
        assert_eq!(
            c.trip_reason(st(1, 1, 0), 3, 0),
            Some(Reason::ConsecutiveFailures(3))
        );
        c.slow_call_duration = Some(Duration::from_secs(1));
        c.slow_call_rate = 0.5;
        assert_eq!(
            c.trip_reason(st(8, 0, 3), 0, 2),
            Some(Reason::SlowCallRate(0.5))
        );
        assert!(c.probes_fail(3), "3 of 5 probes failing reaches 50%");
        assert!(!c.probes_fail(2));
    }
}
