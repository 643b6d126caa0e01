//! The store traits: a table of rows ([`RowStore`]), and a table of rows with an outbox beside
//! it in the same database ([`OutboxStore`]).

use std::future::Future;

use super::{DualError, Row, Write, Written};

/// A table of [`Row`]s: what a dual write's secondary must be, and what a reconciler
/// compares. `SqliteRows` (feature `sqlite`) and `PostgresRows` (feature `postgres`)
/// implement it; implement it for another database the same way.
///
/// Keys compare as bytes (UTF-8 order, as Rust's `str` does): PostgreSQL needs
/// `COLLATE "C"`, SQLite's default `BINARY` collation already is.
pub trait RowStore: Send + Sync + 'static {
    /// The rows with these keys that exist (tombstones included), in any order.
    fn rows(&self, keys: &[String]) -> impl Future<Output = Result<Vec<Row>, DualError>> + Send;

    /// Stores each row whose key is absent or whose stored version is lower than the row's
    /// (the **version guard**: an older version never overwrites a newer one), or equal with
    /// a value that wins the tie (a tombstone over any value, else the greater value bytewise:
    /// so two stores that took different writes at one version converge), all in one
    /// transaction. Returns, for each row in order, whether it was stored. The keys are
    /// distinct.
    ///
    /// # Errors
    ///
    /// When the transaction failed: then nothing was stored.
    fn apply(&self, rows: &[Row]) -> impl Future<Output = Result<Vec<bool>, DualError>> + Send;

    /// Up to `limit` rows, tombstones included, whose keys come after `after` (from the
    /// first when `None`), in key order.
    fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, DualError>> + Send;

    /// Sets `key` to `row` (removes it when `row` is `None`), whatever the versions, but only
    /// if its stored version is still `expected` (`None`: the key is absent). Returns whether
    /// it changed the table. This is how a reconciler repairs a row without undoing a write
    /// that landed after it looked.
    fn replace(
        &self,
        key: &str,
        expected: Option<u64>,
        row: Option<&Row>,
    ) -> impl Future<Output = Result<bool, DualError>> + Send;

    /// The row with this key, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Row>, DualError>> + Send {
        let keys = [key.to_owned()];
        async move { Ok(self.rows(&keys).await?.pop()) }
    }
}

/// A [`RowStore`] with an outbox in the same database: what a dual write's primary must be.
///
/// A write commits its row and an outbox entry `(seq, key, version)` in one transaction, so a
/// write that was acknowledged always has an entry, even if the process dies at once. The
/// worker reads due entries, sends each key's current row to the secondary, and settles
/// (deletes) the entries the secondary now has; a failed entry is deferred with its attempt
/// count, next due time and, once the secondary is deemed to have missed it, the time since
/// when.
pub trait OutboxStore: RowStore {
    /// Commits `write` with its outbox entry (due at `now_ms`) in one transaction. The row's
    /// new version is the larger of its stored version plus one and `floor` (1 for a new
    /// key, at least).
    fn write(
        &self,
        write: &Write,
        floor: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Written, DualError>> + Send;

    /// Up to `limit` entries due at `now_ms` (due time at or before it), earliest due first,
    /// then by sequence.
    fn due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Pending>, DualError>> + Send;

    /// Deletes every entry of each `(key, version)` whose version is at most `version` (the
    /// secondary has that version or a newer one); returns how many it deleted.
    fn settle(
        &self,
        delivered: &[(String, u64)],
    ) -> impl Future<Output = Result<u64, DualError>> + Send;

    /// Records failed attempts on these entries (by sequence; entries settled meanwhile are
    /// skipped).
    fn defer(&self, failed: &[Deferral]) -> impl Future<Output = Result<(), DualError>> + Send;

    /// Up to `limit` entries recorded as missed, oldest first.
    fn missed(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<MissedWrite>, DualError>> + Send;

    /// How many entries wait, and how many of them are recorded as missed.
    fn outbox_counts(&self) -> impl Future<Output = Result<OutboxCounts, DualError>> + Send;
}

/// An outbox entry waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The entry's sequence number.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// The version the write gave the row.
    pub version: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the entry was recorded as missed (Unix ms), if it was.
    pub missed_since_ms: Option<u64>,
}

/// A failed attempt to record on an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferral {
    /// The entry's sequence number.
    pub seq: u64,
    /// Failed attempts, this one included.
    pub attempts: u32,
    /// When to try again (Unix ms).
    pub due_ms: u64,
    /// When the entry was recorded as missed (Unix ms), if it is.
    pub missed_since_ms: Option<u64>,
    /// The failure (at most 500 characters).
    pub error: String,
}

/// A write the secondary has missed: still not delivered after the set number of attempts,
/// or refused with an error that retrying is not expected to cure. The worker keeps trying
/// it; delivering it, or a reconciler's repair of its key, clears the record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MissedWrite {
    /// The outbox entry's sequence number.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// The version the write gave the row.
    pub version: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Since when the write is recorded as missed (Unix ms).
    pub since_ms: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// How many outbox entries wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    /// Entries not yet delivered, missed ones included.
    pub pending: u64,
    /// Entries recorded as missed.
    pub missed: u64,
}

/// Cuts an error message to at most 500 characters, for the outbox.
pub(crate) fn short_error(e: &DualError) -> String {
    let text = e.to_string();
    match text.char_indices().nth(500) {
        Some((at, _)) => text[..at].to_owned(),
        None => text,
    }
}
