//! The tenant, rate limit and cache layers over HTTP, side by side in one run. Every request
//! is a `GET /catalog` from one of 16 tenants (the tenant in `x-tenant-id`); rates are high
//! enough that nothing is refused and caches are warmed, so what differs is the layers' work.
//!
//! Rate limit alone, over an empty 200:
//! - `bare_http`: the inner service;
//! - `tower_governor_0_8`: GCRA keyed by the raw header on governor's keyed store, with a
//!   burst of 10⁹ (at ours, 4,000, it refuses requests with 2 tasks: see `web::governor`);
//!   `tower_governor_0_8_same_burst` (one task only): the same at our burst;
//! - ours: `KeyedRateLimitLayer` + `GcraLimiter` keyed by the header, with and without the
//!   `RateLimit-*` headers; and the tenant layer (header, cached registry) before a limit per
//!   tenant.
//!
//! Also `tower_patterns_quota_no_headers` (a quota per tenant header, a month's allowance
//! that never runs out) and, over the page, `tower_patterns_http_cache_hit` (the RFC 9111
//! cache answering a stored `200`; its peers have no HTTP cache, so `bare_page` is its
//! reference).
//!
//! The edge stack (tenant, rate limit, cache hit), over a page whose body
//! becomes axum's `Body` as a handler's would:
//! - `bare_page`: the page alone;
//! - `tower_governor_and_tower_resilience_cache`: the nearest the ecosystem offers (a keyed
//!   limit on the raw header, a cache keyed by header and path; no tenant check);
//! - `tower_resilience_0_13_stack`: its rate limiter (one limit for all: it has no keys) and
//!   its cache;
//! - `tower_patterns_stack`: tenant (registry-checked) → rate limit per tenant → cache-aside
//!   scoped by tenant.
//!
//! tower itself has no keyed rate limit and no cache (its `RateLimit` is one window per
//! service clone), so no tower-only stack is shown.
//!
//! - `tenant_single`: ns per call, one task, polled directly.
//! - `tenant_contended`: calls/s at 1, 2 and 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features full --bench tenant`

mod support;
#[path = "support/http.rs"]
mod web;

use criterion::{criterion_group, criterion_main};
use tower::Layer;
use web::{
    Ok200, Page, governor, governor_same_burst, http, ours_cache_layer, ours_http_cache,
    ours_limit_only, ours_quota_only, ours_tenant_limit_layer, tenant_layer, to_axum,
    tower_resilience_cache, tower_resilience_ratelimiter, warmed,
};

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare_http", http(Ok200));
        $case!("tower_governor_0_8", http(governor(Ok200)));
        $case!(
            "tower_patterns_ratelimit",
            http(ours_limit_only(true, Ok200))
        );
        $case!(
            "tower_patterns_ratelimit_no_headers",
            http(ours_limit_only(false, Ok200))
        );
        $case!(
            "tower_patterns_tenant_and_ratelimit",
            http(tenant_layer().layer(ours_tenant_limit_layer().layer(Ok200)))
        );
        $case!(
            "tower_patterns_quota_no_headers",
            http(ours_quota_only(Ok200))
        );
        $case!("bare_page", http(to_axum().layer(Page)));
        $case!(
            "tower_patterns_http_cache_hit",
            warmed(http(ours_http_cache().layer(Page)))
        );
        $case!(
            "tower_governor_and_tower_resilience_cache",
            warmed(http(governor(
                to_axum().layer(tower_resilience_cache(Page))
            )))
        );
        $case!(
            "tower_resilience_0_13_stack",
            warmed(http(
                tower_resilience_ratelimiter().layer(to_axum().layer(tower_resilience_cache(Page)))
            ))
        );
        $case!(
            "tower_patterns_stack",
            warmed(http(tenant_layer().layer(
                ours_tenant_limit_layer().layer(to_axum().layer(ours_cache_layer().layer(Page)))
            )))
        );
    };
}

support::bench_groups!("tenant", each_peer);

/// tower_governor at our burst, one task (where no request is ever refused).
fn same_burst(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("tenant_single");
    let mut svc = http(governor_same_burst(Ok200));
    let mut i = 0u64;
    group.bench_function("tower_governor_0_8_same_burst", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::one_call(&mut svc, i)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, same_burst, contended
}
criterion_main!(benches);
