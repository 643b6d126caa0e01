//! The layer's refusal when the read side has not caught up in time.

use std::{error::Error, fmt, time::Duration};

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse, register_error_response};

use crate::token::TokenError;

/// The read side had not reached the request's token when the wait ran out, and the layer is
/// set to refuse then ([`Behind::Unavailable`](super::Behind::Unavailable)). Answered with
/// `503 Service Unavailable`, a `Retry-After` and a fixed phrase by core's HTTP mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotCaughtUp {
    retry_after: Duration,
}

impl NotCaughtUp {
    pub(crate) const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// When the client should try again.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for NotCaughtUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the read side has not caught up with this session's writes")
    }
}

impl Error for NotCaughtUp {}

impl IntoErrorResponse for NotCaughtUp {
    fn error_mapping(&self) -> ErrorMapping {
        let mut mapping = ErrorMapping::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read side has not caught up",
        );
        mapping.retry_after = Some(self.retry_after);
        mapping
    }
}

/// Registers the layer's errors with core's HTTP mapping (idempotent).
pub(crate) fn register() {
    register_error_response::<TokenError>();
    register_error_response::<NotCaughtUp>();
}
