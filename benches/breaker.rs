//! Circuit breaker, closed success path, side by side in one run:
//! the bare service, tower's `LoadShed` (tower's nearest built-in: a fail-fast wrapper),
//! this crate's breaker, tower-resilience 0.13's breaker and failsafe 1.3's breaker.
//!
//! - `breaker_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `breaker_contended`: calls/s with 64 tasks on a 2-worker tokio runtime; tower's
//!   `ConcurrencyLimit` (set high enough never to wait) is the reference from the goals.
//!
//! `cargo bench --features breaker --bench breaker`

mod support;

use std::{
    task::{Context, Poll},
    time::Duration,
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{Bare, contended_run, one_call, two_workers};
use tower::{Layer, Service, limit::ConcurrencyLimitLayer, load_shed::LoadShedLayer};
use tower_patterns::breaker::CircuitBreakerLayer;

/// failsafe is not a tower layer: this is how a tower user wraps it.
#[derive(Clone)]
struct Failsafe<CB, S> {
    breaker: CB,
    inner: S,
}

impl<CB, S> Service<u64> for Failsafe<CB, S>
where
    CB: failsafe::futures::CircuitBreaker,
    S: Service<u64>,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        CB::FailurePolicy,
        CB::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

fn ours() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder("bench").build().unwrap()
}

fn resilience() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
}

fn failsafe_breaker() -> impl failsafe::futures::CircuitBreaker + Clone + Send + Sync + 'static {
    failsafe::Config::new().build()
}

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!("tower_load_shed", LoadShedLayer::new().layer(Bare));
        $case!(
            "tower_concurrency_limit",
            ConcurrencyLimitLayer::new(1 << 20).layer(Bare)
        );
        $case!("tower_patterns", ours().layer(Bare));
        $case!("tower_resilience_0_13", resilience().layer(Bare));
        $case!(
            "failsafe_1_3",
            Failsafe {
                breaker: failsafe_breaker(),
                inner: Bare,
            }
        );
    };
}

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_single");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let mut svc = $svc;
            let mut i = 0u64;
            group.bench_function($name, |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    one_call(&mut svc, i)
                })
            });
        }};
    }
    each_peer!(case);
    // Calibration: the floor of any layer whose 'static response future must reach shared
    // state (one Arc clone and drop per call).
    let shared = std::sync::Arc::new(0u64);
    group.bench_function("calibration_arc_clone_drop", |b| {
        b.iter(|| drop(std::hint::black_box(std::sync::Arc::clone(&shared))))
    });
    group.finish();
}

fn contended(c: &mut Criterion) {
    let rt = two_workers();
    let mut group = c.benchmark_group("breaker_contended");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            group.bench_function(BenchmarkId::new($name, "64_tasks_2_workers"), |b| {
                b.iter_custom(|iters| contended_run(&rt, &svc, iters))
            });
        }};
    }
    each_peer!(case);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = single, contended
}
criterion_main!(benches);
