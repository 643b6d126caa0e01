//! The chaos layer's cost per call, side by side in one run.
//!
//! A chaos layer stays in the stack when no experiment runs, so what matters most is the cost
//! of a call it leaves alone. Every call is a `u64` answered at once by the bare service.
//!
//! - `bare`: the service alone;
//! - `tower_resilience_0_13_rates_zero`: tower-resilience's chaos layer with every rate at 0,
//!   its cheapest form (it has no switch): no draw, but on every call it clones the inner
//!   service, boxes the call's future, locks its RNG's mutex and makes a pass-through event (a
//!   clock read and a copy of its name);
//! - `tower_resilience_0_13_no_fault`: the same with a latency rate so small it never fires,
//!   so that it also draws for every call;
//! - `tower_patterns_chaos_off`: ours with a fault, switched off through the handle (one atomic
//!   load);
//! - `tower_patterns_chaos_not_selected`: ours switched on, the call not selected (the
//!   selector, a closure, says no);
//! - `tower_patterns_chaos_no_fault`: ours switched on, the call selected and drawn, no fault
//!   hit (a fault at rate 0: the draw, the plan's read lock, the walk).
//!
//! `chaos_faults`: half the calls get an error, the other half pass, one task polled directly
//! (the inner service's error type is `BoxError`, so both layers make the same error):
//! tower-resilience's `error_rate(0.5)` beside ours, `Fault::error` at 0.5 and `Fault::status`
//! at 0.5 answered by a closure.
//!
//! `cargo bench --features full --bench chaos`

mod support;

use std::{
    convert::Infallible,
    task::{Context, Waker},
    time::Duration,
};

use criterion::{criterion_group, criterion_main};
use http::StatusCode;
use tower::{Layer, Service, ServiceExt};
use tower_patterns::{
    BoxError,
    chaos::{AnswerAsError, ChaosLayer, Fault},
};

use support::Bare;

/// Ours, answering a status fault as an error (the bare service answers `u64`s, not HTTP).
fn ours(
    fault: Fault,
) -> tower_patterns::chaos::ChaosBuilder<tower_patterns::chaos::Always, AnswerAsError> {
    ChaosLayer::builder("bench")
        .seed(7)
        .fault(fault)
        .answer_with(AnswerAsError)
}

/// A latency fault that never fires: a draw lands under a rate of 0 never.
fn never() -> Fault {
    Fault::latency(Duration::from_secs(1)).rate(0.0)
}

/// A fault that fires on every call it gets: an error, so that a switch or a selector that
/// failed would stop the benchmark (`one_call` unwraps) rather than leave it waiting.
fn always() -> Fault {
    Fault::error(|| BoxError::from("the call should have been left alone"))
}

fn off() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    let layer = ours(never()).build().expect("a chaos layer");
    // With a fault that would fire on every call, switched off.
    layer.handle().set([always()]).expect("a plan");
    layer.handle().disable();
    layer.layer(Bare)
}

fn not_selected() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send
{
    ours(always())
        .select(|_: &u64| false)
        .build()
        .expect("a chaos layer")
        .layer(Bare)
}

/// tower-resilience's layer with latency at `rate` and no errors.
fn peer(
    rate: f64,
) -> tower_resilience::chaos::Chaos<Bare, tower_resilience::chaos::NoErrorInjection> {
    tower_resilience::chaos::ChaosLayer::builder()
        .name("bench")
        .seed(7)
        .latency_rate(rate)
        .min_latency(Duration::from_secs(1))
        .max_latency(Duration::from_secs(1))
        .build()
        .layer(Bare)
}

macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!("tower_resilience_0_13_rates_zero", peer(0.0));
        // The smallest positive rate: it draws for every call, and a draw of `[0, 1)` is
        // below it only when it is 0 (one chance in 2^53).
        $case!("tower_resilience_0_13_no_fault", peer(f64::MIN_POSITIVE));
        $case!("tower_patterns_chaos_off", off());
        $case!("tower_patterns_chaos_not_selected", not_selected());
        $case!(
            "tower_patterns_chaos_no_fault",
            ours(never()).build().expect("a chaos layer").layer(Bare)
        );
    };
}

support::bench_groups!("chaos", each_peer);

/// The bare service with `BoxError` for its error, so that an injected error has its type.
fn fallible() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    Bare.map_err(|never: Infallible| -> BoxError { match never {} })
}

/// One call polled to its end, its answer or its error dropped.
fn either<S: Service<u64>>(svc: &mut S, i: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    while svc.poll_ready(&mut cx).is_pending() {}
    let out = support::poll_to_end(svc.call(std::hint::black_box(i)));
    std::hint::black_box(out.is_ok());
}

fn faults(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("chaos_faults");
    let mut run = |name: &str, mut call: Box<dyn FnMut(u64)>| {
        let mut i = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                call(i);
            })
        });
    };
    let mut peer = tower_resilience::chaos::ChaosLayer::builder()
        .name("bench")
        .seed(7)
        .error_rate(0.5)
        .error_fn(|_: &u64| BoxError::from("injected"))
        .build()
        .layer(fallible());
    run(
        "tower_resilience_0_13_half_errors",
        Box::new(move |i| either(&mut peer, i)),
    );
    let mut errors = ours(Fault::error(|| BoxError::from("injected")).rate(0.5))
        .build()
        .expect("a chaos layer")
        .layer(fallible());
    run(
        "tower_patterns_chaos_half_errors",
        Box::new(move |i| either(&mut errors, i)),
    );
    let mut answers = ChaosLayer::builder("bench")
        .seed(7)
        .fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE).rate(0.5))
        .answer_with(|_| 0u64)
        .build()
        .expect("a chaos layer")
        .layer(fallible());
    run(
        "tower_patterns_chaos_half_answers",
        Box::new(move |i| either(&mut answers, i)),
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended, faults
}
criterion_main!(benches);
