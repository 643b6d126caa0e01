//! The strangler fig's errors.

use std::{error::Error, fmt};

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse, register_error_response};

/// What went wrong: a route the handle does not know, or a write refused because the legacy
/// side is read-only (the migration's last phase).
///
/// A refused write is answered 503 with the fixed phrase `legacy service is read-only`.
#[derive(Debug)]
pub struct StranglerError {
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    UnknownRoute(String),
    ReadOnly,
}

impl StranglerError {
    pub(crate) fn unknown_route(name: &str) -> Self {
        Self {
            kind: Kind::UnknownRoute(name.chars().take(200).collect()),
        }
    }

    pub(crate) const fn read_only() -> Self {
        Self {
            kind: Kind::ReadOnly,
        }
    }

    /// Whether the error is a write refused by a read-only legacy side.
    pub fn is_read_only(&self) -> bool {
        self.kind == Kind::ReadOnly
    }

    pub(crate) fn register() {
        register_error_response::<Self>();
    }
}

impl fmt::Display for StranglerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::UnknownRoute(name) => write!(f, "no migration route named {name:?}"),
            Kind::ReadOnly => f.write_str("the legacy side is read-only: write refused"),
        }
    }
}

impl Error for StranglerError {}

impl IntoErrorResponse for StranglerError {
    fn error_mapping(&self) -> ErrorMapping {
        match self.kind {
            Kind::ReadOnly => ErrorMapping::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "legacy service is read-only",
            ),
            Kind::UnknownRoute(_) => ErrorMapping::new(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
