//! The pure decision: which side serves a request, and why.

use super::{Mode, Side};

/// Why a request went where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The override header named the side.
    Override,
    /// The caller's tenant is pinned to the side.
    Tenant,
    /// The route's mode sends everything to one side (or shadows).
    Mode,
    /// The caller's bucket fell on this side of the split.
    Split,
    /// A split route, but the request carries no key: legacy.
    NoKey,
}

/// Where a request goes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The side.
    pub side: Side,
    /// Why.
    pub reason: Reason,
}

/// Decides a request's side. In order: the override header's side; then the tenant's pin
/// (except in shadow mode, where legacy answers anyway); then the route's mode; for a split,
/// the caller's bucket (computed only then, by `bucket`), and legacy when there is no key.
///
/// ```
/// use tower_patterns_strangler::{decide, Mode, Reason, Share, Side};
///
/// let half = Mode::Split(Share::HALF);
/// assert_eq!(decide(half, None, None, || Some(4_999)).side, Side::New);
/// assert_eq!(decide(half, None, None, || Some(5_000)).side, Side::Legacy);
/// assert_eq!(decide(half, None, None, || None).reason, Reason::NoKey);
/// assert_eq!(decide(Mode::Legacy, None, Some(Side::New), || None).reason, Reason::Tenant);
/// assert_eq!(decide(Mode::New, Some(Side::Legacy), Some(Side::New), || None).side, Side::Legacy);
/// ```
#[inline]
pub fn decide(
    mode: Mode,
    override_side: Option<Side>,
    tenant_pin: Option<Side>,
    bucket: impl FnOnce() -> Option<u16>,
) -> Decision {
    if let Some(side) = override_side {
        return Decision {
            side,
            reason: Reason::Override,
        };
    }
    if let Some(side) = tenant_pin
        && mode != Mode::Shadow
    {
        return Decision {
            side,
            reason: Reason::Tenant,
        };
    }
    let (side, reason) = match mode {
        Mode::Legacy => (Side::Legacy, Reason::Mode),
        Mode::New => (Side::New, Reason::Mode),
        Mode::Shadow => (Side::Shadow, Reason::Mode),
        Mode::Split(share) => match bucket() {
            Some(b) if share.takes(b) => (Side::New, Reason::Split),
            Some(_) => (Side::Legacy, Reason::Split),
            None => (Side::Legacy, Reason::NoKey),
        },
    };
    Decision { side, reason }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Share;

    fn side() -> impl Strategy<Value = Option<Side>> {
        prop_oneof![Just(None), Just(Some(Side::Legacy)), Just(Some(Side::New)),]
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::Legacy),
            Just(Mode::New),
            Just(Mode::Shadow),
            (0u16..=10_000).prop_map(|bp| Mode::Split(Share::basis_points_of(bp).unwrap())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(21), ..ProptestConfig::default() })]

        #[test]
        fn the_decision_follows_the_precedence(
            mode in mode(), over in side(), pin in side(), bucket in proptest::option::of(0u16..10_000),
        ) {
            let d = decide(mode, over, pin, || bucket);
            if let Some(s) = over {
                prop_assert_eq!(d, Decision { side: s, reason: Reason::Override });
            } else if let (Some(s), false) = (pin, mode == Mode::Shadow) {
                prop_assert_eq!(d, Decision { side: s, reason: Reason::Tenant });
            } else {
                match mode {
                    Mode::Legacy => prop_assert_eq!(d.side, Side::Legacy),
                    Mode::New => prop_assert_eq!(d.side, Side::New),
                    Mode::Shadow => prop_assert_eq!(d.side, Side::Shadow),
                    Mode::Split(share) => match bucket {
                        None => prop_assert_eq!(d, Decision { side: Side::Legacy, reason: Reason::NoKey }),
                        Some(b) => {
                            prop_assert_eq!(d.reason, Reason::Split);
                            prop_assert_eq!(d.side == Side::New, u32::from(b) < u32::from(share.basis_points()));
                        }
                    },
                }
            }
        }

        #[test]
        fn a_caller_never_leaves_the_new_side_as_the_share_grows(
            a in 0u16..=10_000, b in 0u16..=10_000, bucket in 0u16..10_000,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let at = |bp| decide(Mode::Split(Share::basis_points_of(bp).unwrap()), None, None, || Some(bucket)).side;
            if at(lo) == Side::New {
                prop_assert_eq!(at(hi), Side::New);
            }
        }
    }

    #[test]
    fn the_bucket_is_only_computed_for_splits() {
        let d = decide(Mode::New, None, None, || panic!("hashed"));
        assert_eq!(
            d,
            Decision {
                side: Side::New,
                reason: Reason::Mode
            }
        );
        let d = decide(Mode::Shadow, None, Some(Side::New), || panic!("hashed"));
        assert_eq!(d.side, Side::Shadow);
    }
}
