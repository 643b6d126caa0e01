//! `ServiceBuilder` methods for the layers of tower-patterns.

use tower::{ServiceBuilder, layer::util::Stack};

use crate::http::ErrorResponseLayer;

mod sealed {
    pub trait Sealed<L> {}

    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Extension methods on [`ServiceBuilder`] for the layers of tower-patterns, one per pattern,
/// as tower-http's `ServiceBuilderExt` does for its own.
///
/// The trait is sealed: it is implemented for `ServiceBuilder` only, so methods can be added
/// without breaking anyone.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_patterns::ServiceBuilderExt;
///
/// let layers = ServiceBuilder::new().error_responses();
/// # let _ = layers;
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Answers every error of the services below with an HTTP response; see
    /// [`ErrorResponse`](crate::http::ErrorResponse).
    fn error_responses(self) -> ServiceBuilder<Stack<ErrorResponseLayer, L>>;

    /// Adds a circuit breaker; see [`breaker`](crate::breaker). Keep `layer.handle()` to
    /// read or steer it.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_patterns::{breaker::CircuitBreakerLayer, ServiceBuilderExt};
    ///
    /// let breaker = CircuitBreakerLayer::builder("payments").build().unwrap();
    /// let handle = breaker.handle();
    /// let layers = ServiceBuilder::new().circuit_breaker(breaker);
    /// # let _ = (layers, handle);
    /// ```
    #[cfg(feature = "breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
    fn circuit_breaker<C>(
        self,
        layer: crate::breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<crate::breaker::CircuitBreakerLayer<C>, L>>;

    /// Adds a bulkhead; see [`bulkhead`](crate::bulkhead). Keep `layer.handle()` to read it.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_patterns::{bulkhead::BulkheadLayer, ServiceBuilderExt};
    ///
    /// let pool = BulkheadLayer::builder("payments").max_concurrent(40).build().unwrap();
    /// let layers = ServiceBuilder::new().bulkhead(pool);
    /// # let _ = layers;
    /// ```
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    fn bulkhead<H>(
        self,
        layer: crate::bulkhead::BulkheadLayer<H>,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer<H>, L>>;

    /// Adds tower's retry layer running `policy`; see [`retry`](crate::retry).
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_patterns::{retry::RetryPolicy, ServiceBuilderExt};
    ///
    /// let policy = RetryPolicy::http("catalog").build().unwrap();
    /// let layers = ServiceBuilder::new().retry_with(policy);
    /// # let _ = layers;
    /// ```
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    fn retry_with<K, P>(
        self,
        policy: crate::retry::RetryPolicy<K, P>,
    ) -> ServiceBuilder<Stack<tower::retry::RetryLayer<crate::retry::RetryPolicy<K, P>>, L>>
    where
        P: std::ops::Deref<Target = crate::retry::RetryShared<K>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn error_responses(self) -> ServiceBuilder<Stack<ErrorResponseLayer, L>> {
        self.layer(ErrorResponseLayer::new())
    }

    #[cfg(feature = "breaker")]
    fn circuit_breaker<C>(
        self,
        layer: crate::breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<crate::breaker::CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead<H>(
        self,
        layer: crate::bulkhead::BulkheadLayer<H>,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer<H>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry_with<K, P>(
        self,
        policy: crate::retry::RetryPolicy<K, P>,
    ) -> ServiceBuilder<Stack<tower::retry::RetryLayer<crate::retry::RetryPolicy<K, P>>, L>>
    where
        P: std::ops::Deref<Target = crate::retry::RetryShared<K>>,
    {
        self.layer(policy.layer())
    }
}
