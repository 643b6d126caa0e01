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
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn error_responses(self) -> ServiceBuilder<Stack<ErrorResponseLayer, L>> {
        self.layer(ErrorResponseLayer::new())
    }
}
