//! The bulkhead's success path allocates nothing: counted with dhat.

use std::convert::Infallible;

use tower::{Layer, service_fn};
use tower_patterns_bulkhead::BulkheadLayer;
use tower_patterns_core::test_util::{call_now, fewest};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn success_path_allocates_nothing() {
    let layer = BulkheadLayer::builder("alloc")
        .max_concurrent(8)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|x: u64| {
        std::future::ready(Ok::<_, Infallible>(x))
    }));
    for i in 0..1_000 {
        call_now(&mut svc, i).unwrap();
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let allocations = fewest(3, || {
        let before = dhat::HeapStats::get().total_blocks;
        for i in 0..100_000 {
            assert_eq!(call_now(&mut svc, i).unwrap(), i);
        }
        dhat::HeapStats::get().total_blocks - before
    });
    assert_eq!(allocations, 0, "allocations on 100,000 calls");
    let after = dhat::HeapStats::get().total_blocks;
    assert_eq!(layer.handle().in_flight(), 0);
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(
        dhat::HeapStats::get().total_blocks - after,
        1,
        "the counter counts"
    );
}
