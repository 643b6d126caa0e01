//! The resilience stack end to end, success path, side by side in one run:
//!
//! - tower's own stack: load shed + concurrency limit + retry (trivial policy) + timeout;
//! - this crate's: retry (static policy) → circuit breaker → timeout → bulkhead;
//! - tower-resilience 0.13's: circuit breaker + bulkhead + retry + time limiter.
//!
//! `cargo bench --features full --bench stack`

mod support;

use std::{future::Ready, time::Duration};

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, ServiceBuilder, limit::ConcurrencyLimitLayer, retry::RetryLayer};
use tower_patterns::{breaker::CircuitBreakerLayer, bulkhead::BulkheadLayer, retry::RetryPolicy};

const LIMIT: usize = 1 << 20;

/// tower's trivial retry policy: keeps a copy of the request, never retries.
#[derive(Clone, Copy)]
struct Trivial;

impl<E> tower::retry::Policy<u64, u64, E> for Trivial {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Ready<()>> {
        None
    }
    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!(
            "tower_stack",
            ServiceBuilder::new()
                .load_shed()
                .layer(ConcurrencyLimitLayer::new(LIMIT))
                .layer(RetryLayer::new(Trivial))
                .timeout(Duration::from_secs(10))
                .service(Bare)
        );
        $case!(
            "tower_patterns_stack",
            ServiceBuilder::new()
                .layer(
                    RetryPolicy::builder("stack")
                        .build()
                        .unwrap()
                        .leak()
                        .layer()
                )
                .layer(CircuitBreakerLayer::builder("stack").build().unwrap())
                .timeout(Duration::from_secs(10))
                .layer(
                    BulkheadLayer::builder("stack")
                        .max_concurrent(LIMIT as u32)
                        .build()
                        .unwrap()
                )
                .service(Bare)
        );
        $case!("tower_resilience_0_13_stack", {
            use tower_resilience::{bulkhead, circuitbreaker, retry, timelimiter};
            let limited = timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(Duration::from_secs(10))
                .build()
                .layer(Bare);
            let bulkheaded = bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(LIMIT)
                .build()
                .unwrap()
                .layer(limited);
            let broken = circuitbreaker::CircuitBreakerLayer::builder()
                .build()
                .unwrap()
                .layer(bulkheaded);
            retry::RetryLayer::<u64, u64, _>::builder()
                .max_attempts(3)
                .build()
                .layer(broken)
        });
    };
}

support::bench_groups!("stack", each_peer);

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended
}
criterion_main!(benches);
