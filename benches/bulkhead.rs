//! Bulkhead, success path with room in the pool, side by side in one run: the bare service,
//! tower's `ConcurrencyLimit` (the nearest built-in), this crate's bulkhead and
//! tower-resilience 0.13's bulkhead, all with the same limit (1,024: never full here).
//!
//! Also: a bulkhead per key over 16 fixed partitions (`tower_patterns_partitioned_16`), and
//! the isolated executor against a bare `spawn` onto a runtime of its own
//! (`bulkhead_isolated`).
//!
//! - `bulkhead_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `bulkhead_contended`: calls/s with 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features bulkhead --bench bulkhead`

mod support;

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, Service, ServiceExt, limit::ConcurrencyLimitLayer};
use tower_patterns::{
    KeyError,
    bulkhead::{BulkheadLayer, IsolatedExecutor, IsolatedLayer, KeyedBulkheadLayer},
    key::{KeyFn, key_fn},
};

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
        $case!("tower_patterns_partitioned_16", partitioned().layer(Bare));
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

/// A pool per key, 16 fixed partitions of the same size (the request modulo 16).
type ByKey = KeyFn<fn(&u64) -> Result<u64, KeyError>>;

fn partitioned() -> KeyedBulkheadLayer<ByKey, u64> {
    fn by_16(n: &u64) -> Result<u64, KeyError> {
        Ok(n % 16)
    }
    let mut builder = KeyedBulkheadLayer::builder("bench_partitioned")
        .key(key_fn(by_16 as fn(&u64) -> Result<u64, KeyError>));
    for key in 0..16 {
        builder = builder.partition(key, LIMIT);
    }
    builder.build().unwrap()
}

support::bench_groups!("bulkhead", each_peer);

/// The isolated executor: a call handed to a runtime of its own and its answer awaited, from
/// a caller on a 2-worker runtime, beside a bare `spawn` onto such a runtime (the floor: the
/// executor adds its permit and its rejection when full).
fn isolated(c: &mut criterion::Criterion) {
    let caller = support::two_workers();
    let mut group = c.benchmark_group("bulkhead_isolated");
    let executor = IsolatedExecutor::new("bench", 1).unwrap();
    let mut svc = IsolatedLayer::new(executor, LIMIT).unwrap().layer(Bare);
    group.bench_function("tower_patterns_isolated", |b| {
        b.iter(|| {
            caller.block_on(async {
                let svc = svc.ready().await.unwrap();
                svc.call(1).await.unwrap()
            })
        })
    });
    let own = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    group.bench_function("tokio_spawn_on_own_runtime", |b| {
        b.iter(|| caller.block_on(own.spawn(async { 1u64 })).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended, isolated
}
criterion_main!(benches);
