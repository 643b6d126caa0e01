//! The bulkhead's success path allocates nothing: counted with dhat.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use tower::{Layer, Service, service_fn};
use tower_patterns_bulkhead::BulkheadLayer;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the service answers at once"),
    }
}

#[test]
fn success_path_allocates_nothing() {
    let layer = BulkheadLayer::builder("alloc")
        .max_concurrent(8)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|x: u64| {
        std::future::ready(Ok::<_, Infallible>(x))
    }));
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..1_000 {
        assert!(svc.poll_ready(&mut cx).is_ready());
        poll_once(svc.call(i)).unwrap();
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().total_blocks;
    for i in 0..100_000 {
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert_eq!(poll_once(svc.call(i)).unwrap(), i);
    }
    let after = dhat::HeapStats::get().total_blocks;
    assert_eq!(after - before, 0, "allocations on 100,000 calls");
    assert_eq!(layer.handle().in_flight(), 0);
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(
        dhat::HeapStats::get().total_blocks - after,
        1,
        "the counter counts"
    );
}
