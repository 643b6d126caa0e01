//! A first attempt that succeeds allocates nothing, with the `Arc` policy and the static one.

use std::convert::Infallible;

use tower::{Layer, Service, service_fn};
use tower_patterns_core::test_util::{call_now, fewest};
use tower_patterns_retry::{RetryIf, RetryPolicy, Verdict};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn verdict(r: &Result<u64, Infallible>) -> Verdict {
    if r.is_ok() {
        Verdict::Success
    } else {
        Verdict::Retryable(None)
    }
}

fn count<S>(mut svc: S) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..1_000 {
        call_now(&mut svc, i).unwrap();
    }
    fewest(3, || {
        let before = dhat::HeapStats::get().total_blocks;
        for i in 0..100_000 {
            assert_eq!(call_now(&mut svc, i).unwrap(), i);
        }
        dhat::HeapStats::get().total_blocks - before
    })
}

#[test]
fn first_attempts_allocate_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let inner = service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)));
    let kind = RetryIf(verdict as fn(&Result<u64, Infallible>) -> Verdict);
    let arc = RetryPolicy::custom("alloc", kind).build().unwrap();
    assert_eq!(count(arc.layer().layer(inner)), 0);
    let leaked = RetryPolicy::custom("alloc", kind).build_static().unwrap();
    let before = dhat::HeapStats::get().total_blocks;
    assert_eq!(count(leaked.layer().layer(inner)), 0);
    assert_eq!(
        dhat::HeapStats::get().total_blocks - before,
        0,
        "the static policy allocates nothing at all: not for its layer, nor its warm-up calls"
    );
    // The counter counts: one allocation is seen as exactly one, so the zeros above are real.
    let before = dhat::HeapStats::get().total_blocks;
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(
        dhat::HeapStats::get().total_blocks - before,
        1,
        "the counter counts"
    );
}
