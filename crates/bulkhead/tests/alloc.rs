//! The bulkhead's success path allocates nothing: counted with testkit's allocation counter.

use std::convert::Infallible;

use tower::{Layer, service_fn};
use tower_patterns_bulkhead::BulkheadLayer;
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

#[global_allocator]
static ALLOC: Alloc = Alloc;

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
    let counter = Counter::start();
    let allocations = counter.fewest(3, || {
        for i in 0..100_000 {
            assert_eq!(call_now(&mut svc, i).unwrap(), i);
        }
    });
    assert_eq!(allocations, 0, "allocations on 100,000 calls");
    assert_eq!(layer.handle().in_flight(), 0);
}
