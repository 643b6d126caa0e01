//! The layer and its builder.

use std::{fmt, sync::Arc};

use tower_layer::Layer;
use tower_patterns_core::classify::ErrorsAsFailures;

use crate::{
    CircuitBreaker, CircuitBreakerHandle, circuit::future::BreakerRef, circuit::machine::Machine,
};

/// Layer that wraps services in a [`CircuitBreaker`].
///
/// Every service this layer makes, and every clone of them, shares one breaker: applying the
/// layer per request (as some frameworks do) never resets its state.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, M: BreakerRef = Arc<Machine>> {
    machine: M,
    classifier: C,
}

impl<C, M: BreakerRef> fmt::Debug for CircuitBreakerLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.machine.arc().config.name)
            .field("state", &self.machine.arc().word().state())
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

    /// The same breaker, held through a `&'static` reference leaked once: its services and
    /// their futures then admit and record a call without the `Arc` reference count (an
    /// atomic increment and decrement per call, about half of the closed path's cost on a
    /// small virtual machine). For breakers built once at startup and kept for the life of
    /// the process; each call of `leak` leaks one pointer-sized allocation and keeps the
    /// breaker alive forever. Handles, metrics and state are the same breaker's: a handle
    /// taken before or after sees the same circuit.
    ///
    /// ```
    /// use tower::{Layer, service_fn};
    /// use tower_patterns_breaker::CircuitBreakerLayer;
    ///
    /// # fn main() -> Result<(), tower_patterns_core::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("payments").build()?;
    /// let handle = layer.handle();
    /// let breaker = layer.leak();
    /// let _service = breaker.layer(service_fn(|n: u64| async move {
    ///     Ok::<_, std::convert::Infallible>(n)
    /// }));
    /// assert_eq!(breaker.handle().name(), handle.name());
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> CircuitBreakerLayer<C, &'static Arc<Machine>> {
        CircuitBreakerLayer {
            machine: Box::leak(Box::new(self.machine)),
            classifier: self.classifier,
        }
    }
}

impl<C, M: BreakerRef> CircuitBreakerLayer<C, M> {
    /// The breaker's state machine, for this crate's model tests (time injected, no
    /// service around it). Not part of the public API.
    #[doc(hidden)]
    pub fn machine(&self) -> Arc<Machine> {
        self.machine.arc().clone()
    }

    /// A handle on the shared breaker: state, metrics, forcing, subscriptions.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.machine.arc().clone())
    }
}

impl<S, C: Clone, M: BreakerRef> Layer<S> for CircuitBreakerLayer<C, M> {
    type Service = CircuitBreaker<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.machine.clone(), self.classifier.clone())
    }
}
