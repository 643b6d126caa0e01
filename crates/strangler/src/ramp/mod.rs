//! Ramps with automatic rollback: a route's share of the new side grows step by step (10% ->
//! 25% -> 50% -> 100%) while the new side's error rate and p99 latency stay within bounds of
//! legacy's, and falls back to the last good step when they do not.
//!
//! Every window (30 s by default) the driver reads each side's answers on the route (counted
//! in atomics on the request path: three relaxed additions per answer) and judges the new
//! side:
//!
//! - **worse** when its error rate is over legacy's by more than `max_error_rate_increase`
//!   (1 point by default) or over the optional absolute `max_error_rate`, or its p99 is over
//!   legacy's times `max_p99_ratio` (1.5) plus `p99_slack` (10 ms): the route goes back to the
//!   previous step (from the first step, everything to legacy) and the ramp stops there,
//!   [`RolledBack`](RampStatus::RolledBack), until an operator resumes it through the handle;
//! - **healthy**: once the step has been held healthy for `hold` (5 minutes by default), the
//!   route advances; at the last step, the ramp is complete and the route is on the new side;
//! - **not enough answers** (under `min_requests`, 100 by default, on the new side): nothing
//!   moves. When legacy's own window is thin (a step near 100%), its last full window stands in.
//!
//! Every advance, rollback and completion is logged (`tracing`, target
//! `tower_patterns_strangler`) with both sides' figures, counted in
//! `tower_patterns_strangler_ramp_total{name, route, action}`, and kept in the handle's
//! [`ramp_events`](crate::StranglerHandle::ramp_events). A mode set by hand pauses the ramp.
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_strangler::{Ramp, Share};
//!
//! let ramp = Ramp::percentages([10, 25, 50, 100])
//!     .unwrap()
//!     .hold(Duration::from_secs(600))
//!     .max_error_rate_increase(0.005)
//!     .max_p99_ratio(1.2);
//! assert_eq!(ramp.steps()[1], Share::percent(25).unwrap());
//! ```

use std::time::Duration;

use tower_patterns_core::ConfigError;

use crate::Share;

pub(crate) mod driver;
pub(crate) mod policy;
pub(crate) mod window;

pub use policy::RampStatus;
pub use window::Sample;

/// A ramp: the steps of the new side's share and the bounds it must stay within to advance.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    pub(crate) steps: Vec<Share>,
    pub(crate) hold: Duration,
    pub(crate) window: Duration,
    pub(crate) min_requests: u64,
    pub(crate) max_error_rate_increase: f64,
    pub(crate) max_error_rate: Option<f64>,
    pub(crate) max_p99_ratio: f64,
    pub(crate) p99_slack: Duration,
}

impl Ramp {
    /// A ramp through `steps` (increasing shares).
    pub fn new(steps: impl IntoIterator<Item = Share>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            hold: Duration::from_secs(300),
            window: Duration::from_secs(30),
            min_requests: 100,
            max_error_rate_increase: 0.01,
            max_error_rate: None,
            max_p99_ratio: 1.5,
            p99_slack: Duration::from_millis(10),
        }
    }

    /// A ramp through percentages (`[10, 25, 50, 100]`).
    pub fn percentages(steps: impl IntoIterator<Item = u8>) -> Result<Self, ConfigError> {
        let steps = steps
            .into_iter()
            .map(Share::percent)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(steps))
    }

    /// How long a step is held healthy before advancing (default 5 minutes).
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The evaluation window (default 30 s): both sides are judged on each window's answers.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Answers on the new side needed in a window to judge it (default 100).
    pub fn min_requests(mut self, n: u64) -> Self {
        self.min_requests = n;
        self
    }

    /// How far the new side's error rate may exceed legacy's, as a fraction (default 0.01: one
    /// percentage point).
    pub fn max_error_rate_increase(mut self, delta: f64) -> Self {
        self.max_error_rate_increase = delta;
        self
    }

    /// An error rate the new side may never exceed, whatever legacy does (default none).
    pub fn max_error_rate(mut self, ceiling: Option<f64>) -> Self {
        self.max_error_rate = ceiling;
        self
    }

    /// How many times legacy's p99 the new side's may be, before the slack (default 1.5).
    pub fn max_p99_ratio(mut self, ratio: f64) -> Self {
        self.max_p99_ratio = ratio;
        self
    }

    /// Added to the allowed p99, so microsecond noise does not roll back (default 10 ms).
    pub fn p99_slack(mut self, slack: Duration) -> Self {
        self.p99_slack = slack;
        self
    }

    /// The steps.
    pub fn steps(&self) -> &[Share] {
        &self.steps
    }

    /// The checks the migration's `build()` makes of a ramp, for a caller that validates a
    /// configuration before building (as the gateway does when it reads its file).
    pub fn check(&self) -> Result<(), ConfigError> {
        let field = "ramp";
        if self.steps.is_empty() {
            return Err(ConfigError::new(field, "a ramp has at least one step"));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::new(field, "a ramp's steps increase"));
        }
        if self.steps[0] == Share::NONE {
            return Err(ConfigError::new(
                field,
                "a ramp's first step sends some traffic",
            ));
        }
        if self.window.is_zero() || self.window > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                field,
                "a ramp's window is from 1 ns to a day",
            ));
        }
        if self.hold > Duration::from_secs(30 * 86_400) {
            return Err(ConfigError::new(field, "a ramp's hold is at most 30 days"));
        }
        let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !fraction(self.max_error_rate_increase) || !self.max_error_rate.is_none_or(fraction) {
            return Err(ConfigError::new(
                field,
                "error rates are fractions from 0 to 1",
            ));
        }
        if !self.max_p99_ratio.is_finite() || self.max_p99_ratio < 1.0 || self.max_p99_ratio > 1e6 {
            return Err(ConfigError::new(field, "max_p99_ratio is at least 1"));
        }
        Ok(())
    }
}

/// What a ramp did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RampAction {
    /// Moved to a larger share.
    Advance,
    /// Went back to the last good share and stopped.
    Rollback,
    /// Held the last step: done.
    Complete,
    /// Stopped by a mode set by hand.
    Pause,
    /// Started again by an operator.
    Resume,
}

impl RampAction {
    /// `advance`, `rollback`, `complete`, `pause` or `resume`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Advance => "advance",
            Self::Rollback => "rollback",
            Self::Complete => "complete",
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }
}

/// One decision of a ramp, as logged and kept in the handle.
#[derive(Clone, Debug, PartialEq)]
pub struct RampEvent {
    /// The route.
    pub route: std::sync::Arc<str>,
    /// What happened.
    pub action: RampAction,
    /// The share before.
    pub from: Share,
    /// The share after.
    pub to: Share,
    /// Why, in words.
    pub reason: String,
    /// Legacy's answers in the window judged.
    pub legacy: Sample,
    /// The new side's answers in the window judged.
    pub new: Sample,
    /// When, as wall-clock time.
    pub at: std::time::SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_are_validated() {
        let ok = Ramp::percentages([10, 50, 100]).unwrap();
        assert!(ok.check().is_ok());
        assert!(Ramp::new([]).check().is_err());
        assert!(Ramp::percentages([50, 10]).unwrap().check().is_err());
        assert!(Ramp::percentages([10, 10]).unwrap().check().is_err());
        assert!(Ramp::percentages([0, 10]).unwrap().check().is_err());
        assert!(Ramp::percentages([101]).is_err());
        assert!(ok.clone().window(Duration::ZERO).check().is_err());
        assert!(
            ok.clone()
                .max_error_rate_increase(f64::NAN)
                .check()
                .is_err()
        );
        assert!(ok.clone().max_error_rate(Some(2.0)).check().is_err());
        assert!(ok.clone().max_p99_ratio(0.5).check().is_err());
        assert!(
            ok.clone()
                .hold(Duration::from_secs(40 * 86_400))
                .check()
                .is_err()
        );
    }
}
