//! The row model both stores share, the writes a [`DualWrite`](super::DualWrite) takes, and
//! the names of tables.

use std::{
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use super::DualError;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// The longest table name, in characters (the outbox's table and index names add a suffix,
/// and PostgreSQL cuts names at 63 bytes).
pub const MAX_TABLE_NAME: usize = 40;

/// One row of a dual-written table: `(key, value, version)`.
///
/// A delete leaves a **tombstone**, a row whose `value` is `None`, rather than removing the
/// row: the version it keeps is what stops an older write, retried or delayed, from bringing
/// the row back (a removed row has no version to compare with). Readers treat a tombstone as
/// no row ([`Row::is_tombstone`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    /// The key (1 to [`MAX_KEY_BYTES`] bytes of UTF-8, no NUL).
    pub key: String,
    /// The value (JSON text or any bytes), `None` for a tombstone.
    pub value: Option<Bytes>,
    /// The version; a store keeps the row with the highest (at a tie, a tombstone, else the
    /// greater value).
    pub version: u64,
}

impl Row {
    /// A row holding `value`.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>, version: u64) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
            version,
        }
    }

    /// The tombstone a delete leaves.
    pub fn tombstone(key: impl Into<String>, version: u64) -> Self {
        Self {
            key: key.into(),
            value: None,
            version,
        }
    }

    /// Whether the row records a delete.
    pub const fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value read as JSON; `None` for a tombstone.
    ///
    /// # Errors
    ///
    /// [`DualError::Json`] when the value is not JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, DualError> {
        self.value
            .as_deref()
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|source| DualError::Json { source })
    }
}

/// A write through a [`DualWrite`](super::DualWrite): put a value under a key, or delete
/// the key (which leaves a tombstone, see [`Row`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Write {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl Write {
    /// Store `value` under `key`.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Store `value`, as JSON, under `key`.
    ///
    /// # Errors
    ///
    /// [`DualError::Json`] when `value` cannot be written as JSON (a map with non-string
    /// keys, a failing `Serialize`).
    pub fn put_json<T: serde::Serialize + ?Sized>(
        key: impl Into<String>,
        value: &T,
    ) -> Result<Self, DualError> {
        let json = serde_json::to_vec(value).map_err(|source| DualError::Json { source })?;
        Ok(Self::put(key, json))
    }

    /// Delete `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The key written.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    /// The value written, `None` for a delete.
    pub const fn value(&self) -> Option<&Bytes> {
        match self {
            Self::Put { value, .. } => Some(value),
            Self::Delete { .. } => None,
        }
    }
}

/// What a write committed on the primary: the row's new version and the outbox entry that
/// carries it to the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Written {
    /// The row's version after the write.
    pub version: u64,
    /// The outbox entry's sequence number (increasing in commit order on one primary).
    pub seq: u64,
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes, no NUL (PostgreSQL's text cannot hold one).
///
/// # Errors
///
/// [`DualError::InvalidKey`] saying why.
pub fn check_key(key: &str) -> Result<(), DualError> {
    let reason = if key.is_empty() {
        "is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "is longer than 512 bytes"
    } else if key.contains('\0') {
        "contains a NUL character"
    } else {
        return Ok(());
    };
    Err(DualError::InvalidKey {
        len: key.len(),
        reason,
    })
}

/// A table's name, checked to be a plain identifier (so it can never smuggle SQL in): an
/// ASCII letter or `_`, then letters, digits and `_`, at most [`MAX_TABLE_NAME`] characters.
/// Stores quote it too. The outbox of a primary lives beside it, in `<name>_dual_outbox`.
///
/// ```
/// use tower_patterns_strangler::dual::TableName;
///
/// assert_eq!(TableName::new("users").unwrap().as_str(), "users");
/// assert!(TableName::new("users\"; DROP TABLE users; --").is_err());
/// assert!(TableName::new("1users").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName(Arc<str>);

impl TableName {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`DualError::InvalidTable`] when it is not a plain identifier.
    pub fn new(name: &str) -> Result<Self, DualError> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if first_ok && rest_ok && name.len() <= MAX_TABLE_NAME {
            Ok(Self(name.into()))
        } else {
            Err(DualError::InvalidTable {
                name: name.chars().take(80).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL (`"users"`).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The outbox table's name, quoted.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn outbox(&self) -> String {
        format!("\"{}_dual_outbox\"", self.0)
    }

    /// A name derived from this one with `suffix`, quoted (indexes).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn derived(&self, suffix: &str) -> String {
        format!("\"{}_{suffix}\"", self.0)
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unix time in microseconds: the floor of a new version (see the module docs).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Unix time in milliseconds: outbox due times.
pub(crate) fn now_ms() -> u64 {
    now_micros() / 1_000
}

/// A version as SQL's signed 64-bit integer.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn sql_version(key: &str, version: u64, table: &TableName) -> Result<i64, DualError> {
    i64::try_from(version).map_err(|_| DualError::CorruptRow {
        table: table.to_string(),
        key: Some(key.to_owned()),
        reason: "version above 2^63 - 1".into(),
    })
}

/// A count or time as SQL's signed 64-bit integer, saturating.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A count or time from SQL, negative as 0.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_sql_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("user:42").is_ok());
        assert!(check_key(&"k".repeat(512)).is_ok());
        for bad in ["", "a\0b", &"k".repeat(513)] {
            let err = check_key(bad).unwrap_err();
            assert!(matches!(err, DualError::InvalidKey { .. }), "{err:?}");
        }
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["users", "_t", "Users_2", &"t".repeat(40)] {
            assert!(TableName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1users",
            "us-ers",
            "us\"ers",
            "users; drop table x",
            "üsers",
            &"t".repeat(41),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(DualError::InvalidTable { .. })),
                "{bad}"
            );
        }
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        {
            let t = TableName::new("users").unwrap();
            assert_eq!(t.quoted(), "\"users\"");
            assert_eq!(t.outbox(), "\"users_dual_outbox\"");
        }
    }

    #[test]
    fn writes_and_rows() {
        let w = Write::put_json("a", &serde_json::json!({"n": 1})).unwrap();
        assert_eq!(w.key(), "a");
        assert_eq!(w.value().unwrap().as_ref(), br#"{"n":1}"#);
        assert_eq!(Write::delete("b").value(), None);
        let row = Row::new("a", &br#"{"n":1}"#[..], 3);
        assert_eq!(
            row.json::<serde_json::Value>().unwrap(),
            Some(serde_json::json!({"n": 1}))
        );
        assert!(Row::new("a", &b"not json"[..], 1).json::<u8>().is_err());
        assert_eq!(Row::tombstone("a", 4).json::<u8>().unwrap(), None);
        assert!(Row::tombstone("a", 4).is_tombstone());
    }
}
