//! Checkpoints and dead letters in SQLite: tables `tp_checkpoints` and `tp_dead_letters`,
//! shared with the SQLite read-model target (a read model's file holds the same two tables,
//! so [`SqliteCheckpoints::open`] on a read model's file lists its dead letters too).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_core::BoxError> {
//! use tower_patterns_cqrs::{Checkpoint, CheckpointStore, checkpoint::SqliteCheckpoints};
//! use tower_patterns_eventstore::GlobalPosition;
//!
//! let checkpoints = SqliteCheckpoints::in_memory()?;
//! let new = Checkpoint { position: GlobalPosition::new(0, 7), version: 1 };
//! assert!(checkpoints.save("search_index", Checkpoint::default(), new).await?);
//! assert_eq!(checkpoints.load("search_index").await?, Some(new));
//! // A writer that lost its turn (it expected the default) stores nothing.
//! assert!(!checkpoints.save("search_index", Checkpoint::default(), new).await?);
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use rusqlite::{Connection, OptionalExtension, params};
use tower_patterns_core::BoxError;
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::{Checkpoint, CheckpointStore, DeadLetter};

/// The tables (`"commit"` is quoted: a keyword in SQLite).
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tp_checkpoints (
    name     TEXT PRIMARY KEY,
    "commit" INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    version  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tp_dead_letters (
    name        TEXT    NOT NULL,
    "commit"    INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    event_id    BLOB    NOT NULL,
    event_type  TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (name, "commit", idx)
);
"#;

/// Sets a connection up for a read model or checkpoints: WAL (readers never wait for the
/// writer), `synchronous = NORMAL` (the model and its checkpoint roll back together, so a lost
/// tail after a power cut is applied again, never half), a 5 s busy timeout, and the tables.
pub(crate) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )?;
    conn.execute_batch(SCHEMA)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The stored checkpoint named `name`.
pub(crate) fn load(conn: &Connection, name: &str) -> rusqlite::Result<Option<Checkpoint>> {
    conn.prepare_cached(r#"SELECT "commit", idx, version FROM tp_checkpoints WHERE name = ?1"#)?
        .query_row(params![name], |r| {
            Ok(Checkpoint {
                position: GlobalPosition::new(to_u64(r.get(0)?), to_u64(r.get(1)?)),
                version: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            })
        })
        .optional()
}

/// Writes `new` for `name`, creating the row.
pub(crate) fn store(conn: &Connection, name: &str, new: Checkpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(
        r#"INSERT INTO tp_checkpoints (name, "commit", idx, version) VALUES (?1, ?2, ?3, ?4)
           ON CONFLICT (name) DO UPDATE SET "commit" = excluded."commit", idx = excluded.idx,
           version = excluded.version"#,
    )?
    .execute(params![
        name,
        to_i64(new.position.commit),
        to_i64(new.position.index),
        new.version
    ])
    .map(drop)
}

/// Moves `name`'s position (the row exists).
pub(crate) fn store_position(
    conn: &Connection,
    name: &str,
    position: GlobalPosition,
) -> rusqlite::Result<()> {
    conn.prepare_cached(r#"UPDATE tp_checkpoints SET "commit" = ?2, idx = ?3 WHERE name = ?1"#)?
        .execute(params![
            name,
            to_i64(position.commit),
            to_i64(position.index)
        ])
        .map(drop)
}

/// Deletes `name`'s checkpoint row and dead letters.
pub(crate) fn delete(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM tp_checkpoints WHERE name = ?1", params![name])?;
    conn.execute("DELETE FROM tp_dead_letters WHERE name = ?1", params![name])
        .map(drop)
}

/// Records a dead letter of `name` (replacing one for the same event).
pub(crate) fn record_dead_letter(
    conn: &Connection,
    name: &str,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        r#"INSERT OR REPLACE INTO tp_dead_letters
           (name, "commit", idx, stream, version, event_id, event_type, error, attempts)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"#,
    )?
    .execute(params![
        name,
        to_i64(event.position.commit),
        to_i64(event.position.index),
        event.stream_id,
        to_i64(event.version),
        event.id.as_bytes().as_slice(),
        event.event_type,
        error,
        attempts
    ])
    .map(drop)
}

/// The dead letters of `name`, in log order.
pub(crate) fn dead_letters(conn: &Connection, name: &str) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare_cached(
        r#"SELECT "commit", idx, stream, version, event_id, event_type, error, attempts
           FROM tp_dead_letters WHERE name = ?1 ORDER BY "commit", idx"#,
    )?;
    let rows = stmt.query_map(params![name], |r| {
        let id: Vec<u8> = r.get(4)?;
        Ok(DeadLetter {
            name: name.to_owned(),
            position: GlobalPosition::new(to_u64(r.get(0)?), to_u64(r.get(1)?)),
            stream: r.get(2)?,
            version: to_u64(r.get(3)?),
            event_id: uuid::Uuid::from_slice(&id).unwrap_or_default(),
            event_type: r.get(5)?,
            error: r.get(6)?,
            attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        })
    })?;
    rows.collect()
}

/// Checkpoints (and dead letters) in a SQLite file, for external projections and relays.
/// Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct SqliteCheckpoints {
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteCheckpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCheckpoints").finish_non_exhaustive()
    }
}

impl SqliteCheckpoints {
    /// Opens (creating if need be) the checkpoints in the file at `path` (WAL,
    /// `synchronous = NORMAL`). The file of a SQLite read model holds the same tables: open it
    /// to read the model's dead letters.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a SQLite database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BoxError> {
        let conn = Connection::open(path)?;
        prepare(&conn)?;
        Ok(Self::from_connection(Arc::new(Mutex::new(conn)))?)
    }

    /// Checkpoints in memory, gone with the last clone.
    ///
    /// # Errors
    ///
    /// When SQLite cannot open a database.
    pub fn in_memory() -> Result<Self, BoxError> {
        let conn = Connection::open_in_memory()?;
        prepare(&conn)?;
        Ok(Self::from_connection(Arc::new(Mutex::new(conn)))?)
    }

    /// Checkpoints in a connection shared with other code (creates the tables).
    ///
    /// # Errors
    ///
    /// When the tables cannot be created.
    pub fn from_connection(conn: Arc<Mutex<Connection>>) -> Result<Self, rusqlite::Error> {
        lock(&conn).execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// The dead letters of `name` (a projection or relay), in log order.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, BoxError> {
        let name = name.to_owned();
        self.blocking(move |c| dead_letters(c, &name)).await
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BoxError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await?
            .map_err(Into::into)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Compare-and-set of `name` in an open transaction.
fn cas(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    expected: Checkpoint,
    new: Checkpoint,
) -> rusqlite::Result<bool> {
    if load(tx, name)?.unwrap_or_default() != expected {
        return Ok(false);
    }
    store(tx, name, new)?;
    Ok(true)
}

impl CheckpointStore for SqliteCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, BoxError> {
        let name = name.to_owned();
        self.blocking(move |c| load(c, &name)).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        let name = name.to_owned();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let done = cas(&tx, &name, expected, new)?;
            tx.commit()?;
            Ok(done)
        })
        .await
    }

    async fn dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        let (name, event, error) = (name.to_owned(), event.clone(), error.to_owned());
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if !cas(&tx, &name, expected, new)? {
                return Ok(false);
            }
            record_dead_letter(&tx, &name, &event, &error, attempts)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
