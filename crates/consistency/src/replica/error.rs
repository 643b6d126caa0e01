//! The router's own error: no connection to the primary.

use std::{error::Error, fmt};

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse, register_error_response};

/// The router needed the primary (a write, a read no replica could serve, or a replica whose
/// pool failed) and the primary's pool gave no connection. The pool's error is the
/// [`source`](Error::source). Answered with `503 Service Unavailable` and a fixed phrase by
/// core's HTTP mapping.
#[derive(Debug)]
pub struct PrimaryUnavailable {
    source: deadpool_postgres::PoolError,
}

impl PrimaryUnavailable {
    pub(crate) const fn new(source: deadpool_postgres::PoolError) -> Self {
        Self { source }
    }
}

impl fmt::Display for PrimaryUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no connection to the primary database")
    }
}

impl Error for PrimaryUnavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

impl IntoErrorResponse for PrimaryUnavailable {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

/// Registers the router's error with core's HTTP mapping (idempotent).
pub(crate) fn register() {
    register_error_response::<PrimaryUnavailable>();
}
