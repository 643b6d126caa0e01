//! An API gateway on hyper, built from tower-patterns layers: one entry point that
//! authenticates, rate-limits, routes, transforms and calls the services behind it.
//!
//! - **Routing** by host (exact or `*.suffix`), path (`/users/{id}`, or a prefix), method and
//!   header, to upstream groups of several addresses, balanced by the power of two choices
//!   with outlier ejection.
//! - **Authentication**: verified JWTs (HS256, RS256, EdDSA; inline keys or a JWKS file,
//!   rotated by a reload; the algorithm bound to each key) and API keys, each naming a
//!   consumer; the consumer and tenant go upstream in headers a client cannot forge (stripped
//!   on entry).
//! - **Limits** per consumer, tenant or client address, with a rate per plan (the rate limit
//!   crate's GCRA, in process or on Redis for several instances): 429 with `RateLimit-*` and
//!   `Retry-After`. A body cap (413), a body read timeout (408) and a header read timeout (the
//!   connection is closed).
//! - **Transforms**: headers added, set, removed, renamed; the path's prefix stripped or the
//!   path rewritten; a request id accepted or made, sent upstream, returned, and in the logs.
//! - **Resilient upstreams**: per group a timeout, retries of idempotent requests within a
//!   budget, a circuit breaker, a bulkhead (from this project's crates).
//! - **Aggregation**: a route that calls several groups at once and merges their JSON, marked
//!   partial when a part fails.
//! - **Hot reload** on a file change or SIGHUP, validated first; an invalid file is refused
//!   and the running configuration stays.
//! - `/metrics` (feature `prometheus`), `/healthz`, `/readyz` on an admin listener.
//!
//! The configuration reference is the API gateway guide (`docs/patterns/api-gateway.md`);
//! `examples/gateway` runs one with demo upstreams.
//!
//! # Example
//!
//! A gateway used as a tower service in process (its `serve` method runs it on a listener):
//!
//! ```
//! use http::{Request, StatusCode};
//! use http_body_util::Full;
//! use tower::ServiceExt;
//! use tower_patterns_gateway::{Gateway, GatewayConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = GatewayConfig::parse(
//!     r#"
//! [auth.keys]
//! api_key = { header = "x-api-key" }
//!
//! [[consumers]]
//! id = "mobile"
//! api_keys_sha256 = ["c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"] # of "demo-key"
//!
//! [upstreams.users]
//! addresses = ["127.0.0.1:9"]     # nothing listens there
//! timeout = "1s"
//!
//! [[routes]]
//! name = "users"
//! path = "/users/{id}"
//! upstream = "users"
//! auth = "keys"
//! "#,
//!     "gateway.toml",
//! )
//! .unwrap();
//! let gateway = Gateway::builder("edge").config(config).build().unwrap();
//!
//! let call = |path: &str| {
//!     let req = Request::get(path).body(Full::<bytes::Bytes>::default()).unwrap();
//!     gateway.clone().oneshot(req)
//! };
//! assert_eq!(call("/nowhere").await.unwrap().status(), StatusCode::NOT_FOUND);
//! let refused = call("/users/7").await.unwrap();
//! assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "no API key");
//! assert!(refused.headers().contains_key("x-request-id"));
//! assert_eq!(gateway.generation(), 1);
//! # }
//! ```
//!
//! # Metrics
//!
//! - `tower_patterns_gateway_requests_total{name, route, class}` (published when a handle
//!   reports, as `/metrics` does);
//! - `tower_patterns_gateway_reloads_total{name, outcome}` (`ok`, `refused`) and the gauge
//!   `tower_patterns_gateway_config_generation{name}`;
//! - `tower_patterns_gateway_ejections_total{name}` per upstream group;
//! - and those of the breakers, bulkheads, retry policies and limiters inside, each named
//!   `<gateway>.<group or limit>`.

mod admin;
mod aggregate;
mod auth;
mod body;
mod compile;
pub mod config;
mod error;
mod gateway;
mod limits;
mod read;
mod route;
mod strangle;
mod transform;
mod upstream;

pub use auth::Identity;
pub use body::GatewayBody;
pub use config::{ConfigFileError, GatewayConfig};
pub use error::GatewayError;
pub use gateway::{
    ConfigSource, Gateway, GatewayBuilder, GatewayHandle, NoConfig, Reloader, future,
};
pub use limits::ClientAddr;
pub use route::RouteParams;
