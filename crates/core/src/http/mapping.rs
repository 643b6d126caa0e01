//! Which response an error maps to: core's own kinds, then the types crates register.

use std::{
    any::TypeId,
    error::Error,
    sync::{PoisonError, RwLock},
    time::Duration,
};

use http::StatusCode;

use crate::{
    KeyError, Rejected,
    error::{RateLimitInfo, find_in_chain},
    tenant::TenantError,
};

/// What an error maps to: the status, the `Retry-After` hint and a short public message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorMapping {
    /// The response status.
    pub status: StatusCode,
    /// How long the client should wait, when known.
    pub retry_after: Option<Duration>,
    /// A short phrase that is safe to show to clients.
    pub message: &'static str,
    /// The state of the limit that refused, for the `RateLimit-*` headers.
    pub limit: Option<RateLimitInfo>,
}

impl ErrorMapping {
    /// A mapping to `status` with the public `message`, no `Retry-After` and no limit.
    pub const fn new(status: StatusCode, message: &'static str) -> Self {
        Self {
            status,
            retry_after: None,
            message,
            limit: None,
        }
    }

    /// The same mapping with a `Retry-After` hint.
    #[must_use]
    pub const fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// An error that knows the HTTP response it stands for.
///
/// Each crate implements it for its own error types and registers them with
/// [`register_error_response`] when its layer is built; [`classify_error`] (and so
/// [`error_response`](super::error_response), [`handle_error`](super::handle_error) and
/// [`ErrorResponseLayer`](super::ErrorResponseLayer)) then finds such an error anywhere in a
/// source chain. The message must be a fixed public phrase: never the error's `Display`, which
/// may carry internals.
///
/// ```
/// use std::{error::Error, fmt};
/// use http::StatusCode;
/// use tower_patterns_core::{
///     http::{classify_error, register_error_response, ErrorMapping, IntoErrorResponse},
///     BoxError,
/// };
///
/// #[derive(Debug)]
/// struct OutOfStock;
/// impl fmt::Display for OutOfStock {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str("sku 42 is out of stock") }
/// }
/// impl Error for OutOfStock {}
/// impl IntoErrorResponse for OutOfStock {
///     fn error_mapping(&self) -> ErrorMapping {
///         ErrorMapping::new(StatusCode::CONFLICT, "out of stock")
///     }
/// }
///
/// let err: BoxError = OutOfStock.into();
/// assert_eq!(classify_error(&*err).status, StatusCode::INTERNAL_SERVER_ERROR);
/// register_error_response::<OutOfStock>();
/// assert_eq!(classify_error(&*err).message, "out of stock");
/// ```
pub trait IntoErrorResponse: Error + Send + Sync + 'static {
    /// The response this error stands for.
    fn error_mapping(&self) -> ErrorMapping;
}

type Mapper = fn(&(dyn Error + 'static)) -> Option<ErrorMapping>;

/// The registered types, in registration order. Read only when an error is mapped (never on a
/// success path); written once per type.
static REGISTERED: RwLock<Vec<(TypeId, Mapper)>> = RwLock::new(Vec::new());

fn mapper<E: IntoErrorResponse>(err: &(dyn Error + 'static)) -> Option<ErrorMapping> {
    err.downcast_ref::<E>()
        .map(IntoErrorResponse::error_mapping)
}

/// Lets [`classify_error`] find errors of type `E` in a source chain. Registering a type again
/// does nothing; pattern crates register theirs when a layer is built.
pub fn register_error_response<E: IntoErrorResponse>() {
    let id = TypeId::of::<E>();
    let known = |types: &[(TypeId, Mapper)]| types.iter().any(|(t, _)| *t == id);
    if known(&REGISTERED.read().unwrap_or_else(PoisonError::into_inner)) {
        return;
    }
    let mut types = REGISTERED.write().unwrap_or_else(PoisonError::into_inner);
    if !known(&types) {
        types.push((id, mapper::<E>));
    }
}

fn registered(err: &(dyn Error + 'static)) -> Option<ErrorMapping> {
    let types = REGISTERED.read().unwrap_or_else(PoisonError::into_inner);
    let mut link = Some(err);
    while let Some(e) = link {
        if let Some(mapping) = types.iter().find_map(|(_, map)| map(e)) {
            return Some(mapping);
        }
        link = e.source();
    }
    None
}

impl IntoErrorResponse for KeyError {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(StatusCode::BAD_REQUEST, self.kind().public_message())
    }
}

impl IntoErrorResponse for TenantError {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(self.kind().status(), self.kind().public_message())
    }
}

/// Decides how an error maps to HTTP (see the table in the [module docs](super)): core's own
/// kinds first (a [`Rejected`] anywhere in the chain wins, then a timeout, load shedding, a key
/// error, a tenant error), then the registered types from the outermost error inwards, else
/// 500.
pub fn classify_error(err: &(dyn Error + 'static)) -> ErrorMapping {
    if let Some(rejected) = Rejected::find(err) {
        let kind = rejected.kind();
        let status = if kind.is_throttle() {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return ErrorMapping {
            status,
            retry_after: rejected.retry_after(),
            message: kind.as_str(),
            limit: rejected.limit(),
        };
    }
    if find_in_chain::<tower::timeout::error::Elapsed>(err).is_some() {
        ErrorMapping::new(StatusCode::GATEWAY_TIMEOUT, "request timed out")
    } else if find_in_chain::<tower::load_shed::error::Overloaded>(err).is_some() {
        ErrorMapping::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    } else if let Some(key) = find_in_chain::<KeyError>(err) {
        key.error_mapping()
    } else if let Some(tenant) = find_in_chain::<TenantError>(err) {
        tenant.error_mapping()
    } else {
        registered(err).unwrap_or(ErrorMapping::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Teapot(Option<Box<dyn Error + Send + Sync>>);
    impl fmt::Display for Teapot {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("teapot internals")
        }
    }
    impl Error for Teapot {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.0.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }
    impl IntoErrorResponse for Teapot {
        fn error_mapping(&self) -> ErrorMapping {
            ErrorMapping::new(StatusCode::IM_A_TEAPOT, "teapot")
                .with_retry_after(Duration::from_secs(2))
        }
    }

    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn registered_types_are_found_anywhere_in_the_chain_and_core_kinds_come_first() {
        register_error_response::<Teapot>();
        register_error_response::<Teapot>();
        let count = REGISTERED
            .read()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == TypeId::of::<Teapot>())
            .count();
        assert_eq!(count, 1, "registering twice keeps one entry");

        let deep = Wrapper(Box::new(Wrapper(Box::new(Teapot(None)))));
        let mapping = classify_error(&deep);
        assert_eq!(mapping.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(mapping.message, "teapot");
        assert_eq!(mapping.retry_after, Some(Duration::from_secs(2)));

        // A core kind anywhere in the chain outranks a registered type outside it.
        let over_rejected = Teapot(Some(Box::new(Rejected::new(
            crate::RejectionKind::CircuitOpen,
        ))));
        assert_eq!(
            classify_error(&over_rejected).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let over_key = Teapot(Some(Box::new(KeyError::missing("x-key"))));
        assert_eq!(classify_error(&over_key).status, StatusCode::BAD_REQUEST);

        // An unregistered type is a 500 with the generic phrase.
        let plain = Wrapper("boom".into());
        let mapping = classify_error(&plain);
        assert_eq!(mapping.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(mapping.message, "internal server error");
    }
}
