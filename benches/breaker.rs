//! Circuit breaker, closed success path, side by side in one run:
//! the bare service, tower's `LoadShed` (tower's nearest built-in: a fail-fast wrapper),
//! this crate's breaker (also leaked to a `&'static`, `tower_patterns_static`; and one breaker
//! per key over 16 keys, `tower_patterns_keyed_16`), tower-resilience 0.13's breaker and failsafe 1.3's breaker.
//!
//! The fallback's success path is here too: `FallbackLayer::value` over a service that
//! succeeds (`tower_patterns_fallback`) beside tower's `MapResult` doing the same
//! (`tower_map_result_fallback`).
//!
//! - `breaker_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `breaker_contended`: calls/s with 64 tasks on a 2-worker tokio runtime; tower's
//!   `ConcurrencyLimit` (set high enough never to wait) is the reference from the goals.
//!
//! `cargo bench --features breaker --bench breaker`

mod support;

use std::task::{Context, Poll};

use criterion::{Criterion, criterion_group, criterion_main};
use support::Bare;
use tower::{
    Layer, Service, limit::ConcurrencyLimitLayer, load_shed::LoadShedLayer, util::MapResultLayer,
};
use tower_patterns::breaker::{CircuitBreakerLayer, FallbackLayer};

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

/// One breaker per key, 16 keys (the request modulo 16).
type ByKey = tower_patterns::key::KeyFn<fn(&u64) -> Result<u64, tower_patterns::KeyError>>;

fn keyed() -> tower_patterns::breaker::KeyedCircuitBreakerLayer<ByKey, u64> {
    fn by_16(n: &u64) -> Result<u64, tower_patterns::KeyError> {
        Ok(n % 16)
    }
    tower_patterns::breaker::KeyedCircuitBreakerLayer::builder("bench_keyed")
        .key(tower_patterns::key::key_fn(
            by_16 as fn(&u64) -> Result<u64, tower_patterns::KeyError>,
        ))
        .build()
        .unwrap()
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
        $case!("tower_patterns_static", ours().leak().layer(Bare));
        $case!("tower_patterns_keyed_16", keyed().layer(Bare));
        $case!(
            "tower_patterns_fallback",
            FallbackLayer::value(0u64).layer(Bare)
        );
        $case!(
            "tower_map_result_fallback",
            MapResultLayer::new(|r: Result<u64, std::convert::Infallible>| r
                .or(Ok::<_, std::convert::Infallible>(0)))
            .layer(Bare)
        );
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

support::bench_groups!("breaker", each_peer);

/// The floor of any layer whose `'static` response future must reach shared state: one `Arc`
/// clone and drop per call.
fn calibration(c: &mut Criterion) {
    let shared = std::sync::Arc::new(0u64);
    c.bench_function("breaker_single/calibration_arc_clone_drop", |b| {
        b.iter(|| drop(std::hint::black_box(std::sync::Arc::clone(&shared))))
    });
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended, calibration
}
criterion_main!(benches);
