//! The embedded event store on SQLite (feature `sqlite`, on by default).
//!
//! One file, WAL mode, one writer connection and one reader connection (one connection in
//! memory). Appends run in one
//! `IMMEDIATE` transaction each, so the global position (the table's `INTEGER PRIMARY KEY`) is
//! assigned by the single writer in commit order and has no gaps: a rolled-back append gives
//! its numbers back. Database calls run on Tokio's blocking pool.
//!
//! Durability: [`Durability::Full`] (the default) syncs the WAL on every commit, so an
//! acknowledged append survives power loss; [`Durability::Normal`] syncs at checkpoints, so an
//! acknowledged append survives the process being killed but may be lost with the machine.
//!
//! ```
//! use tower_patterns_eventstore::{sqlite::SqliteStore, EventData, EventStore, ExpectedVersion};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_eventstore::Error> {
//! let store = SqliteStore::in_memory()?;
//! let e = EventData::json("Opened", &serde_json::json!({ "owner": "ada" }))?;
//! let done = store.append("account-1", ExpectedVersion::NoStream, vec![e.clone()]).await?;
//! assert_eq!(done.version, 1);
//! // The same event again: stored once.
//! let again = store.append("account-1", ExpectedVersion::NoStream, vec![e]).await?;
//! assert!(again.duplicate && again.version == 1);
//! # Ok(()) }
//! ```

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::value::RawValue;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, ExpectedVersion, GlobalPosition, RecordedEvent, Snapshot,
    event::{RawEvent, micros},
    store::{Direction, EventStore, Seen, check_expected, parse_stream_metadata, seen, validate},
};

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: every commit is on disk before the append returns.
    #[default]
    Full,
    /// `synchronous = NORMAL`: commits survive a crashed process, not a crashed machine.
    Normal,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_events (
    position       INTEGER PRIMARY KEY,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS tp_streams (
    stream_id TEXT PRIMARY KEY,
    version   INTEGER NOT NULL,
    metadata  TEXT
);
CREATE TABLE IF NOT EXISTS tp_snapshots (
    stream_id        TEXT PRIMARY KEY,
    version          INTEGER NOT NULL,
    snapshot_version INTEGER NOT NULL,
    state            TEXT    NOT NULL
);
";

struct Inner {
    writer: Mutex<Connection>,
    /// A second connection for reads where the database allows it (a file in WAL mode);
    /// `None` in memory, where reads share the writer's connection.
    reader: Option<Mutex<Connection>>,
    head: watch::Sender<u64>,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
}

/// The SQLite [`EventStore`]. Cloning shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("head", &*self.inner.head.borrow())
            .finish_non_exhaustive()
    }
}

fn open(
    path: Option<&Path>,
    durability: Durability,
) -> Result<(Connection, Option<Connection>), Error> {
    let connect = || match path {
        Some(p) => Connection::open(p),
        None => Connection::open_in_memory(),
    };
    let writer = connect().map_err(Error::backend)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    writer
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000;"
        ))
        .map_err(Error::backend)?;
    writer.execute_batch(SCHEMA).map_err(Error::backend)?;
    let reader = match path {
        Some(_) => {
            let reader = connect().map_err(Error::backend)?;
            reader
                .execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(Error::backend)?;
            Some(reader)
        }
        None => None,
    };
    Ok((writer, reader))
}

impl SqliteStore {
    /// Opens (creating if need be) the store in the file at `path`, with [`Durability::Full`].
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a database this store can use.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, Durability::Full)
    }

    /// Opens the store at `path` with the given durability.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, Error> {
        let (writer, reader) = open(Some(path.as_ref()), durability)?;
        Self::from_connections(writer, reader)
    }

    /// A store in memory (gone when the last clone is dropped).
    ///
    /// # Errors
    ///
    /// When SQLite cannot create it.
    pub fn in_memory() -> Result<Self, Error> {
        let (writer, reader) = open(None, Durability::Normal)?;
        Self::from_connections(writer, reader)
    }

    fn from_connections(writer: Connection, reader: Option<Connection>) -> Result<Self, Error> {
        crate::error::register_error_responses();
        let head: i64 = writer
            .query_row(
                "SELECT COALESCE(MAX(position), 0) FROM tp_events",
                [],
                |r| r.get(0),
            )
            .map_err(Error::backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: reader.map(Mutex::new),
                head: watch::Sender::new(u64::try_from(head).unwrap_or(0)),
                clock: Box::new(SystemTime::now),
            }),
        })
    }

    /// Replaces the clock that stamps `recorded_at` (tests of time travel). Call it before
    /// cloning the store.
    ///
    /// # Panics
    ///
    /// When the store has been cloned already.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_clock before the store is cloned")
            .clock = Box::new(clock);
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(Error::backend)?
    }
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(self.reader.as_ref().unwrap_or(&self.writer))
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const SELECT: &str = "SELECT position, stream_id, version, event_id, event_type, schema_version, \
                      payload, metadata FROM tp_events";

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RecordedEvent, Error>> {
    let id: Vec<u8> = r.get(3)?;
    Ok(RawEvent {
        position: GlobalPosition::new(0, to_u64(r.get(0)?)),
        stream_id: r.get(1)?,
        version: to_u64(r.get(2)?),
        id: Uuid::from_slice(&id).map_err(|e| e.to_string()),
        event_type: r.get(4)?,
        schema_version: r.get(5)?,
        payload: r.get(6)?,
        metadata: r.get(7)?,
    }
    .check())
}

fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, Error> {
    let rows = stmt
        .query_map(params, row_to_event)
        .map_err(Error::backend)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(Error::backend)??);
    }
    Ok(out)
}

fn append_blocking(
    inner: &Inner,
    stream: &str,
    expected: ExpectedVersion,
    events: &[EventData],
) -> Result<AppendResult, Error> {
    let mut conn = lock(&inner.writer);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::backend)?;
    let found = {
        let mut q = tx
            .prepare_cached(
                "SELECT stream_id, version, position FROM tp_events WHERE event_id = ?1",
            )
            .map_err(Error::backend)?;
        events
            .iter()
            .map(|e| {
                q.query_row(params![e.id.as_bytes().as_slice()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        to_u64(r.get(1)?),
                        GlobalPosition::new(0, to_u64(r.get(2)?)),
                    ))
                })
                .optional()
                .map_err(Error::backend)
            })
            .collect::<Result<Vec<_>, Error>>()?
    };
    if let Seen::All(done) = seen(stream, events, &found)? {
        return Ok(done);
    }
    let current: u64 = tx
        .prepare_cached("SELECT version FROM tp_streams WHERE stream_id = ?1")
        .and_then(|mut q| {
            q.query_row(params![stream], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map_err(Error::backend)?
        .map_or(0, to_u64);
    check_expected(stream, expected, current)?;
    let recorded_at = micros((inner.clock)());
    let mut positions = Vec::with_capacity(events.len());
    let mut version = current;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO tp_events (stream_id, version, event_id, event_type, schema_version, \
                 payload, metadata, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(Error::backend)?;
        for e in events {
            version += 1;
            let mut metadata = e.metadata.clone();
            metadata.recorded_at_micros = recorded_at;
            let metadata =
                serde_json::to_string(&metadata).map_err(|e| Error::Encode(e.to_string()))?;
            insert
                .execute(params![
                    stream,
                    to_i64(version),
                    e.id.as_bytes().as_slice(),
                    e.event_type,
                    e.schema_version,
                    e.payload.get(),
                    metadata,
                    to_i64(recorded_at),
                ])
                .map_err(Error::backend)?;
            positions.push(GlobalPosition::new(0, to_u64(tx.last_insert_rowid())));
        }
    }
    tx.prepare_cached(
        "INSERT INTO tp_streams (stream_id, version) VALUES (?1, ?2) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
    )
    .and_then(|mut q| q.execute(params![stream, to_i64(version)]))
    .map_err(Error::backend)?;
    tx.commit().map_err(Error::backend)?;
    if let Some(last) = positions.last() {
        inner.head.send_replace(last.index);
    }
    Ok(AppendResult {
        version,
        positions,
        duplicate: false,
    })
}

impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        validate(stream, &events)?;
        let stream = stream.to_owned();
        self.blocking(move |inner| append_blocking(inner, &stream, expected, &events))
            .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = inner.read();
            let sql = match direction {
                Direction::Forward => {
                    format!(
                        "{SELECT} WHERE stream_id = ?1 AND version >= ?2 ORDER BY version LIMIT ?3"
                    )
                }
                Direction::Backward => format!(
                    "{SELECT} WHERE stream_id = ?1 AND version <= ?2 ORDER BY version DESC LIMIT ?3"
                ),
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(Error::backend)?;
            collect(
                &mut stmt,
                params![stream, to_i64(from), i64::try_from(max).unwrap_or(i64::MAX)],
            )
        })
        .await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        self.blocking(move |inner| {
            let conn = inner.read();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "{SELECT} WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))
                .map_err(Error::backend)?;
            collect(
                &mut stmt,
                params![to_i64(after.index), i64::try_from(max).unwrap_or(i64::MAX)],
            )
        })
        .await
    }

    async fn head(&self) -> Result<Option<RecordedEvent>, Error> {
        self.blocking(move |inner| {
            let conn = inner.read();
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT} ORDER BY position DESC LIMIT 1"))
                .map_err(Error::backend)?;
            Ok(collect(&mut stmt, [])?.pop())
        })
        .await
    }

    async fn count_after(&self, after: GlobalPosition, limit: u64) -> Result<u64, Error> {
        self.blocking(move |inner| {
            let conn = inner.read();
            conn.prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM tp_events WHERE position > ?1 LIMIT ?2)",
            )
            .and_then(|mut q| {
                q.query_row(params![to_i64(after.index), to_i64(limit)], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(to_u64)
            .map_err(Error::backend)
        })
        .await
    }

    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        self.blocking(move |inner| {
            let conn = inner.read();
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT} WHERE event_id = ?1"))
                .map_err(Error::backend)?;
            Ok(collect(&mut stmt, params![id.as_bytes().as_slice()])?.pop())
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = inner.read();
            conn.prepare_cached("SELECT version FROM tp_streams WHERE stream_id = ?1")
                .and_then(|mut q| {
                    q.query_row(params![stream], |r| r.get::<_, i64>(0))
                        .optional()
                })
                .map(|v| v.map_or(0, to_u64))
                .map_err(Error::backend)
        })
        .await
    }

    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = inner.read();
            let raw: Option<Option<String>> = conn
                .query_row(
                    "SELECT metadata FROM tp_streams WHERE stream_id = ?1",
                    params![stream],
                    |r| r.get(0),
                )
                .optional()
                .map_err(Error::backend)?;
            parse_stream_metadata(&stream, raw.flatten())
        })
        .await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = lock(&inner.writer);
            conn.execute(
                "INSERT INTO tp_streams (stream_id, version, metadata) VALUES (?1, 0, ?2) \
                 ON CONFLICT (stream_id) DO UPDATE SET metadata = excluded.metadata",
                params![stream, metadata.to_string()],
            )
            .map(drop)
            .map_err(Error::backend)
        })
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = inner.read();
            let row: Option<(i64, i64, String)> = conn
                .query_row(
                    "SELECT version, snapshot_version, state FROM tp_snapshots WHERE stream_id = ?1",
                    params![stream],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(Error::backend)?;
            let Some((version, snapshot_version, state)) = row else {
                return Ok(None);
            };
            // A snapshot that does not parse is ignored: the events are the truth.
            Ok(RawValue::from_string(state).ok().map(|state| Snapshot {
                version: to_u64(version),
                snapshot_version: u32::try_from(snapshot_version).unwrap_or(u32::MAX),
                state,
            }))
        })
        .await
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let conn = lock(&inner.writer);
            conn.execute(
                "INSERT INTO tp_snapshots (stream_id, version, snapshot_version, state) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (stream_id) DO UPDATE SET \
                 version = excluded.version, snapshot_version = excluded.snapshot_version, \
                 state = excluded.state WHERE excluded.version >= tp_snapshots.version",
                params![
                    stream,
                    to_i64(snapshot.version),
                    snapshot.snapshot_version,
                    snapshot.state.get()
                ],
            )
            .map(drop)
            .map_err(Error::backend)
        })
        .await
    }

    async fn wait_for_events(&self, after: GlobalPosition) {
        // Appends in this process wake at once; other processes writing the same file are
        // seen by polling.
        let mut rx = self.inner.head.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            rx.wait_for(|head| *head > after.index),
        )
        .await;
    }
}
