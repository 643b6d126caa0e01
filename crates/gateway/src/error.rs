//! The gateway's own refusals and failures, each mapped to a status and a fixed phrase.

use std::{error::Error, fmt};

use http::StatusCode;
use tower_patterns_core::http::{ErrorMapping, IntoErrorResponse, register_error_response};

/// Why the gateway refused or failed a request itself (rather than the upstream answering).
///
/// Mapped by core's error responses: no route 404, a method the route does not take 405, a
/// body over the cap 413, a body not sent in time 408, a path with dot segments, empty segments
/// or encoded separators 400, an upstream that could not be reached
/// or answered with a broken response 502, every part of an aggregate failed 502.
#[derive(Debug)]
pub struct GatewayError {
    kind: Kind,
    detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    NoRoute,
    MethodNotAllowed,
    BodyTooLarge,
    BodyTimeout,
    BadBody,
    BadPath,
    Upstream,
    AllPartsFailed,
}

impl GatewayError {
    pub(crate) fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.error_mapping().status
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl Error for GatewayError {}

impl IntoErrorResponse for GatewayError {
    fn error_mapping(&self) -> ErrorMapping {
        match self.kind {
            Kind::NoRoute => ErrorMapping::new(StatusCode::NOT_FOUND, "no route"),
            Kind::MethodNotAllowed => {
                ErrorMapping::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            Kind::BodyTooLarge => {
                ErrorMapping::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            Kind::BodyTimeout => {
                ErrorMapping::new(StatusCode::REQUEST_TIMEOUT, "request body not sent in time")
            }
            Kind::BadBody => ErrorMapping::new(StatusCode::BAD_REQUEST, "request body unreadable"),
            Kind::BadPath => ErrorMapping::new(StatusCode::BAD_REQUEST, "bad path"),
            Kind::Upstream => ErrorMapping::new(StatusCode::BAD_GATEWAY, "bad gateway"),
            Kind::AllPartsFailed => ErrorMapping::new(StatusCode::BAD_GATEWAY, "bad gateway"),
        }
    }
}

/// Registers the gateway's errors with core's error responses (idempotent).
pub(crate) fn register() {
    register_error_response::<GatewayError>();
}
