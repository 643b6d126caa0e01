//! When to eject an address from its group: a pure decision, apart from the balancer that
//! carries it out.

use std::time::Duration;

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ejection {
    Keep,
    For(Duration),
}

/// Outlier ejection, as Envoy's consecutive-failures detector: an address that fails
/// `consecutive_failures` times in a row (connection errors and 5xx answers) is taken out of
/// the group for `base_ejection` times the number of times it was ejected before plus one
/// (at most ten times the base), unless that would eject more than `max_ejected_percent` of
/// the group; the last address is never ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutlierPolicy {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

impl OutlierPolicy {
    /// After a failure: `run` failures in a row on this address, `ejected` addresses of
    /// `total` out now, this one ejected `times` times before.
    pub(crate) fn decide(&self, run: u32, ejected: usize, total: usize, times: u64) -> Ejection {
        if self.consecutive_failures == 0 || run < self.consecutive_failures {
            return Ejection::Keep;
        }
        let allowed =
            (total * self.max_ejected_percent as usize / 100).min(total.saturating_sub(1));
        if ejected >= allowed {
            return Ejection::Keep;
        }
        let factor = u32::try_from(times.min(9)).unwrap_or(9) + 1;
        Ejection::For(self.base_ejection.saturating_mul(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_the_run_within_the_share_and_backs_off() {
        let p = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        };
        assert_eq!(p.decide(2, 0, 4, 0), Ejection::Keep);
        assert_eq!(p.decide(3, 0, 4, 0), Ejection::For(Duration::from_secs(10)));
        assert_eq!(p.decide(3, 1, 4, 2), Ejection::For(Duration::from_secs(30)));
        assert_eq!(p.decide(3, 2, 4, 0), Ejection::Keep, "half are out already");
        assert_eq!(
            p.decide(4, 0, 1, 0),
            Ejection::Keep,
            "never the last address"
        );
        assert_eq!(
            p.decide(9, 0, 2, 50),
            Ejection::For(Duration::from_secs(100)),
            "at most ten times"
        );
        let all = OutlierPolicy {
            max_ejected_percent: 100,
            ..p
        };
        assert_eq!(
            all.decide(3, 1, 2, 0),
            Ejection::Keep,
            "one stays even at 100%"
        );
        let off = OutlierPolicy {
            consecutive_failures: 0,
            ..p
        };
        assert_eq!(off.decide(100, 0, 4, 0), Ejection::Keep);
    }
}
