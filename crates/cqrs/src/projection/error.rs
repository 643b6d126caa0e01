//! What stops a projection.

use std::{error::Error as StdError, fmt};

use tower_patterns_core::BoxError;
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::ApplyError;

/// Why a projection stopped, or an operation on it failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProjectionError {
    /// An event could not be applied and the failure policy said stop (or a permanent error
    /// met a policy that stops). Names the event.
    Apply {
        /// The projection.
        projection: String,
        /// The event's stream.
        stream: String,
        /// The event's version in its stream.
        version: u64,
        /// The event's global position.
        position: GlobalPosition,
        /// The event's type.
        event_type: String,
        /// Attempts made.
        attempts: u32,
        /// Why.
        source: ApplyError,
    },
    /// The event store failed (a corrupt row is [`tower_patterns_eventstore::Error::Corrupt`],
    /// naming stream, version and position).
    Store(tower_patterns_eventstore::Error),
    /// The read model's or checkpoint's database failed.
    Database(BoxError),
    /// Another runner moved this projection's checkpoint: this one lost its lease and stops
    /// writing (it waits for the lease again).
    Fenced {
        /// The projection.
        projection: String,
    },
    /// The projection was shut down through its handle.
    Shutdown,
}

impl ProjectionError {
    /// The error about applying `event` in `projection`.
    pub(crate) fn apply(
        projection: &str,
        event: &RecordedEvent,
        attempts: u32,
        source: ApplyError,
    ) -> Self {
        Self::Apply {
            projection: projection.to_owned(),
            stream: event.stream_id.clone(),
            version: event.version,
            position: event.position,
            event_type: event.event_type.clone(),
            attempts,
            source,
        }
    }

    /// The database error `e`.
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(dead_code, reason = "the SQL targets' errors")
    )]
    pub(crate) fn database(e: impl Into<BoxError>) -> Self {
        Self::Database(e.into())
    }

    /// Whether trying the same work again cannot help: an event its failure policy gave up
    /// on, or a database error that is an [`ApplyError`] of kind permanent (what a failing
    /// `create` returns), a SQLite error other than busy or locked, or a PostgreSQL error
    /// the server gave outside SQLSTATE classes 08, 40, 53 and 57. Anything else (the event
    /// store, an unknown error of a checkpoint store, a lost connection) may pass.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            Self::Apply { .. } => true,
            Self::Database(e) => {
                if let Some(e) = e.downcast_ref::<ApplyError>() {
                    return !e.is_transient();
                }
                #[cfg(feature = "sqlite")]
                if let Some(e) = e.downcast_ref::<rusqlite::Error>() {
                    return !super::sqlite_transient(e);
                }
                #[cfg(feature = "postgres")]
                if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
                    return !super::postgres_transient(e);
                }
                false
            }
            Self::Store(_) | Self::Fenced { .. } | Self::Shutdown => false,
        }
    }
}

impl fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Apply {
                projection,
                stream,
                version,
                position,
                event_type,
                attempts,
                source,
            } => write!(
                f,
                "projection {projection} could not apply event {event_type} of stream \
                 {stream} at version {version}, position {position} (after {attempts} \
                 attempt(s)): {source}"
            ),
            Self::Store(e) => write!(f, "event store: {e}"),
            Self::Database(e) => write!(f, "read model database: {e}"),
            Self::Fenced { projection } => write!(
                f,
                "projection {projection}: another runner moved the checkpoint; this one stops writing"
            ),
            Self::Shutdown => f.write_str("projection shut down"),
        }
    }
}

impl StdError for ProjectionError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Apply { source, .. } => Some(source),
            Self::Store(e) => Some(e),
            Self::Database(e) => Some(&**e),
            Self::Fenced { .. } | Self::Shutdown => None,
        }
    }
}

impl From<tower_patterns_eventstore::Error> for ProjectionError {
    fn from(e: tower_patterns_eventstore::Error) -> Self {
        Self::Store(e)
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for ProjectionError {
    fn from(e: rusqlite::Error) -> Self {
        Self::database(e)
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for ProjectionError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::database(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_cannot_pass_are_permanent() {
        fn db(e: impl Into<BoxError>) -> ProjectionError {
            ProjectionError::database(e)
        }
        assert!(db(ApplyError::permanent("no room")).is_permanent());
        assert!(!db(ApplyError::transient("busy")).is_permanent());
        assert!(!db("a checkpoint service's own error").is_permanent());
        assert!(!ProjectionError::Shutdown.is_permanent());
        #[cfg(feature = "sqlite")]
        {
            let sqlite = |code| {
                db(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(code),
                    None,
                ))
            };
            assert!(!sqlite(rusqlite::ffi::SQLITE_BUSY).is_permanent());
            assert!(!sqlite(rusqlite::ffi::SQLITE_LOCKED).is_permanent());
            assert!(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_permanent());
        }
    }
}
