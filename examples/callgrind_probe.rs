//! Runs N calls through one layer, for `scripts/bench-callgrind` to count instructions per
//! call under valgrind (noise-free, unlike timings). Not a benchmark by itself.
//!
//! `cargo run --release --example callgrind_probe --features full -- <layer> <calls>`
//! with `<layer>` one of: bare, tower_concurrency_limit, tower_retry_trivial, breaker,
//! bulkhead, retry, retry_static, shard_router, moka_sync_get, cache_hit.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use tower::{Layer, Service, limit::ConcurrencyLimitLayer, retry::RetryLayer};
use tower_patterns::{
    BoxError, KeyError,
    breaker::CircuitBreakerLayer,
    bulkhead::BulkheadLayer,
    cache::{CacheLayer, store::MokaStore},
    key::key_fn,
    retry::{RetryIf, RetryPolicy, Verdict},
    shard::{Jump, ShardRouter},
    test_util::call_now,
};

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

#[derive(Clone, Copy)]
struct Trivial;

impl tower::retry::Policy<u64, u64, Infallible> for Trivial {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, Infallible>) -> Option<Ready<()>> {
        None
    }
    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn run<S>(mut svc: S, calls: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..calls {
        std::hint::black_box(call_now(&mut svc, std::hint::black_box(i)).unwrap());
    }
}

fn verdict(r: &Result<u64, Infallible>) -> Verdict {
    if r.is_ok() {
        Verdict::Success
    } else {
        Verdict::Retryable(None)
    }
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let layer = args.next().unwrap_or_else(|| "bare".into());
    let calls: u64 = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let retry_kind = RetryIf(verdict as fn(&Result<u64, Infallible>) -> Verdict);
    match layer.as_str() {
        "bare" => run(Bare, calls),
        "tower_concurrency_limit" => run(ConcurrencyLimitLayer::new(1 << 20).layer(Bare), calls),
        "tower_retry_trivial" => run(RetryLayer::new(Trivial).layer(Bare), calls),
        "breaker" => run(
            CircuitBreakerLayer::builder("probe").build()?.layer(Bare),
            calls,
        ),
        "bulkhead" => run(
            BulkheadLayer::builder("probe")
                .max_concurrent(1 << 20)
                .build()?
                .layer(Bare),
            calls,
        ),
        "retry" => run(
            RetryPolicy::custom("probe", retry_kind)
                .build()?
                .layer()
                .layer(Bare),
            calls,
        ),
        "retry_static" => run(
            RetryPolicy::custom("probe", retry_kind)
                .build_static()?
                .layer()
                .layer(Bare),
            calls,
        ),
        "shard_router" => run(
            ShardRouter::new(
                vec![Bare; 16],
                Jump::new(16),
                key_fn(|u: &u64| Ok::<_, KeyError>(*u)),
            )?,
            calls,
        ),
        "moka_sync_get" => {
            let cache = moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(10_000)
                .build();
            for k in 0..1024 {
                cache.insert(k, k);
            }
            for i in 0..calls {
                std::hint::black_box(cache.get(&std::hint::black_box(i % 1024)));
            }
        }
        "cache_hit" => {
            let mut svc = CacheLayer::builder("probe", MokaStore::builder().build())
                .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k % 1024)))
                .unscoped()
                .build()?
                .layer(Bare);
            run(&mut svc, 1024); // loads every key: the measured calls hit
            run(&mut svc, calls);
        }
        other => return Err(format!("unknown layer {other}").into()),
    }
    Ok(())
}
