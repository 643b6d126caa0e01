//! The HTTP side of the tenant, rate limit and cache benchmarks, shared with
//! `examples/callgrind_probe.rs`: inner services that answer at once, the adapter that turns
//! the benchmark's `u64` into a request from one of 16 tenants, and every stack compared.
//!
//! Every stack is built once, outside the timed loop; rates are high enough that nothing is
//! refused, and caches are warmed so every measured call is a hit.

#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, uri::PathAndQuery};
use http_body_util::Full;
use tower::{Layer, Service, util::MapResponseLayer};
use tower_patterns::{
    BoxError, KeyError,
    cache::{CacheLayer, store::QuickCacheStore},
    key::{ExtensionKey, HeaderKey, key_fn},
    ratelimit::{GcraLimiter, KeyedRateLimitLayer, Rate},
    tenant::{Registry, StaticTenants, TenancyLayer, TenantId},
};

/// How many tenants the requests cycle through.
pub const TENANTS: usize = 16;

/// High enough never to refuse, with a burst small enough (4,000) that the `RateLimit-*`
/// numbers come from the header table, as they do for real limits.
pub const RATE: Rate = Rate::per_second(1_000_000_000).burst(4_000);

/// The inner HTTP service: an empty 200 at once.
#[derive(Clone, Copy)]
pub struct Ok200;

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

/// The origin behind a cache: a small page whose response can be cloned (a cache keeps it).
#[derive(Clone, Copy)]
pub struct Page;

impl Service<Request<()>> for Page {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"catalog")))))
    }
}

/// What axum does to a handler's response: the body becomes axum's `Body` (boxed). Every
/// cache stack has it at the same place, and tower_governor needs it (its refusals are
/// `Response<Body>`).
pub type ToAxum = MapResponseLayer<fn(Response<Full<Bytes>>) -> Response<Body>>;

pub fn to_axum() -> ToAxum {
    MapResponseLayer::new(|res: Response<Full<Bytes>>| res.map(Body::new))
}

/// Turns the benchmark's `u64` into a `GET /catalog` from one of 16 tenants (the tenant in
/// `x-tenant-id`); the response is reduced to its status code.
#[derive(Clone)]
pub struct Http<S> {
    inner: S,
    tenants: std::sync::Arc<Vec<HeaderValue>>,
    path: PathAndQuery,
}

pub fn http<S>(inner: S) -> Http<S> {
    let tenants = (0..TENANTS)
        .map(|i| HeaderValue::from_str(&format!("tenant-{i}")).unwrap())
        .collect();
    Http {
        inner,
        tenants: std::sync::Arc::new(tenants),
        path: PathAndQuery::from_static("/catalog"),
    }
}

impl<S, B> Service<u64> for Http<S>
where
    S: Service<Request<()>, Response = Response<B>>,
{
    type Response = u16;
    type Error = S::Error;
    type Future = Status<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, i: u64) -> Self::Future {
        let mut req = Request::new(());
        *req.uri_mut() = http::Uri::from(self.path.clone());
        req.headers_mut()
            .insert("x-tenant-id", self.tenants[i as usize % TENANTS].clone());
        Status {
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future, its response reduced to the status code.
    pub struct Status<F> { #[pin] fut: F }
}

impl<F, B, E> Future for Status<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<u16, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map(|r| {
            r.map(|res| {
                // Nothing may be refused: a 429 is cheap and would flatter the layer.
                assert_eq!(res.status(), http::StatusCode::OK, "refused in a benchmark");
                res.status().as_u16()
            })
        })
    }
}

/// Calls `svc` once per tenant, so that caches hold every key before measuring.
pub fn warmed<S>(mut svc: Http<S>) -> Http<S>
where
    Http<S>: Service<u64>,
    <Http<S> as Service<u64>>::Error: std::fmt::Debug,
{
    for i in 0..TENANTS as u64 {
        tower_patterns_testkit::call_now(&mut svc, i).expect("a warm-up call");
    }
    svc
}

/// The 16 tenants, all active, in the registry's TOML form.
pub fn tenants() -> StaticTenants {
    let toml: String = (0..TENANTS)
        .map(|i| format!("[[tenants]]\nid = \"tenant-{i}\"\nplan = \"gold\"\n"))
        .collect();
    StaticTenants::from_toml(&toml).unwrap()
}

/// Our tenant layer: the tenant from `x-tenant-id` (unverified, as from trusted internal
/// callers), checked against a cached registry.
pub fn tenant_layer() -> tower_patterns::tenant::TenancyLayer<StaticTenants> {
    TenancyLayer::builder("bench")
        .registry(Registry::new(tenants()))
        .header("x-tenant-id")
        .allow_unverified()
        .build()
        .unwrap()
}

/// Our rate limit keyed by the raw header (no tenant layer before it).
pub fn ours_limit_only<S>(
    headers: bool,
    inner: S,
) -> impl Service<Request<()>, Response = S::Response, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static
where
    S: Service<Request<()>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let limiter = GcraLimiter::builder("bench")
        .key(HeaderKey::new(http::HeaderName::from_static("x-tenant-id")))
        .rate(RATE)
        .build()
        .unwrap();
    KeyedRateLimitLayer::new(limiter)
        .headers(headers)
        .layer(inner)
}

/// Our quota per tenant header: a month's allowance that never runs out, without headers.
pub fn ours_quota_only<S>(
    inner: S,
) -> impl Service<Request<()>, Response = S::Response, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static
where
    S: Service<Request<()>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let limiter = tower_patterns::ratelimit::QuotaLimiter::builder("bench_quota")
        .key(HeaderKey::new(http::HeaderName::from_static("x-tenant-id")))
        .quota(tower_patterns::ratelimit::Quota::new(
            u32::MAX,
            tower_patterns::ratelimit::Period::Every(Duration::from_secs(30 * 24 * 3600)),
        ))
        .build()
        .unwrap();
    KeyedRateLimitLayer::new(limiter)
        .headers(false)
        .layer(inner)
}

/// Our RFC 9111 HTTP cache, storing the page for an hour (it sends no `Cache-Control`).
pub fn ours_http_cache() -> tower_patterns::cache::http::HttpCacheLayer {
    tower_patterns::cache::http::HttpCacheLayer::builder("bench_http")
        .default_ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// Our rate limit per resolved tenant.
pub fn ours_tenant_limit_layer()
-> KeyedRateLimitLayer<GcraLimiter<ExtensionKey<TenantId>, TenantId>> {
    KeyedRateLimitLayer::new(
        GcraLimiter::builder("bench")
            .key(ExtensionKey::<TenantId>::new())
            .rate(RATE)
            .build()
            .unwrap(),
    )
}

/// A cached page.
pub type CachedPage = Response<Full<Bytes>>;

type PageKey = fn(&Request<()>) -> Result<PathAndQuery, KeyError>;

/// tower-resilience's cache key: the tenant header and the path.
type TenantAndPath = (Option<HeaderValue>, Option<PathAndQuery>);

/// The key of a cached page: its path and query (the tenant scope is added by the layer).
fn page_key(req: &Request<()>) -> Result<PathAndQuery, KeyError> {
    req.uri()
        .path_and_query()
        .cloned()
        .ok_or_else(|| KeyError::missing("path"))
}

/// Our cache-aside layer on its `quick_cache` store, scoped by the tenant in the request extensions.
pub fn ours_cache_layer() -> CacheLayer<
    tower_patterns::key::KeyFn<PageKey>,
    tower_patterns::cache::FromExtensions,
    PathAndQuery,
    CachedPage,
    QuickCacheStore<PathAndQuery, CachedPage>,
> {
    CacheLayer::builder("bench")
        .store(QuickCacheStore::builder().max_entries(10_000).build())
        .key(key_fn(page_key as PageKey))
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// tower_governor's key: the raw `x-tenant-id` header.
#[derive(Clone)]
pub struct TenantHeader;

impl tower_governor::key_extractor::KeyExtractor for TenantHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<HeaderValue, tower_governor::GovernorError> {
        req.headers()
            .get("x-tenant-id")
            .cloned()
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// tower_governor 0.8 (keyed GCRA on governor's DashMap store) at the same refill as ours,
/// with a burst of 10⁹: at a burst of 4,000 it refused requests with 2 tasks (governor reads
/// the clock before its compare-and-swap, so a thread paused in between is judged at a past
/// instant; our limiter checks such refusals again on a fresh reading), and a refused request
/// would fail the benchmark. One task at a time never meets that: [`governor_same_burst`] is
/// the like-for-like row there.
pub fn governor<S>(inner: S) -> Governed<S> {
    governor_with_burst(1_000_000_000, inner)
}

/// tower_governor 0.8 with our burst (4,000), for single-task rows and instruction counts.
pub fn governor_same_burst<S>(inner: S) -> Governed<S> {
    governor_with_burst(RATE.burst_size(), inner)
}

/// tower_governor's service over `inner`.
pub type Governed<S> = tower_governor::governor::Governor<
    TenantHeader,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    S,
    Body,
>;

fn governor_with_burst<S>(burst: u32, inner: S) -> Governed<S> {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(burst)
        .key_extractor(TenantHeader)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(config).layer(inner)
}

/// tower-resilience 0.13's cache, keyed by the tenant header and the path (it has no tenant
/// scope of its own).
pub fn tower_resilience_cache<S>(
    inner: S,
) -> tower_resilience::cache::Cache<S, Request<()>, TenantAndPath, CachedPage>
where
    S: Service<Request<()>, Response = Response<Full<Bytes>>>,
{
    tower_resilience::cache::CacheLayer::builder()
        .max_size(10_000)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|req: &Request<()>| {
            (
                req.headers().get("x-tenant-id").cloned(),
                req.uri().path_and_query().cloned(),
            )
        })
        .build()
        .unwrap()
        .layer(inner)
}

/// tower-resilience 0.13's rate limiter (one limit for all requests: it has no keys), at a
/// rate that never refuses.
pub fn tower_resilience_ratelimiter() -> tower_resilience::ratelimiter::RateLimiterLayer {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(1_000_000_000)
        .refresh_period(Duration::from_secs(1))
        .build()
        .unwrap()
}
