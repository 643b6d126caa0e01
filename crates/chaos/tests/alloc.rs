//! A chaos layer that injects nothing allocates nothing: switched off, without faults, on a
//! call its selector skips, and on a call that draws no fault.

use std::convert::Infallible;

use http::{HeaderName, Request, Response, StatusCode};
use tower::{Layer, service_fn};
use tower_patterns_chaos::{ChaosLayer, Fault, Header};
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

#[global_allocator]
static ALLOC: Alloc = Alloc;

#[test]
fn calls_left_alone_allocate_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let inner =
        service_fn(|_: Request<()>| std::future::ready(Ok::<_, Infallible>(Response::new(()))));
    let layer = ChaosLayer::builder("alloc")
        .fault(Fault::status(StatusCode::BAD_GATEWAY).rate(0.0))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    let selective = ChaosLayer::builder("selective")
        .fault(Fault::status(StatusCode::BAD_GATEWAY))
        .select(Header::present(HeaderName::from_static("x-chaos")))
        .build()
        .unwrap();
    let mut skipped = selective.layer(inner);
    let counter = Counter::start();

    let run = |svc: &mut dyn FnMut() -> StatusCode| {
        counter.fewest(3, || {
            for _ in 0..1_000 {
                assert_eq!(std::hint::black_box(svc()), StatusCode::OK);
            }
        })
    };
    let mut call = || call_now(&mut svc, Request::new(())).unwrap().status();
    assert_eq!(run(&mut call), 0, "active, no fault drawn");
    assert!(handle.draws() >= 1_000, "the calls drew");
    handle.disable();
    let mut call = || call_now(&mut svc, Request::new(())).unwrap().status();
    assert_eq!(run(&mut call), 0, "switched off");
    handle.enable();
    handle.clear();
    let mut call = || call_now(&mut svc, Request::new(())).unwrap().status();
    assert_eq!(run(&mut call), 0, "no faults");
    let mut call = || call_now(&mut skipped, Request::new(())).unwrap().status();
    assert_eq!(run(&mut call), 0, "not selected");
    assert_eq!(selective.handle().draws(), 0);
}
