//! The rates the property tests of both limiters draw from.

use std::time::Duration;

use proptest::prelude::*;
use tower_patterns_ratelimit::Rate;

/// Rates built every way a plan could build one: zero, tiny, huge and ordinary counts,
/// periods and bursts.
pub(crate) fn any_rate() -> impl Strategy<Value = Rate> {
    let n = prop_oneof![
        1 => Just(0u32),
        6 => 1u32..=64,
        1 => Just(u32::MAX),
        2 => any::<u32>(),
    ];
    let period = prop_oneof![
        1 => Just(Duration::ZERO),
        2 => (0u64..=10_000).prop_map(Duration::from_nanos),
        6 => (1u64..=100_000).prop_map(Duration::from_millis),
        2 => any::<u64>().prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ];
    let burst = prop_oneof![
        4 => Just(None),
        1 => Just(Some(0u32)),
        4 => (1u32..=40).prop_map(Some),
        1 => Just(Some(u32::MAX)),
        1 => any::<u32>().prop_map(Some),
    ];
    (n, period, burst).prop_map(|(n, period, burst)| {
        let rate = Rate::new(n, period);
        burst.map_or(rate, |b| rate.burst(b))
    })
}
