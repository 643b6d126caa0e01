//! The shared vocabulary of [tower-patterns]: what every pattern crate speaks.
//!
//! - [`Rejected`]: the one error for every fail-fast rejection (open circuit, full bulkhead,
//!   rate limit, quota, load shed), with a [`RejectionKind`], a retry hint and the name of the
//!   instance that rejected.
//! - [`http`]: errors to HTTP responses (503/429 with `Retry-After`, 504, 400, 500), for
//!   axum's `HandleErrorLayer` and for plain hyper.
//! - [`backoff`]: the delays between attempts (constant, exponential, the jitter families),
//!   shared by retry, projections and sagas.
//! - [`check`]: the one response future of a middleware that checks (a limit, a lookup)
//!   before it calls its inner service.
//! - [`classify`]: success, failure or neither, for generic services and for HTTP and gRPC
//!   through tower-http's classifiers (trailers included).
//! - [`key`] and [`keyed`]: taking a key from a request, and a bounded map of per-key
//!   instances.
//! - [`observe`]: metric and tracing names, and the [`StateHandle`](observe::StateHandle) trait.
//! - [`rng`]: seedable, lock-free randomness for jitter and sampling.
//! - [`tenant`]: the validated [`TenantId`](tenant::TenantId) that tenant-aware layers read
//!   from the request extensions.
//! - [`ConfigError`]: what every validated builder returns.
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_core::{http::error_response, BoxError, Rejected, RejectionKind};
//!
//! let err: BoxError = Rejected::new(RejectionKind::CircuitOpen)
//!     .with_retry_after(Duration::from_secs(30))
//!     .into();
//! let res: ::http::Response<String> = error_response(&*err);
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "30");
//! ```
//!
//! [tower-patterns]: https://docs.rs/tower-patterns

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod check;
pub mod classify;
pub mod error;
pub mod http;
pub mod key;
pub mod keyed;
pub mod observe;
pub mod rng;
pub mod tenant;

pub use error::{BoxError, ConfigError, Rejected, RejectionKind};

/// Defines `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service is the
/// field `inner` (as tower-http's `define_inner_service_accessors!` does). Used inside an
/// `impl` block of the pattern crates.
#[doc(hidden)]
#[macro_export]
macro_rules! inner_service_accessors {
    () => {
        /// A reference to the inner service.
        pub const fn get_ref(&self) -> &S {
            &self.inner
        }

        /// A mutable reference to the inner service.
        pub const fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub use key::{KeyError, KeyExtractor};
