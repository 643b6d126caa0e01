//! Rate limiting for tower: the API gateway's rate limits and quotas,
//! keyed per tenant, API key or client.
//!
//! - [`GcraLimiter`]: GCRA in process on `governor` (one atomic word per key, lock-free), with
//!   **a rate per key** (per tenant plan), bounded memory and idle keys dropped.
//! - [`QuotaLimiter`]: allowances over long periods (per UTC day or month) that reset at a
//!   known time.
//! - `redis::RedisLimiter` (feature `redis`): GCRA in one atomic Lua script on Redis, so many
//!   instances share one budget, with a chosen behaviour when Redis is unreachable.
//! - [`RateLimitLayer`] applies any of them to an HTTP service: refusals are 429 with
//!   `Retry-After`; every response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//!   `RateLimit-Reset`.
//!
//! Per-plan rates, the tenant from the request extensions:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::{http::ErrorResponseLayer, key::ExtensionKey, tenant::TenantId};
//! use tower_patterns_ratelimit::{GcraLimiter, Rate, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let gold = Rate::per_second(100);
//! let limiter = GcraLimiter::builder("api", ExtensionKey::<TenantId>::new())
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
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .layer(RateLimitLayer::new(limiter))
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
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod gcra;
mod quota;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;

pub use gcra::{DefaultRate, GcraLimiter, GcraLimiterBuilder, Rate, RateFor};
pub use quota::{DefaultQuota, Period, Quota, QuotaFor, QuotaLimiter, QuotaLimiterBuilder};
pub use service::{Decision, Limiter, RateLimit, RateLimitLayer, ResponseFuture};
