//! Per request: the tenant from a header, then a GCRA check keyed by it, side by side in one
//! run with `tower_governor` (header-keyed GCRA on governor's keyed store) and the bare HTTP
//! service. Every request is built the same way (16 tenants in turn) and every rate is high
//! enough that nothing is refused, so what differs is the layers' own work.
//!
//! - `tenant_single`: ns per call, one task, polled directly.
//! - `tenant_contended`: calls/s at 1, 2 and 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features full --bench tenant`

mod support;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use axum::body::Body;
use criterion::{criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tower_patterns::{
    key::{ExtensionKey, HeaderKey},
    ratelimit::{GcraLimiter, Rate, RateLimitLayer},
    tenant::TenantId,
    tenant_resolution::{Registry, StaticTenants, TenantLayer},
};

const TENANTS: usize = 16;

/// The inner HTTP service: answers at once.
#[derive(Clone, Copy)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Body::empty())))
    }
}

/// Turns the benchmark's `u64` into a request from one of 16 tenants.
#[derive(Clone)]
struct Http<S> {
    inner: S,
    tenants: std::sync::Arc<Vec<HeaderValue>>,
}

fn http<S>(inner: S) -> Http<S> {
    let tenants = (0..TENANTS)
        .map(|i| HeaderValue::from_str(&format!("tenant-{i}")).unwrap())
        .collect();
    Http {
        inner,
        tenants: std::sync::Arc::new(tenants),
    }
}

impl<S> Service<u64> for Http<S>
where
    S: Service<Request<()>, Response = Response<Body>>,
{
    type Response = u16;
    type Error = S::Error;
    type Future = Map<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, i: u64) -> Self::Future {
        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-tenant-id", self.tenants[i as usize % TENANTS].clone());
        Map {
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future, its response reduced to the status code.
    struct Map<F> { #[pin] fut: F }
}

impl<F, E> std::future::Future for Map<F>
where
    F: std::future::Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<u16, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map(|r| r.map(|res| res.status().as_u16()))
    }
}

fn tenants() -> StaticTenants {
    let toml: String = (0..TENANTS)
        .map(|i| format!("[[tenants]]\nid = \"tenant-{i}\"\nplan = \"gold\"\n"))
        .collect();
    StaticTenants::from_toml(&toml).unwrap()
}

/// High enough never to refuse (a burst of 4,000 at 1 ns refill was refused under 2 tasks:
/// see docs/performance.md).
const RATE: Rate = Rate::per_second(1_000_000_000).burst(1_000_000_000);

fn ours_tenant_and_limit()
-> impl Service<Request<()>, Response = Response<Body>, Error = tower_patterns::BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let limiter = GcraLimiter::builder("bench", ExtensionKey::<TenantId>::new())
        .rate(RATE)
        .build()
        .unwrap();
    let tenant = TenantLayer::builder_with(Registry::new(tenants()))
        .header("x-tenant-id")
        .build()
        .unwrap();
    tenant.layer(RateLimitLayer::new(limiter).layer(Ok200))
}

fn ours_limit_only(
    headers: bool,
) -> impl Service<Request<()>, Response = Response<Body>, Error = tower_patterns::BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let limiter = GcraLimiter::builder(
        "bench",
        HeaderKey::new(http::HeaderName::from_static("x-tenant-id")),
    )
    .rate(RATE)
    .build()
    .unwrap();
    RateLimitLayer::new(limiter).headers(headers).layer(Ok200)
}

#[derive(Clone)]
struct TenantHeader;

impl tower_governor::key_extractor::KeyExtractor for TenantHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<HeaderValue, tower_governor::GovernorError> {
        req.headers()
            .get("x-tenant-id")
            .cloned()
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

fn governor() -> tower_governor::governor::Governor<
    TenantHeader,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Ok200,
    Body,
> {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .key_extractor(TenantHeader)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(config).layer(Ok200)
}

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare_http", http(Ok200));
        $case!("tower_governor_0_8", http(governor()));
        $case!("tower_patterns_ratelimit", http(ours_limit_only(true)));
        $case!(
            "tower_patterns_ratelimit_no_headers",
            http(ours_limit_only(false))
        );
        $case!(
            "tower_patterns_tenant_and_ratelimit",
            http(ours_tenant_and_limit())
        );
    };
}

support::bench_groups!("tenant", each_peer);

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended
}
criterion_main!(benches);
