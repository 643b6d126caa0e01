//! Runs N calls through one layer, for `scripts/bench-callgrind` to count instructions per
//! call under valgrind (noise-free, unlike timings). Not a benchmark by itself.
//!
//! `cargo run --release --example callgrind_probe --features full -- <layer> <calls>`
//! with `<layer>` one of: bare, tower_concurrency_limit, tower_retry_trivial, breaker,
//! breaker_static, bulkhead, retry, retry_static, shard_router, moka_sync_get, quick_cache_get,
//! cache_hit, cache_hit_moka, chaos_off, chaos_no_fault, tower_resilience_chaos_rates_zero,
//! tower_resilience_chaos_no_fault; and over HTTP
//! (`GET /catalog` from one of 16 tenants, as in `benches/tenant.rs`): bare_http,
//! tower_governor, ratelimit, ratelimit_no_headers, tenant, tenant_ratelimit, bare_page,
//! tower_governor_tower_resilience_cache, tower_resilience_stack, tower_patterns_stack.

#[path = "../benches/support/http.rs"]
mod web;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
    time::Duration,
};

use tower::{Layer, Service, limit::ConcurrencyLimitLayer, retry::RetryLayer};
use tower_patterns::{
    BoxError, KeyError,
    breaker::CircuitBreakerLayer,
    bulkhead::BulkheadLayer,
    cache::{
        CacheLayer,
        store::{MokaStore, QuickCacheStore},
    },
    chaos::{AnswerAsError, ChaosLayer, Fault},
    key::key_fn,
    retry::{RetryIf, RetryPolicy, Verdict},
    shard::{Jump, ShardRouter},
};
use tower_patterns_testkit::call_now;
use web::{
    Ok200, Page, governor, governor_same_burst, http, ours_cache_layer, ours_limit_only,
    ours_tenant_limit_layer, tenant_layer, to_axum, tower_resilience_cache,
    tower_resilience_ratelimiter, warmed,
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

/// Warms `svc` up with 1,024 calls (one-off work: clock calibration, loading cache entries),
/// then makes the `calls` that count.
fn run<S>(mut svc: S, calls: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..1024 {
        std::hint::black_box(call_now(&mut svc, std::hint::black_box(i)).unwrap());
    }
    measured(&mut svc, calls);
}

/// The calls that count: `scripts/bench-callgrind` collects instructions inside this function
/// only.
#[inline(never)]
fn measured<S>(svc: &mut S, calls: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..calls {
        std::hint::black_box(call_now(svc, std::hint::black_box(i)).unwrap());
    }
}

/// Raw moka gets, measured as a service would be.
#[derive(Clone)]
struct MokaGet(moka::sync::Cache<u64, u64>);

impl Service<u64> for MokaGet {
    type Response = Option<u64>;
    type Error = Infallible;
    type Future = Ready<Result<Option<u64>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        ready(Ok(self.0.get(&(k % 1024))))
    }
}

/// Raw `quick_cache` `get`.
struct QuickGet(quick_cache::sync::Cache<u64, u64>);

impl Service<u64> for QuickGet {
    type Response = Option<u64>;
    type Error = Infallible;
    type Future = Ready<Result<Option<u64>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        ready(Ok(self.0.get(&(k % 1024))))
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
    // A runtime context for layers that create timers; calls are still polled directly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _context = rt.enter();
    let retry_kind = RetryIf(verdict as fn(&Result<u64, Infallible>) -> Verdict);
    match layer.as_str() {
        "bare" => run(Bare, calls),
        "tower_concurrency_limit" => run(ConcurrencyLimitLayer::new(1 << 20).layer(Bare), calls),
        "tower_retry_trivial" => run(RetryLayer::new(Trivial).layer(Bare), calls),
        "breaker" => run(
            CircuitBreakerLayer::builder("probe").build()?.layer(Bare),
            calls,
        ),
        "breaker_static" => run(
            CircuitBreakerLayer::builder("probe")
                .build()?
                .leak()
                .layer(Bare),
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
            RetryPolicy::builder("probe")
                .kind(retry_kind)
                .build()?
                .layer()
                .layer(Bare),
            calls,
        ),
        "retry_static" => run(
            RetryPolicy::builder("probe")
                .kind(retry_kind)
                .build()?
                .leak()
                .layer()
                .layer(Bare),
            calls,
        ),
        "shard_router" => run(
            ShardRouter::builder("probe")
                .shards(vec![Bare; 16])
                .strategy(Jump::new(16))
                .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
                .build()?,
            calls,
        ),
        "moka_sync_get" => {
            let cache = moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(10_000)
                .build();
            for k in 0..1024 {
                cache.insert(k, k);
            }
            run(MokaGet(cache), calls);
        }
        "quick_cache_get" => {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(10_000);
            for k in 0..1024 {
                cache.insert(k, k);
            }
            run(QuickGet(cache), calls);
        }
        "cache_hit" => run(
            CacheLayer::builder("probe")
                .store(QuickCacheStore::builder().build())
                .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k % 1024)))
                .unscoped()
                .build()?
                .layer(Bare),
            calls,
        ),
        "cache_hit_moka" => run(
            CacheLayer::builder("probe")
                .store(MokaStore::builder().build())
                .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k % 1024)))
                .unscoped()
                .build()?
                .layer(Bare),
            calls,
        ),
        "bare_http" => run(http(Ok200), calls),
        "tower_governor" => run(http(governor_same_burst(Ok200)), calls),
        "ratelimit" => run(http(ours_limit_only(true, Ok200)), calls),
        "ratelimit_no_headers" => run(http(ours_limit_only(false, Ok200)), calls),
        "tenant" => run(http(tenant_layer().layer(Ok200)), calls),
        "tenant_ratelimit" => run(
            http(tenant_layer().layer(ours_tenant_limit_layer().layer(Ok200))),
            calls,
        ),
        "bare_page" => run(http(to_axum().layer(Page)), calls),
        "tower_governor_tower_resilience_cache" => run(
            warmed(http(governor(
                to_axum().layer(tower_resilience_cache(Page)),
            ))),
            calls,
        ),
        "tower_resilience_stack" => run(
            warmed(http(
                tower_resilience_ratelimiter().layer(to_axum().layer(tower_resilience_cache(Page))),
            )),
            calls,
        ),
        "tower_patterns_stack" => run(
            warmed(http(tenant_layer().layer(
                ours_tenant_limit_layer().layer(to_axum().layer(ours_cache_layer().layer(Page))),
            ))),
            calls,
        ),
        // As in `benches/chaos.rs`: switched off, and selected and drawn with no fault hit.
        "chaos_off" => {
            let layer = ChaosLayer::builder("probe")
                .fault(Fault::latency(Duration::from_secs(1)))
                .answer_with(AnswerAsError)
                .enabled(false)
                .build()?;
            run(layer.layer(Bare), calls)
        }
        "chaos_no_fault" => run(
            ChaosLayer::builder("probe")
                .fault(Fault::latency(Duration::from_secs(1)).rate(0.0))
                .answer_with(AnswerAsError)
                .build()?
                .layer(Bare),
            calls,
        ),
        "tower_resilience_chaos_rates_zero" | "tower_resilience_chaos_no_fault" => run(
            tower_resilience::chaos::ChaosLayer::builder()
                .name("probe")
                .seed(7)
                .latency_rate(if layer == "tower_resilience_chaos_rates_zero" {
                    0.0
                } else {
                    f64::MIN_POSITIVE
                })
                .min_latency(Duration::from_secs(1))
                .max_latency(Duration::from_secs(1))
                .build()
                .layer(Bare),
            calls,
        ),
        other => return Err(format!("unknown layer {other}").into()),
    }
    Ok(())
}
