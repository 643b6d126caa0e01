//! A first attempt that succeeds allocates nothing, with the `Arc` policy and the static one.

use std::convert::Infallible;

use tower::{Layer, Service, service_fn};
use tower_patterns_retry::{RetryIf, RetryPolicy, Verdict};
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

#[global_allocator]
static ALLOC: Alloc = Alloc;

fn verdict(r: &Result<u64, Infallible>) -> Verdict {
    if r.is_ok() {
        Verdict::Success
    } else {
        Verdict::Retryable(None)
    }
}

fn count<S>(counter: &Counter, mut svc: S) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..1_000 {
        call_now(&mut svc, i).unwrap();
    }
    counter.fewest(3, || {
        for i in 0..100_000 {
            assert_eq!(call_now(&mut svc, i).unwrap(), i);
        }
    })
}

#[test]
fn first_attempts_allocate_nothing() {
    let counter = Counter::start();
    let inner = service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)));
    let kind = RetryIf(verdict as fn(&Result<u64, Infallible>) -> Verdict);
    let arc = RetryPolicy::builder("alloc").kind(kind).build().unwrap();
    assert_eq!(count(&counter, arc.layer().layer(inner)), 0);
    let leaked = RetryPolicy::builder("alloc")
        .kind(kind)
        .build()
        .unwrap()
        .leak();
    let whole = counter.during(|| assert_eq!(count(&counter, leaked.layer().layer(inner)), 0));
    assert_eq!(
        whole, 0,
        "the static policy allocates nothing at all: not for its layer, nor its warm-up calls"
    );
}
