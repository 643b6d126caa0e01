//! A read model in SQLite, checkpointed in the same transaction.
//!
//! Each batch is one `BEGIN IMMEDIATE` transaction: the checkpoint row is checked against the
//! position the runner expects (compare-and-set: a second runner on the same file is fenced),
//! each event runs under a savepoint (a failing one is rolled back alone, those before it
//! commit), and the checkpoint moves to the last event applied. The model and its checkpoint
//! commit together, so each event takes effect exactly once, crash or not.
//!
//! rusqlite is synchronous: the work runs on Tokio's blocking pool. The file is opened in WAL
//! mode with `synchronous = NORMAL` and a 5 s busy timeout; readers open the same file with
//! their own connections ([`sqlite_reader`](crate::projection::sqlite_reader)) and name the
//! live tables through [`ProjectionHandle::tables`](crate::ProjectionHandle::tables).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, TransactionBehavior};
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::{Applied, Slot, Stored, Target};
use crate::{
    checkpoint::{
        Checkpoint,
        sqlite::{self as rows, lock},
    },
    projection::{
        ApplyError, NoTarget, ProjectionBuilder, ProjectionError, SqliteProjection, Tables,
    },
};

enum Source {
    Path(PathBuf),
    Connection(Arc<Mutex<Connection>>),
}

/// The target of a SQLite read model: set with
/// [`ProjectionBuilder::sqlite`] or [`ProjectionBuilder::sqlite_connection`].
pub struct SqliteTarget<P> {
    source: Source,
    conn: Option<Arc<Mutex<Connection>>>,
    projection: Arc<P>,
}

impl<P> fmt::Debug for SqliteTarget<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SqliteTarget");
        if let Source::Path(p) = &self.source {
            d.field("path", p);
        }
        d.finish_non_exhaustive()
    }
}

impl<Src> ProjectionBuilder<Src, NoTarget> {
    /// Keeps the read model (and its checkpoint) in the SQLite file at `path`, created if
    /// missing (opened when the projection starts). A file of its own is best: the event
    /// store's file would share SQLite's one writer with the appends.
    pub fn sqlite<P: SqliteProjection>(
        self,
        path: impl AsRef<Path>,
        projection: P,
    ) -> ProjectionBuilder<Src, SqliteTarget<P>> {
        self.with_target(SqliteTarget {
            source: Source::Path(path.as_ref().to_owned()),
            conn: None,
            projection: Arc::new(projection),
        })
    }

    /// Keeps the read model in an open connection shared with its readers (an in-memory
    /// database, in tests): they lock the mutex to query, and the runner holds it for a batch.
    pub fn sqlite_connection<P: SqliteProjection>(
        self,
        connection: Arc<Mutex<Connection>>,
        projection: P,
    ) -> ProjectionBuilder<Src, SqliteTarget<P>> {
        self.with_target(SqliteTarget {
            source: Source::Connection(connection),
            conn: None,
            projection: Arc::new(projection),
        })
    }
}

/// Opens a connection for reading a SQLite read model (or any WAL file) beside its runner:
/// read-only, 5 s busy timeout.
///
/// # Errors
///
/// When the file cannot be opened.
pub fn sqlite_reader(path: impl AsRef<Path>) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn fenced(slot: &Slot) -> ProjectionError {
    ProjectionError::Fenced {
        projection: slot.checkpoint.clone(),
    }
}

/// Fails with `Fenced` unless `slot`'s stored position is `expected`.
fn check(conn: &Connection, slot: &Slot, expected: GlobalPosition) -> Result<(), ProjectionError> {
    match rows::load(conn, &slot.checkpoint)? {
        Some(c) if c.position == expected => Ok(()),
        _ => Err(fenced(slot)),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops every table, view and trigger whose name starts with `prefix` (virtual tables
/// first: FTS5 drops its shadow tables with them).
pub(crate) fn drop_prefix(conn: &Connection, prefix: &str) -> rusqlite::Result<()> {
    let named = |kind: &str, extra: &str| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!(
            "SELECT name FROM sqlite_master WHERE type = ?1 \
             AND substr(name, 1, length(?2)) = ?2 {extra}"
        ))?;
        let names = stmt.query_map(rusqlite::params![kind, prefix], |r| r.get(0))?;
        names.collect()
    };
    for t in named("table", "AND sql LIKE 'CREATE VIRTUAL TABLE%'")? {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&t)))?;
    }
    for v in named("view", "")? {
        conn.execute_batch(&format!("DROP VIEW IF EXISTS {}", quote(&v)))?;
    }
    for t in named("trigger", "")? {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&t)))?;
    }
    for t in named("table", "")? {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&t)))?;
    }
    Ok(())
}

impl<P: SqliteProjection> SqliteTarget<P> {
    fn connection(&mut self) -> Result<Arc<Mutex<Connection>>, ProjectionError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let conn = match &self.source {
            Source::Path(path) => {
                let conn = Connection::open(path)?;
                rows::prepare(&conn)?;
                Arc::new(Mutex::new(conn))
            }
            Source::Connection(c) => {
                lock(c).execute_batch(rows::SCHEMA)?;
                c.clone()
            }
        };
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on the blocking pool with the connection locked.
    async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection, &P) -> Result<R, ProjectionError> + Send + 'static,
    ) -> Result<R, ProjectionError> {
        let conn = self.connection()?;
        let projection = self.projection.clone();
        match tokio::task::spawn_blocking(move || f(&mut lock(&conn), &projection)).await {
            Ok(r) => r,
            Err(e) => match e.try_into_panic() {
                // The projection panicked: the transaction rolled back; so does the runner.
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(ProjectionError::database(e)),
            },
        }
    }
}

fn immediate(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Applies `events` under a savepoint each; see the module docs.
fn apply_batch<P: SqliteProjection>(
    conn: &mut Connection,
    projection: &P,
    slot: &Slot,
    expected: GlobalPosition,
    events: &[RecordedEvent],
) -> Result<Applied, ProjectionError> {
    let tx = immediate(conn)?;
    check(&tx, slot, expected)?;
    let mut count = 0;
    let mut failed = None;
    for event in events {
        tx.prepare_cached("SAVEPOINT tp_event")?.execute([])?;
        match projection.apply(&tx, &slot.tables, event) {
            Ok(()) => {
                tx.prepare_cached("RELEASE tp_event")?.execute([])?;
                count += 1;
            }
            Err(e) => {
                tx.prepare_cached("ROLLBACK TO tp_event")?.execute([])?;
                tx.prepare_cached("RELEASE tp_event")?.execute([])?;
                failed = Some(e);
                break;
            }
        }
    }
    if count > 0 {
        rows::store_position(&tx, &slot.checkpoint, events[count - 1].position)?;
        tx.commit()?;
    }
    Ok(Applied { count, failed })
}

impl<P: SqliteProjection> Target for SqliteTarget<P> {
    async fn acquire(&mut self, _name: &str) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn open(&mut self, slot: &Slot) -> Result<Stored, ProjectionError> {
        let slot = slot.clone();
        self.blocking(move |conn, projection| {
            let tx = immediate(conn)?;
            let stored = match rows::load(&tx, &slot.checkpoint)? {
                Some(c) => Stored {
                    position: c.position,
                    version: c.version,
                },
                None => {
                    let version = slot.tables.version();
                    rows::store(
                        &tx,
                        &slot.checkpoint,
                        Checkpoint {
                            position: GlobalPosition::START,
                            version,
                        },
                    )?;
                    let tables = Tables::new(slot.tables.projection().to_owned(), version);
                    projection
                        .create(&tx, &tables)
                        .map_err(ProjectionError::database)?;
                    Stored {
                        position: GlobalPosition::START,
                        version,
                    }
                }
            };
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn apply(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        events: &[RecordedEvent],
    ) -> Result<Applied, ProjectionError> {
        let (slot, events) = (slot.clone(), events.to_vec());
        self.blocking(move |conn, projection| {
            apply_batch(conn, projection, &slot, expected, &events)
        })
        .await
    }

    async fn dead_letter(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        event: &RecordedEvent,
        error: &ApplyError,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let (slot, event, error) = (slot.clone(), event.clone(), error.to_string());
        self.blocking(move |conn, _| {
            let tx = immediate(conn)?;
            check(&tx, &slot, expected)?;
            rows::record_dead_letter(&tx, &slot.checkpoint, &event, &error, attempts)?;
            rows::store_position(&tx, &slot.checkpoint, event.position)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn swap(&mut self, live: &Slot, rebuilt: &Slot) -> Result<(), ProjectionError> {
        let (live, rebuilt) = (live.clone(), rebuilt.clone());
        self.blocking(move |conn, _| {
            let tx = immediate(conn)?;
            let (Some(l), Some(r)) = (
                rows::load(&tx, &live.checkpoint)?,
                rows::load(&tx, &rebuilt.checkpoint)?,
            ) else {
                return Err(fenced(&live));
            };
            if l.position != r.position || l.version != live.tables.version() {
                return Err(fenced(&live));
            }
            rows::store(&tx, &live.checkpoint, r)?;
            tx.execute(
                "UPDATE OR REPLACE tp_dead_letters SET name = ?1 WHERE name = ?2",
                rusqlite::params![live.checkpoint, rebuilt.checkpoint],
            )?;
            rows::delete(&tx, &rebuilt.checkpoint)?;
            drop_prefix(&tx, &live.tables.prefix())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn discard(&mut self, slot: &Slot) -> Result<(), ProjectionError> {
        let slot = slot.clone();
        self.blocking(move |conn, _| {
            let tx = immediate(conn)?;
            // Never the live copy's tables: when the live row holds this version (another
            // runner swapped it in), the runner is told to reload instead.
            if rows::load(&tx, slot.tables.projection())?
                .is_some_and(|live| live.version == slot.tables.version())
            {
                return Err(fenced(&slot));
            }
            drop_prefix(&tx, &slot.tables.prefix())?;
            rows::delete(&tx, &slot.checkpoint)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn dropping_a_copy_drops_its_tables_views_triggers_and_full_text_indexes_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE catalog_v1_products (id INTEGER PRIMARY KEY, name TEXT);
             CREATE INDEX catalog_v1_products_name ON catalog_v1_products (name);
             CREATE VIRTUAL TABLE catalog_v1_search USING fts5 (name);
             CREATE VIEW catalog_v1_cheap AS SELECT * FROM catalog_v1_products;
             CREATE TABLE catalog_v1_log (n INTEGER);
             CREATE TRIGGER catalog_v1_logged AFTER INSERT ON catalog_v1_products
               BEGIN INSERT INTO catalog_v1_log VALUES (1); END;
             CREATE TABLE catalog_v2_products (id INTEGER PRIMARY KEY);
             CREATE TABLE catalogue (id INTEGER);",
        )
        .unwrap();
        drop_prefix(&conn, "catalog_v1_").unwrap();
        assert_eq!(names(&conn), ["catalog_v2_products", "catalogue"]);
    }
}
