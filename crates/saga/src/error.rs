//! The orchestrator's errors, and their HTTP answers.

use std::{error::Error as StdError, fmt};

use http::StatusCode;
use tower_patterns_core::{
    BoxError,
    http::{ErrorMapping, IntoErrorResponse, register_error_response},
};
use tower_patterns_eventstore::Error as StoreError;

use crate::{SagaId, SagaStatus};

/// What went wrong starting, driving or operating a saga. A step's failure is not an error:
/// it is the saga's outcome (`Compensated`, `Failed`, `Stuck`).
#[derive(Debug)]
#[non_exhaustive]
pub enum SagaError {
    /// The saga log (the event store) failed or holds an event that is not a saga event.
    Log(StoreError),
    /// The saga index failed.
    Index(BoxError),
    /// No definition of this saga type was given to the orchestrator.
    UnknownType(String),
    /// The id, input or deadline given is not acceptable.
    Invalid(&'static str),
    /// No saga with this id.
    NotFound(SagaId),
    /// An operator's retry or resolution of a saga that is not stuck.
    NotStuck {
        /// The saga.
        id: SagaId,
        /// Where it stands.
        status: SagaStatus,
    },
    /// Another orchestrator holds the saga's lease (it drives the saga now).
    Leased(SagaId),
    /// This orchestrator lost the saga's lease while driving it (another took it over after
    /// the lease expired); the other carries on.
    LeaseLost(SagaId),
}

impl fmt::Display for SagaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Log(e) => write!(f, "saga log: {e}"),
            Self::Index(e) => write!(f, "saga index: {e}"),
            Self::UnknownType(t) => write!(f, "no saga definition named {t:?}"),
            Self::Invalid(what) => write!(f, "invalid saga: {what}"),
            Self::NotFound(id) => write!(f, "no saga {id}"),
            Self::NotStuck { id, status } => write!(f, "saga {id} is {status}, not stuck"),
            Self::Leased(id) => write!(f, "saga {id} is driven by another orchestrator"),
            Self::LeaseLost(id) => write!(f, "lost the lease of saga {id}"),
        }
    }
}

impl StdError for SagaError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Log(e) => Some(e),
            Self::Index(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<StoreError> for SagaError {
    fn from(e: StoreError) -> Self {
        Self::Log(e)
    }
}

/// `404` "saga not found", `409` "saga not stuck" or "saga busy", `400` "invalid saga", and
/// `503` "saga log unavailable" for the log and the index.
impl IntoErrorResponse for SagaError {
    fn error_mapping(&self) -> ErrorMapping {
        let (status, message) = match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "saga not found"),
            Self::NotStuck { .. } => (StatusCode::CONFLICT, "saga not stuck"),
            Self::Leased(_) | Self::LeaseLost(_) => (StatusCode::CONFLICT, "saga busy"),
            Self::UnknownType(_) | Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid saga"),
            Self::Log(_) | Self::Index(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "saga log unavailable")
            }
        };
        ErrorMapping::new(status, message)
    }
}

pub(crate) fn register() {
    register_error_response::<SagaError>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_fixed_phrases() {
        register();
        let id = SagaId::new("o-1").unwrap();
        let cases: Vec<(SagaError, u16, &str)> = vec![
            (SagaError::NotFound(id.clone()), 404, "saga not found"),
            (
                SagaError::NotStuck {
                    id: id.clone(),
                    status: SagaStatus::Completed,
                },
                409,
                "saga not stuck",
            ),
            (SagaError::Leased(id.clone()), 409, "saga busy"),
            (SagaError::LeaseLost(id.clone()), 409, "saga busy"),
            (SagaError::UnknownType("x".into()), 400, "invalid saga"),
            (SagaError::Invalid("id"), 400, "invalid saga"),
            (
                SagaError::Index("SELECT secret".into()),
                503,
                "saga log unavailable",
            ),
            (
                SagaError::Log(StoreError::Invalid("x".into())),
                503,
                "saga log unavailable",
            ),
        ];
        for (e, status, phrase) in cases {
            assert!(!e.to_string().is_empty());
            let boxed: BoxError = e.into();
            let res: http::Response<String> = tower_patterns_core::http::error_response(&*boxed);
            assert_eq!(res.status().as_u16(), status);
            assert!(res.body().contains(phrase), "{}", res.body());
            assert!(!res.body().contains("SELECT"));
        }
        assert!(SagaError::Index("x".into()).source().is_some());
        assert!(SagaError::Invalid("x").source().is_none());
    }
}
