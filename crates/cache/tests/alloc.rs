//! A cache hit allocates nothing: counted with testkit's allocation counter.

use std::convert::Infallible;

use tower::{Layer, service_fn};
use tower_patterns_cache::{
    CacheLayer,
    store::{MokaStore, QuickCacheStore, Store},
};
use tower_patterns_core::{KeyError, key::key_fn};
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

#[global_allocator]
static ALLOC: Alloc = Alloc;

#[test]
fn hits_allocate_nothing() {
    hits_allocate_nothing_on(MokaStore::<u64, u64>::builder().build());
    hits_allocate_nothing_on(QuickCacheStore::<u64, u64>::builder().build());
}

fn hits_allocate_nothing_on(store: impl Store<u64, u64>) {
    let layer = CacheLayer::builder("alloc")
        .store(store)
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|k: u64| {
        std::future::ready(Ok::<_, Infallible>(k * 2))
    }));
    // Misses load through a boxed future; a runtime is needed only for those.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    for k in 0..64 {
        rt.block_on(tower::ServiceExt::oneshot(svc.clone(), k))
            .unwrap();
    }
    for k in 0..10_000u64 {
        call_now(&mut svc, k % 64).unwrap();
    }
    let counter = Counter::start();
    let allocations = counter.fewest(3, || {
        for k in 0..100_000u64 {
            assert_eq!(call_now(&mut svc, k % 64).unwrap(), (k % 64) * 2);
        }
    });
    assert_eq!(allocations, 0, "allocations on 100,000 hits");
    assert!(layer.handle().stats().hits >= 110_000);
}
