//! Middleware that stops calling a failing dependency and fails fast until it recovers: the
//! circuit breaker, with the fallback layer of the payment client with fallback.
//!
//! ```text
//!            failure rate, failure count, run of failures or slow-call rate reached
//!   Closed ─────────────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                            │
//!     │ probes pass (every ramp stage)                         open duration over  │
//!     │                                                                            ▼
//!     └──────────────────────────────── HalfOpen ◀─────────────────────────────────┘
//!                                          │  probes fail, or no verdict in time: Open
//!   forced: ForcedOpen (rejects all), Disabled (passes all); metrics-only: never rejects
//! ```
//!
//! What sets it apart:
//! - **Windows that really slide**: a count window of the last N calls (a window of 10 at
//!   50% opens after at most 5 failures, however many successes came before) or a time
//!   window in buckets, both lock-free and O(1) per call.
//! - **Slow calls in flight count**: a call past the slow-call duration counts as slow at
//!   that moment, not only when (if ever) it finishes.
//! - **Half-open that cannot get stuck**: N probes judged as a window, dropped probes give
//!   their permit back, no verdict within the maximum wait reopens; optionally a ramp of
//!   growing traffic shares.
//! - **Shared by the layer**: every service the layer makes, and every clone, share one
//!   breaker; per-key breakers live in a bounded map.
//! - **Fast**: the closed path is one atomic load to admit and, to record, one `fetch_add`
//!   and one read (writes only when the window's content changes); no lock, no allocation,
//!   no clock read unless a time window or slow-call detection needs one.
//!
//! # Example
//!
//! The defaults, then a customised breaker for HTTP (5xx fail, 4xx count neither way):
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_breaker::{CircuitBreakerLayer, State};
//! use tower_patterns_core::{classify::TowerHttp, BoxError, Rejected, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Defaults: last 100 calls, trips at 50% once 20 are in, open 30 s, 5 probes.
//! let layer = CircuitBreakerLayer::builder("inventory").build().unwrap();
//!
//! // Customised.
//! let layer = CircuitBreakerLayer::builder("payments")
//!     .count_window(10)
//!     .minimum_calls(5)
//!     .failure_rate(0.5)
//!     .open_duration(Duration::from_secs(10))
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//!
//! let payments = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_: ()| async { Err::<(), BoxError>("gateway timeout".into()) }));
//!
//! for _ in 0..5 {
//!     let _ = payments.clone().oneshot(()).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! let err = payments.clone().oneshot(()).await.unwrap_err();
//! let rejected = Rejected::find(&*err).unwrap();
//! assert_eq!(rejected.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(10)));
//!
//! // For HTTP services, classify responses: 5xx fail, 4xx are ignored.
//! let http_layer = CircuitBreakerLayer::builder("catalog")
//!     .classifier(TowerHttp::server_errors().ignore_status(|s: StatusCode| s.is_client_error()))
//!     .build()
//!     .unwrap();
//! # let _ = http_layer;
//! # }
//! ```
//!
//! Place retries **outside** the breaker (so each retry is one more call it judges, and an
//! open circuit is not retried), and a timeout **inside** it (so a hung call becomes a
//! failure it counts). See `docs/patterns/circuit-breaker.md` in the repository.
//!
//! # One breaker per key
//!
//! [`KeyedCircuitBreakerLayer::builder(name)`](KeyedCircuitBreakerLayer)`.key(extractor)` takes
//! the same settings and gives every key (host, route, tenant) its own breaker, in a map
//! bounded by one [`KeyBounds`](tower_patterns_core::keyed::KeyBounds); its handle looks a
//! key's breaker up with a `&str` and reports on all of them.
//!
//! # Metrics
//!
//! Through the `metrics` facade, registered when the layer is built (install the recorder
//! first), labelled with the layer's `name` (keyed breakers count under it: keys are not
//! labels, so the number of series stays bounded):
//!
//! | metric | kind | when |
//! |---|---|---|
//! | `tower_patterns_breaker_state{name, state}` | gauge | 1 for the state now, 0 for the others (not for keyed breakers) |
//! | `tower_patterns_breaker_transitions_total{name, from, to}` | counter | each transition |
//! | `tower_patterns_breaker_rejected_total{name}` | counter | each call rejected |
//! | `tower_patterns_breaker_calls_total{name, outcome}` | counter | each call's outcome, with [`call_metrics(true)`](CircuitBreakerBuilder::call_metrics) only |
//! | `tower_patterns_breaker_keys_total{name}` | counter | keyed: each breaker made (a new key, or one back after it was dropped) |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod circuit;
pub mod fallback;
mod keyed;
mod rng;
mod sync;

pub use circuit::{
    BreakerRef, ByKey, CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerHandle,
    CircuitBreakerLayer, Config, Guard, KeyedCircuitBreakerBuilder, MAX_PROBES, NoKey,
    OpenDuration, Reason, ResponseFuture, SlidingWindow, Snapshot, State, Transition, Unkeyed,
    future,
};
pub use fallback::{Fallback, FallbackLayer};
pub use keyed::{
    Breakers, KeyedCircuitBreaker, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer,
};

#[doc(hidden)]
pub mod __private {
    //! The state machine with injected time, for this crate's loom model and model tests.
    //! Not part of the public API.
    pub use crate::circuit::{
        machine::Machine,
        state::{Admission, Permit, PermitKind},
    };
}
