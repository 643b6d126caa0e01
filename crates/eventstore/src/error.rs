//! The event store's errors: typed, naming the stream and position they concern.

use std::fmt;

use http::StatusCode;
use tower_patterns_core::{
    BoxError,
    http::{ErrorMapping, IntoErrorResponse, register_error_response},
};

use crate::{ExpectedVersion, GlobalPosition};

/// What went wrong in the event store or a repository.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the version the append expected (optimistic concurrency).
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version (0: no stream).
        actual: u64,
    },
    /// Some of the appended event ids were stored already and some were not: a retry that is
    /// not the same append.
    PartialDuplicate {
        /// The stream.
        stream: String,
    },
    /// An event id given for this stream is stored in another stream.
    DuplicateElsewhere {
        /// The event id.
        id: uuid::Uuid,
        /// The stream it is stored in.
        stream: String,
    },
    /// A stored event could not be read back: its payload, metadata or type.
    Corrupt {
        /// Its stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Its global position.
        position: GlobalPosition,
        /// What is wrong.
        reason: String,
    },
    /// An event's stored type is not one the reader knows.
    UnknownEventType {
        /// Its stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Its global position.
        position: GlobalPosition,
        /// The type.
        event_type: String,
    },
    /// An event's payload is not of the type, or not at the schema version, stored with it
    /// (an event stored as `Frozen` whose payload is a withdrawal). It is not applied.
    Mismatch {
        /// Its stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Its global position.
        position: GlobalPosition,
        /// The type stored with it.
        event_type: String,
        /// The schema version stored with it (after upcasting).
        schema_version: u32,
        /// What the reader found instead (`a payload tagged "Withdrew"`, `the reader's
        /// schema version 2`).
        found: String,
    },
    /// An argument was refused (an empty stream id, an empty batch, ...).
    Invalid(String),
    /// A value could not be serialised.
    Encode(String),
    /// The database failed.
    Backend(BoxError),
}

impl Error {
    /// Whether this is an optimistic-concurrency conflict (a repository reloads and retries).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::WrongExpectedVersion { .. })
    }

    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(dead_code, reason = "used by the SQL backends only")
    )]
    pub(crate) fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend(e.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => write!(
                f,
                "stream {stream:?}: expected {expected}, found version {actual}"
            ),
            Self::PartialDuplicate { stream } => write!(
                f,
                "stream {stream:?}: some of the appended event ids are stored already, some are not"
            ),
            Self::DuplicateElsewhere { id, stream } => {
                write!(f, "event {id} is already stored in stream {stream:?}")
            }
            Self::Corrupt {
                stream,
                version,
                position,
                reason,
            } => write!(
                f,
                "corrupt event in stream {stream:?} at version {version} (position {position}): {reason}"
            ),
            Self::UnknownEventType {
                stream,
                version,
                position,
                event_type,
            } => write!(
                f,
                "unknown event type {event_type:?} in stream {stream:?} at version {version} (position {position})"
            ),
            Self::Mismatch {
                stream,
                version,
                position,
                event_type,
                schema_version,
                found,
            } => write!(
                f,
                "event in stream {stream:?} at version {version} (position {position}) is stored as {event_type:?} schema version {schema_version}, but is {found}"
            ),
            Self::Invalid(why) => write!(f, "invalid argument: {why}"),
            Self::Encode(why) => write!(f, "could not encode: {why}"),
            Self::Backend(e) => write!(f, "event store backend failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

/// The response an event-store error stands for, in core's error mapping (registered when a
/// store or a repository is built): an append that lost the optimistic-concurrency race
/// (`WrongExpectedVersion`) is `409 Conflict` "concurrent update", event ids that clash with
/// stored ones (`PartialDuplicate`, `DuplicateElsewhere`) are `409` "conflicting event ids";
/// everything else (a corrupt, unknown or mismatched event, an invalid argument, an encoding
/// or backend failure) stays `500` "internal server error". The phrases are fixed: the
/// stream, the SQL and the payload never reach a response body.
impl IntoErrorResponse for Error {
    fn error_mapping(&self) -> ErrorMapping {
        match self {
            Self::WrongExpectedVersion { .. } => {
                ErrorMapping::new(StatusCode::CONFLICT, "concurrent update")
            }
            Self::PartialDuplicate { .. } | Self::DuplicateElsewhere { .. } => {
                ErrorMapping::new(StatusCode::CONFLICT, "conflicting event ids")
            }
            _ => ErrorMapping::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
        }
    }
}

/// Lets core's error mapping find the store's errors; called when a store or a repository is
/// built (idempotent and cheap).
pub(crate) fn register_error_responses() {
    register_error_response::<Error>();
}
