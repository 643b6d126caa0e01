//! Bulkhead, success path with room in the pool, side by side in one run: the bare service,
//! tower's `ConcurrencyLimit` (the nearest built-in), this crate's bulkhead and
//! tower-resilience 0.13's bulkhead, all with the same limit (1,024: never full here).
//!
//! - `bulkhead_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `bulkhead_contended`: calls/s with 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features bulkhead --bench bulkhead`

mod support;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{Bare, contended_run, one_call, two_workers};
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

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead_single");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let mut svc = $svc;
            let mut i = 0u64;
            group.bench_function($name, |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    one_call(&mut svc, i)
                })
            });
        }};
    }
    each_peer!(case);
    group.finish();
}

fn contended(c: &mut Criterion) {
    let rt = two_workers();
    let mut group = c.benchmark_group("bulkhead_contended");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            group.bench_function(BenchmarkId::new($name, "64_tasks_2_workers"), |b| {
                b.iter_custom(|iters| contended_run(&rt, &svc, iters))
            });
        }};
    }
    each_peer!(case);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = single, contended
}
criterion_main!(benches);
