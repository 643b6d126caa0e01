//! Rate limiting for tower: the API gateway's rate limits and quotas,
//! keyed per tenant, API key or client.
//!
//! - [`GcraLimiter`]: GCRA in process on `governor` (one atomic word per key, lock-free), with
//!   **a rate per key** (per tenant plan), bounded memory and idle keys dropped.
//! - [`QuotaLimiter`]: allowances over long periods (per UTC day or month) that reset at a
//!   known time.
//! - `redis::RedisLimiter` (feature `redis`): GCRA in one atomic Lua script on Redis, so many
//!   instances share one budget, with a chosen behaviour when Redis is unreachable.
//! - [`KeyedRateLimitLayer`] applies any of them to an HTTP service: refusals are 429 with
//!   `Retry-After`; every response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//!   `RateLimit-Reset`. (Named apart from tower's own `RateLimitLayer`, one budget for all
//!   requests, and from governor's `RateLimiter`: every limit here is per key.)
//!
//! Each limiter is built the same way, `X::builder(name).key(extractor)`, then its settings,
//! then `build()`; the key type is the extractor's, found from the requests. A per-request
//! setting (a rate or quota per plan) is any `Fn(&Req) -> Option<T>` ([`PerRequest`]).
//!
//! # Handles and metrics
//!
//! `layer.handle()` (or `limiter.handle()`) reads a limiter's state as core's
//! [`StateHandle`](tower_patterns_core::observe::StateHandle), pattern `ratelimit`:
//! one [`KeyedRateLimitHandle`] whichever the limiter. Metrics,
//! registered when a limiter is built and touched only by refusals (an admitted request
//! costs nothing):
//!
//! - `tower_patterns_ratelimit_rejected_total{name, kind}`, `kind` one of `rate_limited`,
//!   `quota_exceeded`, `load_shed` (Redis unreachable, failing closed), `bad_key` (no usable
//!   key) and `invalid_limit` (an invalid rate or quota chosen for the request);
//! - for the Redis limiter, `tower_patterns_ratelimit_unavailable_total{name}` and the gauge
//!   `tower_patterns_ratelimit_degraded{name}`.
//!
//! Per-plan rates, the tenant from the request extensions:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::{http::ErrorResponseLayer, key::ExtensionKey, tenant::TenantId};
//! use tower_patterns_core::observe::StateHandle;
//! use tower_patterns_ratelimit::{GcraLimiter, KeyedRateLimitLayer, Rate};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let gold = Rate::per_second(100);
//! let limiter = GcraLimiter::builder("api")
//!     .key(ExtensionKey::<TenantId>::new())
//!     .rate(Rate::per_second(1)) // everyone else
//!     .rate_for(
//!         move |req: &Request<()>| {
//!             let tenant = TenantId::of(req)?;
//!             (tenant.as_str() == "gold-co").then_some(gold)
//!         },
//!         gold.refill(),
//!     )
//!     .build()
//!     .unwrap();
//! let layer = KeyedRateLimitLayer::new(limiter);
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .layer(layer.clone())
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     }));
//!
//! let call = |tenant: &str| {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(TenantId::new(tenant).unwrap());
//!     svc.clone().oneshot(req)
//! };
//! assert_eq!(call("free-co").await.unwrap().status(), StatusCode::OK);
//! let refused = call("free-co").await.unwrap();
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "1");
//! for _ in 0..100 {
//!     assert_eq!(call("gold-co").await.unwrap().status(), StatusCode::OK);
//! }
//! let handle = layer.handle();
//! assert_eq!((handle.keys(), handle.rate_limited()), (Some(2), 1));
//! assert!(handle.report().to_json().contains(r#""rejected_rate_limited":1.0"#));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod future;
mod gcra;
mod handle;
mod layer;
mod limiter;
mod period;
mod quota;
mod rate;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod stats;

pub use gcra::{GcraLimiter, GcraLimiterBuilder};
pub use handle::{KeyedRateLimitHandle, Limit};
pub use layer::{KeyedRateLimit, KeyedRateLimitLayer};
pub use limiter::{Decision, HasHandle, Limiter, NoKey, PerRequest, UseDefault};
pub use period::{Period, Quota};
pub use quota::{NoQuota, QuotaLimiter, QuotaLimiterBuilder};
pub use rate::Rate;
