//! Hedging, success path (the first call answers before any copy is due), side by side in one
//! run: the bare service, tower's `Hedge` (the percentile of recent latencies, its only mode)
//! and this crate's `HedgingLayer` with a fixed delay and with a percentile.
//!
//! - `hedge_single`: ns per call, one task, polled directly (no runtime in the loop).
//!
//! `cargo bench --features retry --bench hedge`

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, hedge::Hedge};
use tower_patterns::retry::{HedgeDelay, HedgingLayer};

/// tower's hedge policy: every request may be copied.
#[derive(Clone)]
struct Always;

impl tower::hedge::Policy<u64> for Always {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _: &u64) -> bool {
        true
    }
}

fn copy(r: &u64) -> Option<u64> {
    Some(*r)
}

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!(
            "tower_hedge_p90",
            Hedge::new::<u64>(Bare, Always, 10, 0.9, Duration::from_secs(10))
        );
        $case!(
            "tower_patterns_fixed",
            HedgingLayer::builder("bench_fixed")
                .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
                .copy(copy as fn(&u64) -> Option<u64>)
                .build()
                .unwrap()
                .layer(Bare)
        );
        $case!(
            "tower_patterns_p90",
            HedgingLayer::builder("bench_p90")
                .delay(HedgeDelay::Percentile {
                    percentile: 0.9,
                    min_samples: 10,
                    fallback: Duration::from_millis(50),
                })
                .copy(copy as fn(&u64) -> Option<u64>)
                .build()
                .unwrap()
                .layer(Bare)
        );
    };
}

// One task only: tower's `Hedge` is not `Clone`, so there is no contended group (it would
// need a `Buffer` in front, which the others do not).
support::bench_single!("hedge", each_peer);

criterion_group! {
    name = benches;
    config = support::config();
    targets = single
}
criterion_main!(benches);
