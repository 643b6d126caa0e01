//! The CQRS layer's errors and the HTTP responses they stand for.

use std::fmt;

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse};

/// A request the command adapter could not turn into a command (a body that does not parse, a
/// missing field): `400 Bad Request` (or the 4xx it names) with its fixed public phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadCommand {
    status: StatusCode,
    phrase: &'static str,
}

impl BadCommand {
    /// `400 Bad Request` with `phrase`, a fixed string safe to show to clients.
    pub const fn new(phrase: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            phrase,
        }
    }

    /// Another client error (`404`, `413`, `415`, `422`, ...); a status outside 4xx is taken
    /// as `400`.
    pub fn with_status(status: StatusCode, phrase: &'static str) -> Self {
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        Self { status, phrase }
    }

    /// The response status.
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The public phrase.
    pub const fn phrase(&self) -> &'static str {
        self.phrase
    }
}

impl fmt::Display for BadCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad command: {}", self.phrase)
    }
}

impl std::error::Error for BadCommand {}

impl IntoErrorResponse for BadCommand {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(self.status, self.phrase)
    }
}

/// A position token that is not one this version writes: `400 Bad Request` "malformed
/// position".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionError {
    reason: &'static str,
}

impl PositionError {
    pub(crate) const fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

impl fmt::Display for PositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed position token: {}", self.reason)
    }
}

impl std::error::Error for PositionError {}

impl IntoErrorResponse for PositionError {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(StatusCode::BAD_REQUEST, "malformed position")
    }
}

/// Registers the layer's errors with core's HTTP mapping (idempotent).
pub(crate) fn register() {
    tower_patterns_core::http::register_error_response::<BadCommand>();
    tower_patterns_core::http::register_error_response::<PositionError>();
}
