//! Why a command or a load failed, and the HTTP response each reason stands for.

use std::fmt;

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse};

use crate::Error;

/// Why a command or load failed.
///
/// Its HTTP mapping (core's `IntoErrorResponse`, registered by [`Repository::new`] for the
/// aggregate's error type): [`Conflict`](Self::Conflict) is `409 Conflict` "concurrent
/// update", a [`Store`](Self::Store) error maps as [`Error`] does (`409` for a version
/// conflict, `500` for a corrupt event), and [`Domain`](Self::Domain) is `422 Unprocessable
/// Entity` "command refused". core reads the outermost registered error first, so a domain
/// error's own mapping is not consulted: a handler that needs a status per domain error
/// matches `RepositoryError::Domain` before falling back to core's mapping.
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
            Self::Domain(_) => {
                ErrorMapping::new(StatusCode::UNPROCESSABLE_ENTITY, "command refused")
            }
            Self::Store(e) => e.error_mapping(),
            Self::Conflict { .. } => ErrorMapping::new(StatusCode::CONFLICT, "concurrent update"),
        }
    }
}
