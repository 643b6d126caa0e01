//! Why a command or a load failed, and the HTTP response each reason stands for.

use std::fmt;

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse, classify_error};

use crate::Error;

/// Why a command or load failed.
///
/// Its HTTP mapping (core's `IntoErrorResponse`, registered by [`Repository::new`] for the
/// aggregate's error type): [`Conflict`](Self::Conflict) is `409 Conflict` "concurrent
/// update", a [`Store`](Self::Store) error maps as [`Error`] does (`409` for a version
/// conflict, `500` for a corrupt event), and [`Domain`](Self::Domain) maps as the domain error
/// does when its type has a mapping (registered with core's `register_error_response`, or
/// one of core's kinds), else `422 Unprocessable Entity` "command refused".
///
/// [`Repository::new`]: crate::Repository::new
#[derive(Debug)]
#[non_exhaustive]
pub enum RepositoryError<E> {
    /// The aggregate refused the command.
    Domain(E),
    /// The store failed or returned bad data (typed: [`Error`]).
    Store(Error),
    /// Other writers won every attempt.
    Conflict {
        /// The stream.
        stream: String,
        /// The attempts made.
        attempts: u32,
    },
}

impl<E: fmt::Display> fmt::Display for RepositoryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(e) => write!(f, "command refused: {e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Conflict { stream, attempts } => write!(
                f,
                "stream {stream:?}: concurrent writers won all {attempts} attempts"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RepositoryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Domain(e) => Some(e),
            Self::Store(e) => Some(e),
            Self::Conflict { .. } => None,
        }
    }
}

impl<E> From<Error> for RepositoryError<E> {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> IntoErrorResponse for RepositoryError<E> {
    fn error_mapping(&self) -> ErrorMapping {
        match self {
            Self::Domain(e) => {
                // The domain's own mapping when it has one; core answers 500 for an error it
                // cannot place, which here means a refusal without a status of its own.
                let own = classify_error(e);
                if own.status == StatusCode::INTERNAL_SERVER_ERROR {
                    ErrorMapping::new(StatusCode::UNPROCESSABLE_ENTITY, "command refused")
                } else {
                    own
                }
            }
            Self::Store(e) => e.error_mapping(),
            Self::Conflict { .. } => ErrorMapping::new(StatusCode::CONFLICT, "concurrent update"),
        }
    }
}
