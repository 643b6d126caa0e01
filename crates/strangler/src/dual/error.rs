//! The dual-write error.

use std::{error::Error, fmt};

use http::StatusCode;
use tower_patterns_core::{
    BoxError,
    http::{ErrorMapping, IntoErrorResponse, register_error_response},
};

/// What went wrong in a dual write, a store or a reconciliation. A `match` needs a `_` arm:
/// new variants may come.
///
/// Through core's HTTP mapping: a bad key or value is `400`, an unavailable database `503`,
/// anything else `500`, each with a fixed phrase (never SQL or a table name).
#[derive(Debug)]
#[non_exhaustive]
pub enum DualError {
    /// A table name that is not a plain identifier (see
    /// [`TableName`](super::TableName)).
    InvalidTable {
        /// The refused name (its first 80 characters).
        name: String,
    },
    /// A key that is empty, longer than 512 bytes or holds a NUL.
    InvalidKey {
        /// The key's length in bytes.
        len: usize,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A stored row that cannot be read as a row: a key that is not text, a value that is
    /// neither bytes, text nor NULL, a negative or non-integer version.
    CorruptRow {
        /// The table.
        table: String,
        /// The row's key, when it could be read.
        key: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A value that is not JSON of the type asked for, or could not be written as JSON.
    Json {
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The database could not be reached, or was busy or locked: the same call may succeed
    /// later ([`is_transient`](Self::is_transient)).
    Unavailable {
        /// What was being done (`apply 12 rows to "users"`).
        context: String,
        /// The database's error.
        source: BoxError,
    },
    /// Any other database failure (a missing table, a refused statement).
    Store {
        /// What was being done.
        context: String,
        /// The database's error.
        source: BoxError,
    },
}

impl DualError {
    /// An [`Unavailable`](Self::Unavailable) error, for stores: the call may succeed later.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A [`Store`](Self::Store) error, for stores: a failure that retrying is not expected
    /// to cure.
    pub fn store(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Store {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether the same call may succeed later without anyone changing anything (the
    /// database was down, busy or locked). A dual write's worker retries every failure, but
    /// records a write as missed at once when its failure is not transient.
    pub const fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl fmt::Display for DualError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTable { name } => write!(
                f,
                "table name {name:?} is not a plain identifier (a letter or '_', then letters, digits or '_', at most 40)"
            ),
            Self::InvalidKey { len, reason } => write!(f, "the key ({len} bytes) {reason}"),
            Self::CorruptRow { table, key, reason } => match key {
                Some(key) => write!(f, "corrupt row {key:?} in table {table}: {reason}"),
                None => write!(f, "corrupt row in table {table}: {reason}"),
            },
            Self::Json { source } => write!(f, "value is not the JSON expected: {source}"),
            Self::Unavailable { context, source } => {
                write!(f, "database unavailable: {context}: {source}")
            }
            Self::Store { context, source } => write!(f, "database error: {context}: {source}"),
        }
    }
}

impl Error for DualError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Json { source } => Some(source),
            Self::Unavailable { source, .. } | Self::Store { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl IntoErrorResponse for DualError {
    fn error_mapping(&self) -> ErrorMapping {
        match self {
            Self::InvalidKey { .. } | Self::Json { .. } => {
                ErrorMapping::new(StatusCode::BAD_REQUEST, "invalid write")
            }
            Self::Unavailable { .. } => {
                ErrorMapping::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            }
            _ => ErrorMapping::new(StatusCode::INTERNAL_SERVER_ERROR, "database error"),
        }
    }
}

/// Registers [`DualError`] with core's HTTP mapping (idempotent).
pub(crate) fn register() {
    register_error_response::<DualError>();
}

#[cfg(test)]
mod tests {
    use tower_patterns_core::http::classify_error;

    use super::*;

    #[test]
    fn maps_to_http_without_internals() {
        register();
        let err: BoxError =
            DualError::unavailable("apply 3 rows to \"users\"", std::io::Error::other("busy"))
                .into();
        let m = classify_error(&*err);
        assert_eq!(m.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(m.message, "database unavailable");
        let err: BoxError = DualError::InvalidKey {
            len: 0,
            reason: "is empty",
        }
        .into();
        assert_eq!(classify_error(&*err).status, StatusCode::BAD_REQUEST);
        let err: BoxError = DualError::store("x", "y").into();
        assert_eq!(
            classify_error(&*err).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(DualError::unavailable("x", "y").is_transient());
        assert!(!DualError::store("x", "y").is_transient());
    }
}
