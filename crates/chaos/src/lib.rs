//! Middleware that injects faults on purpose (latency, error statuses, custom errors, hangs and
//! aborted calls) so you can watch a breaker open, a timeout fire, a bulkhead fill or a retry
//! recover before production shows you.
//!
//! - [`ChaosLayer`] draws once per selected call and applies at most one [`Fault`], each with
//!   its own rate: [`Fault::latency`], [`Fault::status`] (an HTTP status),
//!   [`Fault::grpc`] (a gRPC status), [`Fault::error`] (your own error), [`Fault::hang`] and
//!   [`Fault::abort`] / [`Fault::abort_after`] (the inner service runs, its answer is lost).
//! - The draws come from a seeded SplitMix64 sequence: the same seed and the same calls in the
//!   same order give the same faults, so a failing test replays.
//! - [`Select`] chooses which calls may get a fault: every call ([`Always`]), those carrying a
//!   header ([`Header`]), those of some tenants ([`Tenants`]), or any closure.
//! - [`ChaosHandle`] switches it all at runtime: replace the faults, clear them, switch off and
//!   on, reseed, and count what was injected. It implements core's `StateHandle` (pattern
//!   `chaos`) for health and admin routes.
//!
//! Switched off or without faults, a call costs one atomic load and allocates nothing; a
//! selected call adds an atomic increment and a read lock on the plan. Timers are boxed only
//! when a latency or a timed abort fires.
//!
//! # Example
//!
//! A layer with no faults, then one that fails a quarter of the calls that ask for it with a
//! 503 and delays another quarter, switched off and on through its handle:
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderName, Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_chaos::{ChaosLayer, Fault, FaultKind, Header};
//! use tower_patterns_core::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let quiet = ChaosLayer::builder("quiet").build().unwrap();
//! assert!(!quiet.handle().is_active());
//!
//! let layer = ChaosLayer::builder("provider")
//!     .seed(7)
//!     .fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE).rate(0.25))
//!     .fault(Fault::latency(Duration::from_millis(300)).rate(0.25))
//!     .select(Header::present(HeaderName::from_static("x-chaos")))
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) }));
//!
//! // Requests without the header are never touched.
//! for _ in 0..100 {
//!     let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! assert_eq!(handle.draws(), 0);
//!
//! let mut unavailable = 0;
//! for _ in 0..400 {
//!     let req = Request::builder().header("x-chaos", "1").body(()).unwrap();
//!     if svc.clone().oneshot(req).await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE {
//!         unavailable += 1;
//!     }
//! }
//! assert!((70..130).contains(&unavailable));
//! assert_eq!(handle.injected(FaultKind::Status), unavailable);
//!
//! handle.disable();
//! let req = Request::builder().header("x-chaos", "1").body(()).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```
//!
//! # Metrics
//!
//! Through the `metrics` facade, registered when the layer is built (install the recorder
//! first), so they show at zero before the first fault; nothing is recorded for a call left
//! alone:
//!
//! | metric | kind | when |
//! |---|---|---|
//! | `tower_patterns_chaos_injected_total{name,kind}` | counter | each fault injected; `kind` is `latency`, `status`, `error`, `hang` or `abort` |
//! | `tower_patterns_chaos_active{name}` | gauge | 1 while the layer is switched on and has a fault, else 0 |
//!
//! Each injected fault is also a `debug` event on the `tower_patterns::chaos` target.
//!
//! # Where to put it
//!
//! Where the fault would really happen: right around the client of the dependency you want to
//! fail (inside the breaker, the timeout and the bulkhead that protect it), or inside the
//! tenant layer when it selects by tenant. See the guide, `docs/patterns/chaos.md`, for when
//! not to use it.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod fault;
pub mod future;
mod handle;
mod layer;
mod policy;
mod respond;
mod select;
mod service;

pub use error::ChaosError;
pub use fault::{Answer, Fault, FaultKind};
pub use future::ResponseFuture;
pub use handle::ChaosHandle;
pub use layer::{ChaosBuilder, ChaosLayer};
pub use respond::{AnswerAsError, HttpAnswer, Respond};
pub use select::{Always, Header, Select, Tenants};
pub use service::Chaos;
