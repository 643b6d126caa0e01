//! Retry with backoff, budgets, server pushback and idempotency, as a
//! [`tower::retry::Policy`]: tower's own retry loop runs it.
//!
//! - [`Backoff`]: constant, linear, exponential, full, equal and decorrelated jitter, Polly's
//!   decorrelated jitter v2 and gRPC's ±20%, all capped and seeded.
//! - [`HttpRetry`]: which HTTP and gRPC results are retried (408, 429, 502, 503, 504, gRPC
//!   UNAVAILABLE, transport errors), never a [`Rejected`](tower_patterns_core::Rejected) from a
//!   layer below, POST and PATCH only with an `Idempotency-Key`, `Retry-After` and
//!   `grpc-retry-pushback-ms` honoured, the [`Attempt`] number in the request.
//! - [`ErrorRetry`] and [`RetryIf`] for other services.
//! - [`RetryBudget`]: one budget shared by every request through the layer (gRPC's retry
//!   throttling), and an optional cap on retries in flight.
//! - [`ReplayBodyLayer`]: request bodies up to a size are buffered so they can be retried;
//!   larger or streaming bodies are sent once.
//! - [`HedgingLayer`]: a second copy of a slow idempotent read after a fixed delay or a
//!   latency percentile, on the same budget; the first answer wins.
//! - A deadline across attempts; put tower's `Timeout` inside the retry layer for a
//!   per-attempt timeout.
//!
//! The retry itself is a pattern that plugs into a tower mechanism: [`RetryPolicy`] is a
//! `tower::retry::Policy`, built with `RetryPolicy::builder(name)...build()`, and
//! [`RetryPolicy::layer`] is tower's own `tower::retry::RetryLayer` running it; there is no
//! retry service of ours to name.
//!
//! # Metrics and handles
//!
//! - `tower_patterns_retry_retries_total{name}`: retries started;
//!   `tower_patterns_retry_gave_up_total{name, reason}`: failures not retried any more
//!   (`reason` is `attempts`, `budget`, `deadline` or `pushback`). A first attempt that
//!   succeeds records nothing.
//! - [`RetryPolicy::handle`]: a [`RetryPolicyHandle`] (pattern `retry`) reading the budget.
//! - The hedging layer's metrics and handle: see [`hedging`].
//!
//! # Example
//!
//! The defaults (3 attempts, full jitter from 100 ms capped at 10 s, a budget of 100 tokens),
//! then a customised policy:
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::BoxError;
//! use tower_patterns_retry::{Backoff, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let defaults = RetryPolicy::builder("catalog").http().build().unwrap();
//!
//! let policy = RetryPolicy::builder("inventory")
//!     .max_attempts(4)
//!     .backoff(Backoff::Exponential { base: Duration::from_millis(50), multiplier: 2.0 })
//!     .deadline(Duration::from_secs(2))
//!     .build()
//!     .unwrap();
//!
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let flaky = {
//!     let calls = calls.clone();
//!     service_fn(move |x: u32| {
//!         let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         async move { if n < 2 { Err::<u32, BoxError>("flaky".into()) } else { Ok(x) } }
//!     })
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(policy.layer())
//!     .timeout(Duration::from_millis(500)) // per attempt
//!     .service(flaky);
//! assert_eq!(svc.oneshot(7).await.unwrap(), 7);
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
//! # let _ = defaults;
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

/// Delays between attempts (the backoff families live in core, shared with the other crates).
pub mod backoff {
    pub use tower_patterns_core::backoff::*;
}
pub mod budget;
mod handle;
pub mod hedging;
mod http;
mod policy;
pub mod replay;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use handle::RetryPolicyHandle;
pub use hedging::{HedgeDelay, Hedging, HedgingBuilder, HedgingHandle, HedgingLayer, hedge_reads};
pub use http::{Attempt, HttpRetry, TryCloneBody, grpc_pushback, retry_after};
pub use policy::{
    Delay, ErrorRetry, Pushback, RetryIf, RetryKind, RetryPolicy, RetryPolicyBuilder, RetryShared,
    Verdict,
};
pub use replay::{ReplayBody, ReplayBodyLayer, ReplayableBody};
