//! The layer and its builder.

use std::{fmt, sync::Arc};

use tower_layer::Layer;
use tower_patterns_core::classify::ErrorsAsFailures;

use crate::{CircuitBreaker, CircuitBreakerHandle, circuit::machine::Machine};

/// Layer that wraps services in a [`CircuitBreaker`].
///
/// Every service this layer makes, and every clone of them, shares one breaker: applying the
/// layer per request (as some frameworks do) never resets its state.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    machine: Arc<Machine>,
    classifier: C,
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.machine.config.name)
            .field("state", &self.machine.word().state())
            .finish()
    }
}

impl<C> CircuitBreakerLayer<C> {
    pub(crate) fn from_parts(machine: Arc<Machine>, classifier: C) -> Self {
        Self {
            machine,
            classifier,
        }
    }

    /// The breaker's state machine, for this crate's model tests (time injected, no
    /// service around it). Not part of the public API.
    #[doc(hidden)]
    pub fn machine(&self) -> Arc<Machine> {
        self.machine.clone()
    }

    /// A handle on the shared breaker: state, metrics, forcing, subscriptions.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.machine.clone())
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.machine.clone(), self.classifier.clone())
    }
}
