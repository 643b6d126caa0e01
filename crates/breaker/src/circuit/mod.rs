//! The circuit breaker: a state machine in one atomic word, shared by every service its layer
//! makes; see the [crate docs](crate) for an example.
//!
//! - `builder.rs`: [`CircuitBreakerBuilder`] (one set of settings, two modes: one breaker, or a
//!   breaker per key); `layer.rs`: [`CircuitBreakerLayer`]; `service.rs`: [`CircuitBreaker`];
//!   `future.rs`: [`ResponseFuture`] and the [`Guard`] that records a call's outcome;
//!   `handle.rs`: [`CircuitBreakerHandle`].
//! - The decision, apart from the service: `state.rs` (the states and the word that packs them),
//!   `machine/` (the state machine, time injected), `window.rs` (the sliding windows),
//!   `config.rs` (the settings and the trip conditions), `observer.rs` (events and metrics).

pub(crate) mod builder;
pub(crate) mod config;
pub mod future;
pub(crate) mod handle;
pub(crate) mod layer;
pub(crate) mod machine;
pub(crate) mod observer;
pub(crate) mod service;
pub(crate) mod state;
pub(crate) mod window;

pub use builder::{ByKey, CircuitBreakerBuilder, KeyedCircuitBreakerBuilder, NoKey, Unkeyed};
pub use config::{Config, MAX_PROBES, OpenDuration, Reason, SlidingWindow};
pub use future::{BreakerRef, Guard, ResponseFuture};
pub use handle::{CircuitBreakerHandle, Snapshot};
pub use layer::CircuitBreakerLayer;
pub use observer::Transition;
pub use service::CircuitBreaker;
pub use state::State;
