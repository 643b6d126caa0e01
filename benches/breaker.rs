//! Circuit breaker, closed success path, side by side in one run:
//! the bare service, tower's `LoadShed` (tower's nearest built-in: a fail-fast wrapper),
//! this crate's breaker, tower-resilience 0.13's breaker and failsafe 1.3's breaker.
//!
//! - `breaker_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `breaker_contended`: calls/s with 64 tasks on a 2-worker tokio runtime; tower's
//!   `ConcurrencyLimit` (set high enough never to wait) is the reference from the goals.
//!
//! `cargo bench --features breaker --bench breaker`

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt, limit::ConcurrencyLimitLayer, load_shed::LoadShedLayer};
use tower_patterns::breaker::CircuitBreakerLayer;

/// The inner service: answers at once.
#[derive(Clone, Copy)]
struct Bare;

impl Service<u64> for Bare {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

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

fn poll_to_end<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn one_call<S>(svc: &mut S, i: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    while svc.poll_ready(&mut cx).is_pending() {}
    std::hint::black_box(poll_to_end(svc.call(std::hint::black_box(i))).unwrap());
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

const TASKS: u64 = 64;

fn contended_run<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let per_task = iters.div_ceil(TASKS);
    let svc = svc.clone();
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let ready = svc.ready().await.unwrap();
                        std::hint::black_box(ready.call(i).await.unwrap());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
