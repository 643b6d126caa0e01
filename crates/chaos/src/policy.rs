//! The pure decision: from a plan and 64 random bits, which fault (if any) a call gets.

use tower_patterns_core::{ConfigError, rng};

use crate::fault::{Effect, Fault};

/// A checked list of faults whose rates add up to at most 1, with their cumulative bounds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    faults: Vec<Fault>,
    /// `bounds[i]` is the sum of the rates of faults `0..=i`.
    bounds: Vec<f64>,
}

/// How far above 1 the sum of the rates may go before it is refused: room for rounding in
/// rates such as `0.1 + 0.2 + 0.7`.
const SLACK: f64 = 1e-9;

impl Plan {
    pub(crate) fn new(faults: Vec<Fault>) -> Result<Self, ConfigError> {
        let mut bounds = Vec::with_capacity(faults.len());
        let mut total = 0.0;
        for fault in &faults {
            fault.check()?;
            total += fault.rate;
            bounds.push(total);
        }
        if total > 1.0 + SLACK {
            return Err(ConfigError::new(
                "faults",
                "rates must add up to at most 1 (one fault per call)",
            ));
        }
        Ok(Self { faults, bounds })
    }

    pub(crate) fn faults(&self) -> &[Fault] {
        &self.faults
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The sum of the rates: the share of selected calls that get some fault.
    pub(crate) fn total(&self) -> f64 {
        self.bounds.last().copied().unwrap_or(0.0)
    }

    /// The fault that random `bits` pick, or `None` for a call left alone. A uniform draw `u`
    /// in `[0, 1)` picks the first fault whose cumulative bound is above it.
    pub(crate) fn pick(&self, bits: u64) -> Option<&Effect> {
        let u = rng::unit(bits);
        let at = self.bounds.iter().position(|&bound| u < bound)?;
        Some(&self.faults[at].effect)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use proptest::prelude::*;
    use tower_patterns_core::rng::{GOLDEN_GAMMA, mix};

    use super::*;
    use crate::fault::FaultKind;

    fn kind(effect: &Effect) -> FaultKind {
        Fault {
            effect: effect.clone(),
            rate: 1.0,
        }
        .kind()
    }

    #[test]
    fn rates_are_checked_alone_and_together() {
        assert_eq!(
            Plan::new(vec![Fault::hang().rate(1.5)])
                .unwrap_err()
                .field(),
            "fault.rate"
        );
        assert_eq!(
            Plan::new(vec![Fault::hang().rate(f64::NAN)])
                .unwrap_err()
                .field(),
            "fault.rate"
        );
        assert_eq!(
            Plan::new(vec![Fault::hang().rate(-0.1)])
                .unwrap_err()
                .field(),
            "fault.rate"
        );
        let over = Plan::new(vec![Fault::hang().rate(0.6), Fault::abort().rate(0.5)]);
        assert_eq!(over.unwrap_err().field(), "faults");
        let rounded = Plan::new(vec![
            Fault::hang().rate(0.1),
            Fault::abort().rate(0.2),
            Fault::grpc(14).rate(0.7),
        ]);
        assert!(rounded.is_ok());
        assert_eq!(
            Plan::new(vec![Fault::grpc(0)]).unwrap_err().field(),
            "fault.grpc"
        );
        assert_eq!(
            Plan::new(vec![Fault::grpc(17)]).unwrap_err().field(),
            "fault.grpc"
        );
        assert!(Plan::new(vec![Fault::grpc(16), Fault::grpc(1).rate(0.0)]).is_ok());
    }

    #[test]
    fn the_draw_walks_the_cumulative_rates() {
        let plan = Plan::new(vec![
            Fault::latency(Duration::from_secs(1)).rate(0.25),
            Fault::status(StatusCode::BAD_GATEWAY).rate(0.25),
        ])
        .unwrap();
        // `unit` keeps the top 53 bits: these are 0, 0.25 - ε, 0.25, 0.5 - ε, 0.5 and 1 - ε.
        let at = |u: f64| ((u * (1u64 << 53) as f64) as u64) << 11;
        assert_eq!(plan.pick(0).map(kind), Some(FaultKind::Latency));
        assert_eq!(
            plan.pick(at(0.25) - (1 << 11)).map(kind),
            Some(FaultKind::Latency)
        );
        assert_eq!(plan.pick(at(0.25)).map(kind), Some(FaultKind::Status));
        assert_eq!(
            plan.pick(at(0.5) - (1 << 11)).map(kind),
            Some(FaultKind::Status)
        );
        assert!(plan.pick(at(0.5)).is_none());
        assert!(plan.pick(u64::MAX).is_none());
        assert_eq!(plan.total(), 0.5);
        assert!(Plan::default().pick(0).is_none());
        assert_eq!(Plan::default().total(), 0.0);
    }

    proptest! {
        // A fixed seed for the cases: the run is the same on every machine.
        #![proptest_config(ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(23),
            ..ProptestConfig::default()
        })]

        /// Over 10,000 seeded draws each fault hits its rate within five standard deviations
        /// of a binomial draw (about two points at most), and the calls left alone make up
        /// the rest.
        #[test]
        fn shares_match_the_rates(a in 0.0..0.5f64, b in 0.0..0.5f64, seed: u64) {
            let plan = Plan::new(vec![Fault::hang().rate(a), Fault::abort().rate(b)]).unwrap();
            let mut hits = [0u32; 3];
            for n in 0..10_000u64 {
                let bits = mix(seed.wrapping_add(n.wrapping_mul(GOLDEN_GAMMA)));
                match plan.pick(bits).map(kind) {
                    Some(FaultKind::Hang) => hits[0] += 1,
                    Some(FaultKind::Abort) => hits[1] += 1,
                    _ => hits[2] += 1,
                }
            }
            let share = |n: u32| f64::from(n) / 10_000.0;
            let within = |p: f64| 5.0 * (p * (1.0 - p) / 10_000.0).sqrt() + 1e-3;
            prop_assert!((share(hits[0]) - a).abs() < within(a), "hang {} against {a}", share(hits[0]));
            prop_assert!((share(hits[1]) - b).abs() < within(b), "abort {} against {b}", share(hits[1]));
            let rest = 1.0 - a - b;
            prop_assert!((share(hits[2]) - rest).abs() < within(rest));
        }
    }
}
