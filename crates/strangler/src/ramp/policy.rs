//! The ramp's pure decision: given one window of each side's answers, hold, advance or roll
//! back.

use std::time::Duration;

use super::{Ramp, Sample};

/// Where a route stands on its ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RampStatus {
    /// Moving: advances after each step's hold while the new side stays healthy.
    Running,
    /// Reached the last step and held it: the ramp is done.
    Complete,
    /// Rolled back; stays at the last good step until resumed through the handle.
    RolledBack,
    /// Stopped by an operator (a mode set by hand); resumed through the handle.
    Paused,
}

impl RampStatus {
    /// `running`, `complete`, `rolled_back` or `paused`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::RolledBack => "rolled_back",
            Self::Paused => "paused",
        }
    }
}

/// A route's progress on its ramp.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Progress {
    /// The step being served (an index into the ramp's steps), or `None` before the first
    /// (after a rollback from it: everything on legacy).
    pub(crate) step: Option<usize>,
    /// Time spent healthy at this step.
    pub(crate) held: Duration,
    pub(crate) status: RampStatus,
    /// Legacy's last window with enough answers to compare with.
    pub(crate) baseline: Option<Sample>,
}

impl Progress {
    pub(crate) fn start() -> Self {
        Self {
            step: Some(0),
            held: Duration::ZERO,
            status: RampStatus::Running,
            baseline: None,
        }
    }
}

/// What the ramp does after a window.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Stay at the step, which was healthy in this window.
    Healthy,
    /// Stay at the step without judging it; why.
    Hold(&'static str),
    /// Move to the step.
    Advance(usize),
    /// Go back: to the step (or everything to legacy), and why.
    Rollback(Option<usize>, String),
    /// The last step held: done.
    Complete,
}

/// Judges the new side's window against legacy's: `Some(reason)` when it is worse than the
/// ramp allows, `None` when it is healthy, and `Err` when there are too few answers to say.
pub(crate) fn judge(
    ramp: &Ramp,
    legacy: &Sample,
    new: &Sample,
) -> Result<Option<String>, &'static str> {
    if new.requests < ramp.min_requests {
        return Err("too few answers on the new side");
    }
    let new_rate = new.error_rate();
    if let Some(ceiling) = ramp.max_error_rate
        && new_rate > ceiling
    {
        return Ok(Some(format!(
            "new error rate {:.2}% over the ceiling {:.2}%",
            new_rate * 100.0,
            ceiling * 100.0
        )));
    }
    if legacy.requests < ramp.min_requests {
        return Err("too few answers on the legacy side to compare with");
    }
    let legacy_rate = legacy.error_rate();
    if new_rate > legacy_rate + ramp.max_error_rate_increase {
        return Ok(Some(format!(
            "new error rate {:.2}% against legacy {:.2}% (allowed +{:.2} points)",
            new_rate * 100.0,
            legacy_rate * 100.0,
            ramp.max_error_rate_increase * 100.0
        )));
    }
    if let (Some(n), Some(l)) = (new.p99, legacy.p99) {
        let allowed = l.mul_f64(ramp.max_p99_ratio) + ramp.p99_slack;
        if n > allowed {
            return Ok(Some(format!(
                "new p99 {n:?} against legacy {l:?} (allowed {allowed:?})"
            )));
        }
    }
    Ok(None)
}

/// Decides after one window of `window` length. `legacy` is this window's legacy sample, or
/// the progress's baseline when this one is too thin.
pub(crate) fn evaluate(
    ramp: &Ramp,
    progress: &Progress,
    legacy: &Sample,
    new: &Sample,
    window: Duration,
) -> Verdict {
    if progress.status != RampStatus::Running {
        return Verdict::Hold("not running");
    }
    let Some(step) = progress.step else {
        return Verdict::Hold("not running");
    };
    let legacy = if legacy.requests >= ramp.min_requests {
        legacy
    } else {
        progress.baseline.as_ref().unwrap_or(legacy)
    };
    match judge(ramp, legacy, new) {
        Ok(Some(reason)) => Verdict::Rollback(step.checked_sub(1), reason),
        Err(why) => Verdict::Hold(why),
        Ok(None) => {
            let held = progress.held + window;
            if held < ramp.hold {
                Verdict::Healthy
            } else if step + 1 < ramp.steps.len() {
                Verdict::Advance(step + 1)
            } else {
                Verdict::Complete
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Share;

    fn ramp() -> Ramp {
        Ramp::percentages([10, 25, 50, 100])
            .unwrap()
            .hold(Duration::from_secs(60))
            .window(Duration::from_secs(30))
            .min_requests(50)
    }

    fn sample(requests: u64, errors: u64, p99_ms: u64) -> Sample {
        Sample {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn advances_after_holding_healthy() {
        let r = ramp();
        let w = Duration::from_secs(30);
        let mut p = Progress::start();
        let (l, n) = (sample(900, 9, 20), sample(100, 1, 22));
        assert_eq!(evaluate(&r, &p, &l, &n, w), Verdict::Healthy);
        p.held = w;
        assert_eq!(evaluate(&r, &p, &l, &n, w), Verdict::Advance(1));
        p.step = Some(3);
        assert_eq!(evaluate(&r, &p, &l, &n, w), Verdict::Complete);
    }

    #[test]
    fn rolls_back_to_the_last_good_step() {
        let r = ramp();
        let w = Duration::from_secs(30);
        let mut p = Progress::start();
        p.step = Some(2);
        let l = sample(500, 5, 20);
        // Errors: 1% legacy, 3% new, more than one point over.
        match evaluate(&r, &p, &l, &sample(500, 15, 20), w) {
            Verdict::Rollback(Some(1), why) => assert!(why.contains("error rate"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Latency: 20 ms legacy, 45 ms new, over 1.5x + 10 ms.
        match evaluate(&r, &p, &l, &sample(500, 5, 45), w) {
            Verdict::Rollback(Some(1), why) => assert!(why.contains("p99"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Within: 39 ms.
        assert_eq!(
            evaluate(&r, &p, &l, &sample(500, 5, 39), w),
            Verdict::Healthy
        );
        // From the first step, back to everything on legacy.
        p.step = Some(0);
        assert!(matches!(
            evaluate(&r, &p, &l, &sample(500, 50, 20), w),
            Verdict::Rollback(None, _)
        ));
    }

    #[test]
    fn the_bounds_are_inclusive() {
        // Exactly at each bound is within it; the least step over is not.
        let r = ramp().max_error_rate(Some(0.05));
        let w = Duration::from_secs(30);
        let p = Progress::start();
        let at_min = sample(50, 0, 20);
        assert_eq!(
            evaluate(&r, &p, &at_min, &at_min, w),
            Verdict::Healthy,
            "50 answers judge"
        );
        assert!(matches!(
            evaluate(&r, &p, &sample(49, 0, 20), &at_min, w),
            Verdict::Hold(_)
        ));
        // The ceiling: 5 of 100 is at it, 6 over.
        let legacy = sample(100, 5, 20);
        assert_eq!(
            evaluate(&r, &p, &legacy, &sample(100, 5, 20), w),
            Verdict::Healthy
        );
        assert!(matches!(
            evaluate(&r, &p, &legacy, &sample(100, 6, 20), w),
            Verdict::Rollback(..)
        ));
        // The increase: legacy 2%, new 3% is at +1 point, 4% over.
        let legacy = sample(100, 2, 20);
        let r = ramp();
        assert_eq!(
            evaluate(&r, &p, &legacy, &sample(100, 3, 20), w),
            Verdict::Healthy
        );
        assert!(matches!(
            evaluate(&r, &p, &legacy, &sample(100, 4, 20), w),
            Verdict::Rollback(..)
        ));
        // The p99: legacy 20 ms allows 1.5 x 20 + 10 = 40 ms.
        assert_eq!(
            evaluate(&r, &p, &legacy, &sample(100, 2, 40), w),
            Verdict::Healthy
        );
        assert!(matches!(
            evaluate(&r, &p, &legacy, &sample(100, 2, 41), w),
            Verdict::Rollback(..)
        ));
        for (status, text) in [
            (RampStatus::Running, "running"),
            (RampStatus::Complete, "complete"),
            (RampStatus::RolledBack, "rolled_back"),
            (RampStatus::Paused, "paused"),
        ] {
            assert_eq!(status.as_str(), text);
        }
    }

    #[test]
    fn thin_windows_hold_and_the_baseline_stands_in_for_legacy() {
        let r = ramp();
        let w = Duration::from_secs(30);
        let mut p = Progress::start();
        p.held = w * 10;
        assert_eq!(
            evaluate(&r, &p, &sample(900, 0, 20), &sample(10, 0, 20), w),
            Verdict::Hold("too few answers on the new side")
        );
        assert!(matches!(
            evaluate(&r, &p, &sample(10, 0, 20), &sample(900, 0, 20), w),
            Verdict::Hold(_)
        ));
        p.baseline = Some(sample(900, 0, 20));
        assert_eq!(
            evaluate(&r, &p, &sample(10, 0, 20), &sample(900, 0, 20), w),
            Verdict::Advance(1)
        );
        let mut stopped = p;
        stopped.status = RampStatus::RolledBack;
        assert_eq!(
            evaluate(&r, &stopped, &sample(900, 0, 20), &sample(900, 0, 20), w),
            Verdict::Hold("not running")
        );
    }

    #[test]
    fn the_ceiling_applies_without_legacy() {
        let r = ramp().max_error_rate(Some(0.05));
        let p = Progress::start();
        let w = Duration::from_secs(30);
        assert!(matches!(
            evaluate(&r, &p, &Sample::default(), &sample(100, 6, 20), w),
            Verdict::Rollback(None, _)
        ));
        assert_eq!(r.steps[0], Share::percent(10).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(21), ..ProptestConfig::default() })]

        /// The new side is never judged worse than legacy when it does at least as well.
        #[test]
        fn no_rollback_when_new_is_no_worse(
            lr in 50u64..10_000, le_pct in 0u64..100, l_ms in 1u64..5_000,
            nr in 50u64..10_000, n_ms_off in 0u64..5_000, step in 0usize..4,
        ) {
            let le = lr * le_pct / 100;
            let ne = nr * le_pct / 100; // rate no higher than legacy's (floor)
            let n_ms = l_ms.saturating_sub(n_ms_off).max(1);
            let mut p = Progress::start();
            p.step = Some(step);
            let v = evaluate(&ramp(), &p, &sample(lr, le, l_ms), &sample(nr, ne.min(le * nr / lr), n_ms), Duration::from_secs(30));
            prop_assert!(!matches!(v, Verdict::Rollback(..)), "{v:?}");
        }

        /// An error rate more than the allowance over legacy's always rolls back.
        #[test]
        fn rollback_when_errors_rise(lr in 50u64..10_000, nr in 100u64..10_000, extra_pct in 2u64..50, step in 0usize..4) {
            let mut p = Progress::start();
            p.step = Some(step);
            let ne = nr * extra_pct / 100 + 1;
            let v = evaluate(&ramp(), &p, &sample(lr, 0, 20), &sample(nr, ne, 20), Duration::from_secs(30));
            prop_assert!(matches!(v, Verdict::Rollback(to, _) if to == step.checked_sub(1)), "{v:?}");
        }
    }
}
