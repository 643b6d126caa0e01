//! What a projection does when an event fails: a pure decision, carried out by the runner.

use std::time::Duration;

use tower_patterns_core::{ConfigError, backoff::Backoff, rng::SplitMix64};

use super::ApplyError;

/// What to do once a retry policy has used its attempts (or met a permanent error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// Record the event in the dead-letter table and go on with the next.
    DeadLetter,
    /// Stop the projection before the event; its checkpoint stays just before it.
    Stop,
}

/// What a projection does when applying an event fails. One failing projection never holds
/// up another: each has its own runner and its own policy.
///
/// ```
/// use std::time::Duration;
/// use tower_patterns_core::backoff::Backoff;
/// use tower_patterns_cqrs::{Exhausted, FailurePolicy};
///
/// // The default: 10 attempts with exponential backoff from 100 ms to 10 s, then stop.
/// let _ = FailurePolicy::default();
/// // Five attempts, then set the event aside and go on.
/// let policy = FailurePolicy::retry(5)
///     .backoff(Backoff::Exponential { base: Duration::from_millis(50), multiplier: 2.0 }, Duration::from_secs(2))
///     .then(Exhausted::DeadLetter);
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailurePolicy {
    /// Try the event again after a backoff, up to `attempts` attempts in all (0: forever)
    /// for transient errors; a permanent error goes to `then` at once.
    Retry {
        /// Attempts in all, the first included; 0 retries for ever.
        attempts: u32,
        /// The delay before each retry.
        backoff: Backoff,
        /// The longest delay.
        cap: Duration,
        /// What follows the last attempt, or a permanent error.
        then: Exhausted,
    },
    /// Record the event in the dead-letter table at once and go on.
    DeadLetter,
    /// Stop at once, the checkpoint just before the event.
    Stop,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self::retry(10)
    }
}

/// What the runner does next with a failed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait, then apply the event again.
    Retry(Duration),
    /// Record it as a dead letter and go on.
    DeadLetter,
    /// Stop the projection before it.
    Stop,
}

impl FailurePolicy {
    /// Retry up to `attempts` attempts in all (0: forever) with exponential backoff from
    /// 100 ms, doubling, capped at 10 s; then stop.
    pub const fn retry(attempts: u32) -> Self {
        Self::Retry {
            attempts,
            backoff: Backoff::Exponential {
                base: Duration::from_millis(100),
                multiplier: 2.0,
            },
            cap: Duration::from_secs(10),
            then: Exhausted::Stop,
        }
    }

    /// Record failing events as dead letters at once.
    pub const fn dead_letter() -> Self {
        Self::DeadLetter
    }

    /// Stop at the first failing event.
    pub const fn stop() -> Self {
        Self::Stop
    }

    /// Sets the backoff and its cap of a retry policy (no effect on the others).
    #[must_use]
    pub const fn backoff(mut self, backoff: Backoff, cap: Duration) -> Self {
        if let Self::Retry {
            backoff: b, cap: c, ..
        } = &mut self
        {
            *b = backoff;
            *c = cap;
        }
        self
    }

    /// Sets what follows the last attempt of a retry policy (no effect on the others).
    #[must_use]
    pub const fn then(mut self, then: Exhausted) -> Self {
        if let Self::Retry { then: t, .. } = &mut self {
            *t = then;
        }
        self
    }

    /// Checks the settings (the projection's `build()` calls it).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `policy` when the backoff is invalid or its cap is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Self::Retry { backoff, cap, .. } = self {
            backoff
                .validate()
                .map_err(|e| ConfigError::new("policy", e.reason().to_owned()))?;
            if cap.is_zero() {
                return Err(ConfigError::new(
                    "policy",
                    "the backoff cap must be above zero",
                ));
            }
        }
        Ok(())
    }

    /// What to do after attempt `attempt` (1 for the first) failed with `error`; `previous`
    /// is the last delay waited, `rng` the jitter source.
    pub fn decide(
        &self,
        attempt: u32,
        error: &ApplyError,
        previous: Duration,
        rng: &mut SplitMix64,
    ) -> Action {
        let give_up = |then: Exhausted| match then {
            Exhausted::DeadLetter => Action::DeadLetter,
            Exhausted::Stop => Action::Stop,
        };
        match *self {
            Self::DeadLetter => Action::DeadLetter,
            Self::Stop => Action::Stop,
            Self::Retry { then, .. } if !error.is_transient() => give_up(then),
            Self::Retry { attempts, then, .. } if attempts != 0 && attempt >= attempts => {
                give_up(then)
            }
            Self::Retry { backoff, cap, .. } => {
                Action::Retry(backoff.delay(attempt, previous, cap, rng))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> ApplyError {
        ApplyError::transient("busy")
    }

    #[test]
    fn retry_waits_with_backoff_then_gives_up_as_told() {
        let mut rng = SplitMix64::new(7);
        let p = FailurePolicy::retry(3)
            .backoff(
                Backoff::Exponential {
                    base: Duration::from_millis(10),
                    multiplier: 2.0,
                },
                Duration::from_secs(1),
            )
            .then(Exhausted::DeadLetter);
        let z = Duration::ZERO;
        assert_eq!(
            p.decide(1, &transient(), z, &mut rng),
            Action::Retry(Duration::from_millis(10))
        );
        assert_eq!(
            p.decide(2, &transient(), z, &mut rng),
            Action::Retry(Duration::from_millis(20))
        );
        assert_eq!(p.decide(3, &transient(), z, &mut rng), Action::DeadLetter);
        let stop = p.then(Exhausted::Stop);
        assert_eq!(stop.decide(3, &transient(), z, &mut rng), Action::Stop);
    }

    #[test]
    fn a_permanent_error_is_not_retried() {
        let mut rng = SplitMix64::new(7);
        let p = FailurePolicy::retry(0).then(Exhausted::DeadLetter);
        let e = ApplyError::permanent("bad payload");
        assert_eq!(
            p.decide(1, &e, Duration::ZERO, &mut rng),
            Action::DeadLetter
        );
    }

    #[test]
    fn zero_attempts_retries_for_ever() {
        let mut rng = SplitMix64::new(7);
        let p = FailurePolicy::retry(0);
        assert!(matches!(
            p.decide(1_000, &transient(), Duration::ZERO, &mut rng),
            Action::Retry(_)
        ));
    }

    #[test]
    fn dead_letter_and_stop_act_at_once() {
        let mut rng = SplitMix64::new(7);
        let z = Duration::ZERO;
        assert_eq!(
            FailurePolicy::dead_letter().decide(1, &transient(), z, &mut rng),
            Action::DeadLetter
        );
        assert_eq!(
            FailurePolicy::stop().decide(1, &transient(), z, &mut rng),
            Action::Stop
        );
    }

    #[test]
    fn validation_names_the_policy() {
        let zero_cap = FailurePolicy::retry(3)
            .backoff(Backoff::Constant(Duration::from_millis(1)), Duration::ZERO);
        assert_eq!(zero_cap.validate().unwrap_err().field(), "policy");
        let bad = FailurePolicy::retry(3).backoff(
            Backoff::Exponential {
                base: Duration::from_millis(1),
                multiplier: 0.5,
            },
            Duration::from_secs(1),
        );
        assert!(bad.validate().is_err());
        assert!(FailurePolicy::default().validate().is_ok());
    }
}
