//! Retry, first attempt succeeding, side by side in one run: the bare service, tower's
//! `Retry` with a trivial policy (clone the request, never retry), this crate's policy (with
//! its default budget) and tower-resilience 0.13's retry.
//!
//! The bare service is infallible, so our policy runs with `RetryIf` (the same machinery as
//! `ErrorRetry`, which needs `BoxError` errors).
//!
//! `cargo bench --features retry --bench retry`

mod support;

use std::{convert::Infallible, future::Ready};

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, retry::RetryLayer};
use tower_patterns::retry::{RetryIf, RetryPolicy, RetryShared, Verdict};

/// The smallest useful policy: keeps a copy of the request, never retries.
#[derive(Clone, Copy)]
struct Trivial;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Trivial {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

type Kind = RetryIf<fn(&Result<u64, Infallible>) -> Verdict>;

fn kind() -> Kind {
    fn verdict(r: &Result<u64, Infallible>) -> Verdict {
        match r {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Retryable(None),
        }
    }
    RetryIf(verdict as fn(&_) -> _)
}

fn ours() -> RetryPolicy<Kind> {
    RetryPolicy::builder("bench").kind(kind()).build().unwrap()
}

fn ours_static() -> RetryPolicy<Kind, &'static RetryShared<Kind>> {
    RetryPolicy::builder("bench")
        .kind(kind())
        .build()
        .unwrap()
        .leak()
}

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!(
            "tower_retry_trivial_policy",
            RetryLayer::new(Trivial).layer(Bare)
        );
        $case!("tower_patterns", ours().layer().layer(Bare));
        $case!("tower_patterns_static", ours_static().layer().layer(Bare));
        $case!(
            "tower_resilience_0_13",
            tower_resilience::retry::RetryLayer::<u64, u64, Infallible>::builder()
                .max_attempts(3)
                .build()
                .layer(Bare)
        );
    };
}

support::bench_groups!("retry", each_peer);

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended
}
criterion_main!(benches);
