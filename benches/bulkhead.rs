//! Bulkhead, success path with room in the pool, side by side in one run: the bare service,
//! tower's `ConcurrencyLimit` (the nearest built-in), this crate's bulkhead and
//! tower-resilience 0.13's bulkhead, all with the same limit (1,024: never full here).
//!
//! - `bulkhead_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `bulkhead_contended`: calls/s with 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features bulkhead --bench bulkhead`

mod support;

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, limit::ConcurrencyLimitLayer};
use tower_patterns::bulkhead::BulkheadLayer;

const LIMIT: u32 = 1_024;

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!(
            "tower_concurrency_limit",
            ConcurrencyLimitLayer::new(LIMIT as usize).layer(Bare)
        );
        $case!(
            "tower_patterns",
            BulkheadLayer::builder("bench")
                .max_concurrent(LIMIT)
                .build()
                .unwrap()
                .layer(Bare)
        );
        $case!(
            "tower_resilience_0_13",
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(LIMIT as usize)
                .build()
                .unwrap()
                .layer(Bare)
        );
    };
}

support::bench_groups!("bulkhead", each_peer);

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended
}
criterion_main!(benches);
