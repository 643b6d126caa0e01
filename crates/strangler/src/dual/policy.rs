//! The worker's decision after a failed delivery: when to try again, and whether the
//! secondary has now missed the write.

use std::time::Duration;

use tower_patterns_core::{backoff::Backoff, rng::SplitMix64};

use super::store::{Deferral, Pending};

/// The retry settings of a dual write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RetryPolicy {
    pub(crate) backoff: Backoff,
    pub(crate) cap: Duration,
    pub(crate) missed_after: u32,
}

/// What to record after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AfterFailure {
    pub(crate) deferral: Deferral,
    /// The entry became missed with this attempt (it was not before).
    pub(crate) newly_missed: bool,
}

impl RetryPolicy {
    /// After a failed attempt on `entry` at `now_ms`: one more attempt, the next due time
    /// (the backoff for this attempt number, capped), and missed from now on once the
    /// attempts reach `missed_after` or the failure is one retrying is not expected to cure.
    /// An entry missed already keeps its time.
    pub(crate) fn after_failure(
        &self,
        entry: &Pending,
        permanent: bool,
        error: String,
        now_ms: u64,
        rng: &mut SplitMix64,
    ) -> AfterFailure {
        let attempts = entry.attempts.saturating_add(1);
        let delay = self.backoff.delay(attempts, Duration::ZERO, self.cap, rng);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        let misses = permanent || attempts >= self.missed_after;
        let missed_since_ms = entry.missed_since_ms.or(misses.then_some(now_ms));
        AfterFailure {
            newly_missed: entry.missed_since_ms.is_none() && missed_since_ms.is_some(),
            deferral: Deferral {
                seq: entry.seq,
                attempts,
                due_ms: now_ms.saturating_add(delay_ms),
                missed_since_ms,
                error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Exponential {
                base: Duration::from_millis(100),
                multiplier: 2.0,
            },
            cap: Duration::from_secs(1),
            missed_after: 3,
        }
    }

    fn entry(attempts: u32, missed: Option<u64>) -> Pending {
        Pending {
            seq: 7,
            key: "k".into(),
            version: 1,
            attempts,
            missed_since_ms: missed,
        }
    }

    #[test]
    fn backs_off_and_becomes_missed_at_the_set_attempt() {
        let p = policy();
        let mut rng = SplitMix64::new(1);
        let mut e = entry(0, None);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let out = p.after_failure(&e, false, "busy".into(), 1_000, &mut rng);
            seen.push((
                out.deferral.attempts,
                out.deferral.due_ms - 1_000,
                out.deferral.missed_since_ms,
                out.newly_missed,
            ));
            e.attempts = out.deferral.attempts;
            e.missed_since_ms = out.deferral.missed_since_ms;
        }
        assert_eq!(
            seen,
            [
                (1, 100, None, false),
                (2, 200, None, false),
                (3, 400, Some(1_000), true),
                (4, 800, Some(1_000), false),
                (5, 1_000, Some(1_000), false),
                (6, 1_000, Some(1_000), false),
            ]
        );
    }

    #[test]
    fn a_permanent_failure_is_missed_at_once_and_keeps_its_time() {
        let p = policy();
        let mut rng = SplitMix64::new(1);
        let out = p.after_failure(&entry(0, None), true, "refused".into(), 5, &mut rng);
        assert_eq!(out.deferral.missed_since_ms, Some(5));
        assert!(out.newly_missed);
        let out = p.after_failure(&entry(9, Some(2)), true, "refused".into(), 5, &mut rng);
        assert_eq!(out.deferral.missed_since_ms, Some(2));
        assert!(!out.newly_missed);
        // A zero delay still moves the entry to later, so a round never repeats it.
        let zero = RetryPolicy {
            backoff: Backoff::Constant(Duration::ZERO),
            ..p
        };
        let out = zero.after_failure(&entry(0, None), false, String::new(), 5, &mut rng);
        assert_eq!(out.deferral.due_ms, 6);
    }
}
