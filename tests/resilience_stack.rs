//! The resilience patterns composed as the guides say: retry outside the breaker, a timeout
//! per attempt inside it, a bulkhead innermost. An open circuit is never retried, and a hung
//! dependency becomes timeouts the breaker counts.

use std::time::Duration;

use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_patterns::{
    Rejected, RejectionKind,
    breaker::{CircuitBreakerLayer, State},
    bulkhead::BulkheadLayer,
    retry::{Backoff, RetryPolicy},
};
use tower_patterns_testkit::TestService;

#[tokio::test(start_paused = true)]
async fn retries_stop_at_an_open_circuit_and_timeouts_trip_it() {
    let breaker = CircuitBreakerLayer::builder("dependency")
        .count_window(6)
        .minimum_calls(6)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let hung = TestService::new().never_respond();
    let svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::builder("dependency")
                .max_attempts(3)
                .backoff(Backoff::Constant(Duration::from_millis(100)))
                .no_budget()
                .build()
                .unwrap()
                .layer(),
        )
        .layer(breaker)
        .timeout(Duration::from_secs(1))
        .layer(
            BulkheadLayer::builder("dependency")
                .max_concurrent(10)
                .build()
                .unwrap(),
        )
        .service(hung.clone());

    // Two requests, three attempts each, every attempt timing out after 1 s: six failures
    // trip the breaker.
    for _ in 0..2 {
        assert!(svc.clone().oneshot(()).await.is_err());
    }
    assert_eq!(hung.calls(), 6);
    assert_eq!(circuit.state(), State::Open);

    // The next request is rejected at once and not retried: the dependency is left alone.
    let start = Instant::now();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let rejected = Rejected::find(&*err).expect("an open-circuit rejection");
    assert_eq!(rejected.kind(), RejectionKind::CircuitOpen);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no backoff wait: not retried"
    );
    assert_eq!(hung.calls(), 6);
    assert_eq!(
        hung.in_flight(),
        0,
        "timed-out calls were dropped, their permits returned"
    );
}
