//! Hedging, on paused time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{Method, Request};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_core::BoxError;
use tower_patterns_retry::{HedgeDelay, HedgingLayer, RetryBudget, hedge_reads};

/// The first call takes `slow`, later ones `fast`.
fn slow_then_fast(
    slow: Duration,
    fast: Duration,
) -> (
    impl tower::Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = service_fn(move |x: u32| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(if n == 0 { slow } else { fast }).await;
            Ok::<_, BoxError>(x * 10 + n)
        }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_after_the_delay_and_the_copy_wins() {
    let (svc, calls) = slow_then_fast(Duration::from_secs(10), Duration::from_millis(20));
    let svc = HedgingLayer::builder("test")
        .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
        .copy(|x: &u32| Some(*x))
        .build()
        .unwrap()
        .layer(svc);
    let start = Instant::now();
    assert_eq!(
        svc.oneshot(1).await.unwrap(),
        11,
        "the copy (call 1) answered"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(120));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_is_not_hedged() {
    let (svc, calls) = slow_then_fast(Duration::from_millis(50), Duration::from_millis(50));
    let svc = HedgingLayer::builder("test")
        .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
        .copy(|x: &u32| Some(*x))
        .build()
        .unwrap()
        .layer(svc);
    assert_eq!(svc.oneshot(1).await.unwrap(), 10);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn no_copy_without_budget_or_for_writes() {
    let budget = Arc::new(RetryBudget::new(2.0, 0.1).unwrap());
    budget.failure(); // 1 token of 2: not above half
    let (svc, calls) = slow_then_fast(Duration::from_secs(1), Duration::from_millis(1));
    let svc = HedgingLayer::builder("test")
        .delay(HedgeDelay::Fixed(Duration::from_millis(10)))
        .copy(|x: &u32| Some(*x))
        .budget(budget)
        .build()
        .unwrap()
        .layer(svc);
    assert_eq!(
        svc.oneshot(1).await.unwrap(),
        10,
        "the first call, slow, answered"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let post = Request::builder()
        .method(Method::POST)
        .body(String::new())
        .unwrap();
    assert!(hedge_reads(&post).is_none(), "writes are never hedged");
    assert!(hedge_reads(&Request::get("/").body(String::new()).unwrap()).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_follows_recent_latencies() {
    // 200 calls of 8 ms teach it the p90; then a slow call is hedged after about 8 ms
    // (the bucket's upper bound, 8.192 ms), not after the 1 s fallback.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_: u32| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let d = if n == 200 {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(8)
            };
            tokio::time::sleep(d).await;
            Ok::<_, BoxError>(n)
        }
    });
    let layer = HedgingLayer::builder("test")
        .delay(HedgeDelay::Percentile {
            percentile: 0.9,
            min_samples: 100,
            fallback: Duration::from_secs(1),
        })
        .copy(|x: &u32| Some(*x))
        .build()
        .unwrap();
    let svc = layer.layer(svc);
    for _ in 0..200 {
        svc.clone().oneshot(0).await.unwrap();
    }
    let start = Instant::now();
    assert_eq!(svc.oneshot(0).await.unwrap(), 201, "the copy answered");
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(20),
        "hedged at the p90, took {took:?}"
    );
}
