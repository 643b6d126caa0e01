//! The error a chaos layer fails a call with.

use std::{error::Error, fmt};

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse};

use crate::fault::Answer;

/// A call failed by a fault: its answer was thrown away ([`Fault::abort`]), or a status fault
/// answered with an error ([`AnswerAsError`]).
///
/// Over HTTP (core's error mapping, registered when the layer is built) an aborted call is a
/// 502 and an answer is its own status (a gRPC code is a 503), each with the phrase
/// "fault injected".
///
/// [`Fault::abort`]: crate::Fault::abort
/// [`AnswerAsError`]: crate::AnswerAsError
#[derive(Debug)]
pub struct ChaosError {
    answer: Option<Answer>,
}

impl ChaosError {
    pub(crate) const fn aborted() -> Self {
        Self { answer: None }
    }

    pub(crate) const fn answered(answer: Answer) -> Self {
        Self {
            answer: Some(answer),
        }
    }

    /// Whether the inner service was called and its answer thrown away.
    pub const fn is_aborted(&self) -> bool {
        self.answer.is_none()
    }

    /// The answer a status fault stood for, where the response type could not carry it.
    pub const fn answer(&self) -> Option<Answer> {
        self.answer
    }
}

impl fmt::Display for ChaosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.answer {
            None => f.write_str("fault injected: the call's answer was thrown away"),
            Some(Answer::Http(status)) => write!(f, "fault injected: status {}", status.as_u16()),
            Some(Answer::Grpc(code)) => write!(f, "fault injected: gRPC status {code}"),
        }
    }
}

impl Error for ChaosError {}

impl IntoErrorResponse for ChaosError {
    fn error_mapping(&self) -> ErrorMapping {
        let status = match self.answer {
            None => StatusCode::BAD_GATEWAY,
            Some(Answer::Http(status)) => status,
            Some(Answer::Grpc(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ErrorMapping::new(status, "fault injected")
    }
}
