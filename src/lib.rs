//! System-design patterns as [tower] middleware: circuit breaker, bulkhead, retry with
//! backoff, caching, rate limiting, multi-tenancy, sharding, event sourcing, CQRS, eventual
//! consistency and sagas, composable with `ServiceBuilder` in axum, hyper and tonic services.
//! An API gateway built from them runs as a tower service or on its own listener, and the
//! strangler fig moves a monolith's traffic to new services through it or any tower stack.
//!
//! This crate is the facade: feature `x` gives module `tower_patterns::x`, the whole public API
//! of crate `tower-patterns-x`, and the shared vocabulary of `tower-patterns-core` is at its
//! root. With no feature it builds and brings the vocabulary alone. [`tenant`] is there either
//! way: core's tenant vocabulary ([`TenantId`](tenant::TenantId),
//! [`TenantError`](tenant::TenantError)) without the feature, the whole tenant crate (which
//! re-exports that vocabulary) with it.
//!
//! # Features
//!
//! | feature     | brings                                                               | status  |
//! |-------------|----------------------------------------------------------------------|---------|
//! | (none)      | [`Rejected`], [`http`] error mapping, [`classify`], [`key`], [`keyed`], [`observe`], [`rng`], [`tenant`] (`TenantId`, `TenantError`) | landed |
//! | `breaker`   | [`breaker`]: circuit breaker (count or time window, slow calls, half-open ramp, keyed) and fallback layers | landed |
//! | `bulkhead`  | [`bulkhead`]: FIFO semaphore pools with bounded waiting, keyed partitions, isolated executor, adaptive limits | landed |
//! | `retry`     | [`retry`]: retry policies with backoff families, budgets, `Retry-After`, idempotency | landed |
//! | `cache`     | [`cache`]: cache-aside (single flight, SWR, stale-if-error, XFetch, negative caching, tenant-scoped keys), write-through, write-behind, RFC 9111 HTTP caching, on moka | landed |
//! | `cache-redis` | the cache's Redis store and two-tier store (moka L1 + Redis L2, invalidation broadcast) | landed |
//! | `tenant`    | [`tenant`]: tenant resolution (header, host, path, verified JWT, API key; trusted proxies), the registry, the `Tenant` extractor, data isolation on PostgreSQL and SQLite | landed |
//! | `tenant-postgres` | the PostgreSQL tenant registry and isolation helpers (database, schema or row-level security per tenant) | landed |
//! | `tenant-sqlite` | the tenant-scoped table API on SQLite | landed |
//! | `axum`      | axum integrations: the `Tenant` extractor and `ConnectInfo` as the peer address | landed |
//! | `ratelimit` | [`ratelimit`]: keyed GCRA with a rate per key, long-period quotas, `RateLimit-*` headers | landed |
//! | `ratelimit-redis` | the distributed GCRA limiter over Redis, fail open or closed | landed |
//! | `shard`     | [`shard`]: shard router with per-shard readiness, seven strategies, scatter-gather, rebalancing | landed |
//! | `eventstore`| [`eventstore`]: event store on SQLite (and in memory), aggregates, snapshots, upcasting, time travel, commands as a `Service` | landed |
//! | `eventstore-postgres` | the event store on PostgreSQL, with gap-safe global reads | landed |
//! | `cqrs`      | [`cqrs`]: checkpointed projections (SQLite), the command/query layer, the in-process bus | landed |
//! | `cqrs-postgres` | projections, the inbox and the one-runner lease on PostgreSQL | landed |
//! | `cqrs-nats` | the transactional outbox relay and durable consumers over NATS JetStream | landed |
//! | `consistency` | [`consistency`]: signed consistency tokens, read-your-writes and monotonic reads over read models | landed |
//! | `consistency-postgres` | read-replica routing: reads to PostgreSQL streaming replicas that have replayed the session's token, lag as metrics | landed |
//! | `saga` | [`saga`]: orchestrated sagas with a durable log on the event store (crash recovery, compensation, durable deadlines, stuck sagas and an operator API) and choreography over the event bus | landed |
//! | `saga-postgres` | the saga index on PostgreSQL: several orchestrator processes, each saga leased to one | landed |
//! | `saga-nats` | choreographed sagas as NATS JetStream consumers (with `cqrs-nats`) | landed |
//! | `gateway` | [`gateway`]: an API gateway on hyper built from these layers (routing, JWT and API keys, per-consumer limits, transforms, resilient balanced upstreams, aggregation, hot reload, `/metrics`) | landed |
//! | `gateway-redis` | gateway limits shared by several instances through Redis | landed |
//! | `strangler` | [`strangler`]: the strangler fig (a migration table with sticky percentage splits and overrides, ramps with automatic rollback, shadow comparison with a noise baseline, dual writes with reconciliation on SQLite); also a route kind of the gateway | landed |
//! | `strangler-postgres` | dual writes and reconciliation between PostgreSQL databases | landed |
//! | `chaos` | [`chaos`]: fault injection (latency, HTTP and gRPC statuses, custom errors, hangs, aborted calls) at seeded rates, selected per request by header, tenant or closure, switched at runtime through a handle | landed |
//! | `full`      | every feature that has landed                                        | landed  |
//!
//! # Example
//!
//! Turning the errors of a stack into HTTP responses (503/429 with `Retry-After`, 504, 500):
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns::{BoxError, Rejected, RejectionKind, http::ErrorResponseLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .service(service_fn(|_req: Request<String>| async {
//!         let open = Rejected::new(RejectionKind::CircuitOpen)
//!             .with_retry_after(Duration::from_secs(5));
//!         Err::<Response<String>, BoxError>(open.into())
//!     }));
//!
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "5");
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]
// Without its feature a module of the table above is not here: link to its crate instead.
#![cfg_attr(
    not(feature = "breaker"),
    doc = "[`breaker`]: https://docs.rs/tower-patterns-breaker"
)]
#![cfg_attr(
    not(feature = "bulkhead"),
    doc = "[`bulkhead`]: https://docs.rs/tower-patterns-bulkhead"
)]
#![cfg_attr(
    not(feature = "retry"),
    doc = "[`retry`]: https://docs.rs/tower-patterns-retry"
)]
#![cfg_attr(
    not(feature = "cache"),
    doc = "[`cache`]: https://docs.rs/tower-patterns-cache"
)]
#![cfg_attr(
    not(feature = "ratelimit"),
    doc = "[`ratelimit`]: https://docs.rs/tower-patterns-ratelimit"
)]
#![cfg_attr(
    not(feature = "shard"),
    doc = "[`shard`]: https://docs.rs/tower-patterns-shard"
)]
#![cfg_attr(
    not(feature = "cqrs"),
    doc = "[`cqrs`]: https://docs.rs/tower-patterns-cqrs"
)]
#![cfg_attr(
    not(feature = "consistency"),
    doc = "[`consistency`]: https://docs.rs/tower-patterns-consistency"
)]
#![cfg_attr(
    not(feature = "saga"),
    doc = "[`saga`]: https://docs.rs/tower-patterns-saga"
)]
#![cfg_attr(
    not(feature = "gateway"),
    doc = "[`gateway`]: https://docs.rs/tower-patterns-gateway"
)]
#![cfg_attr(
    not(feature = "strangler"),
    doc = "[`strangler`]: https://docs.rs/tower-patterns-strangler"
)]
#![cfg_attr(
    not(feature = "chaos"),
    doc = "[`chaos`]: https://docs.rs/tower-patterns-chaos"
)]
#![cfg_attr(
    not(feature = "eventstore"),
    doc = "[`eventstore`]: https://docs.rs/tower-patterns-eventstore"
)]

// The README's Rust snippet, compiled and run by `cargo test --doc` (it needs these features).
#[cfg(all(doctest, feature = "breaker", feature = "retry", feature = "bulkhead"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use tower_patterns_core::{
    BoxError, ConfigError, KeyError, KeyExtractor, Rejected, RejectionKind, backoff, classify,
    error, http, key, keyed, metric_name, observe, rng,
};

// Without the `tenant` feature: core's tenant vocabulary (with it, the tenant crate below).
#[cfg(not(feature = "tenant"))]
pub use tower_patterns_core::tenant;

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub use tower_patterns_breaker as breaker;

#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub use tower_patterns_bulkhead as bulkhead;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use tower_patterns_retry as retry;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use tower_patterns_cache as cache;

#[cfg(feature = "eventstore")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventstore")))]
pub use tower_patterns_eventstore as eventstore;

#[cfg(feature = "cqrs")]
#[cfg_attr(docsrs, doc(cfg(feature = "cqrs")))]
pub use tower_patterns_cqrs as cqrs;

#[cfg(feature = "consistency")]
#[cfg_attr(docsrs, doc(cfg(feature = "consistency")))]
pub use tower_patterns_consistency as consistency;

#[cfg(feature = "saga")]
#[cfg_attr(docsrs, doc(cfg(feature = "saga")))]
pub use tower_patterns_saga as saga;

#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub use tower_patterns_gateway as gateway;

#[cfg(feature = "strangler")]
#[cfg_attr(docsrs, doc(cfg(feature = "strangler")))]
pub use tower_patterns_strangler as strangler;

#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
pub use tower_patterns_chaos as chaos;

#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
pub use tower_patterns_ratelimit as ratelimit;

#[cfg(feature = "tenant")]
#[cfg_attr(docsrs, doc(cfg(feature = "tenant")))]
pub use tower_patterns_tenant as tenant;

#[cfg(feature = "shard")]
#[cfg_attr(docsrs, doc(cfg(feature = "shard")))]
pub use tower_patterns_shard as shard;
