//! The closed success path allocates nothing: counted with a global allocator.

use std::convert::Infallible;

use tower::{Layer, service_fn};
use tower_patterns_breaker::CircuitBreakerLayer;
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

// The counting allocator counts every allocation of the process (this test file is its own).
#[global_allocator]
static ALLOC: Alloc = Alloc;

#[test]
fn closed_success_path_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder("alloc").build().unwrap();
    let mut svc = layer.layer(service_fn(|x: u64| {
        std::future::ready(Ok::<_, Infallible>(x))
    }));
    // Warm up (first-use initialisation in std or metrics is not per call).
    for i in 0..1_000 {
        call_now(&mut svc, i).unwrap();
    }
    let counter = Counter::start();
    let allocations = counter.fewest(3, || {
        for i in 0..100_000 {
            assert_eq!(call_now(&mut svc, i).unwrap(), i);
        }
    });
    assert_eq!(
        allocations, 0,
        "allocations on 100,000 closed successful calls"
    );
}
