//! Rows (and a primary's outbox) in a SQLite file.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use rusqlite::{
    Connection, ErrorCode, Row as SqlRow, TransactionBehavior, params, types::ValueRef,
};

use super::{
    DualError, Row, TableName, Write, Written,
    row::{from_sql_int, sql_int, sql_version},
    store::{Deferral, MissedWrite, OutboxCounts, OutboxStore, Pending, RowStore},
};

/// A [`RowStore`] and [`OutboxStore`] in a SQLite file: the table
/// `<table> (key TEXT PRIMARY KEY, value BLOB, version INTEGER)` and, beside it, the outbox
/// `<table>_dual_outbox`, both created if need be. WAL mode, every commit synced. Calls run on
/// Tokio's blocking threads, one at a time on one connection; cloning shares it.
///
/// A value stored as `TEXT` by another program reads as its bytes.
#[derive(Clone)]
pub struct SqliteRows {
    conn: Arc<Mutex<Connection>>,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for SqliteRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRows")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

/// The statements, with the table's name in them.
struct Sql {
    table: TableName,
    write: String,
    outbox_insert: String,
    apply: String,
    rows: String,
    scan_first: String,
    scan_after: String,
    replace_insert: String,
    replace_update: String,
    replace_delete: String,
    due: String,
    settle: String,
    defer: String,
    missed: String,
    counts: String,
}

impl Sql {
    fn new(table: TableName) -> Self {
        let (t, o) = (table.quoted(), table.outbox());
        Self {
            write: format!(
                "INSERT INTO {t} (key, value, version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = max({t}.version + 1, excluded.version) RETURNING version"
            ),
            outbox_insert: format!(
                "INSERT INTO {o} (key, version, due_ms, created_ms) VALUES (?1, ?2, ?3, ?3)"
            ),
            apply: format!(
                "INSERT INTO {t} (key, value, version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version WHERE excluded.version > {t}.version \
                 OR (excluded.version = {t}.version AND ((excluded.value IS NULL AND {t}.value IS NOT NULL) \
                 OR (excluded.value IS NOT NULL AND {t}.value IS NOT NULL AND excluded.value > {t}.value)))"
            ),
            rows: format!(
                "SELECT key, value, version FROM {t} \
                 WHERE key IN (SELECT value FROM json_each(?1))"
            ),
            scan_first: format!("SELECT key, value, version FROM {t} ORDER BY key LIMIT ?1"),
            scan_after: format!(
                "SELECT key, value, version FROM {t} WHERE key > ?1 ORDER BY key LIMIT ?2"
            ),
            replace_insert: format!(
                "INSERT INTO {t} (key, value, version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO NOTHING"
            ),
            replace_update: format!(
                "UPDATE {t} SET value = ?2, version = ?3 WHERE key = ?1 AND version = ?4"
            ),
            replace_delete: format!("DELETE FROM {t} WHERE key = ?1 AND version = ?2"),
            due: format!(
                "SELECT seq, key, version, attempts, missed_ms FROM {o} \
                 WHERE due_ms <= ?1 ORDER BY due_ms, seq LIMIT ?2"
            ),
            settle: format!("DELETE FROM {o} WHERE key = ?1 AND version <= ?2"),
            defer: format!(
                "UPDATE {o} SET attempts = ?2, due_ms = ?3, missed_ms = ?4, last_error = ?5 \
                 WHERE seq = ?1"
            ),
            missed: format!(
                "SELECT seq, key, version, attempts, missed_ms, last_error FROM {o} \
                 WHERE missed_ms IS NOT NULL ORDER BY seq LIMIT ?1"
            ),
            counts: format!("SELECT count(*), count(missed_ms) FROM {o}"),
            table,
        }
    }

    fn schema(&self) -> String {
        let (t, o) = (self.table.quoted(), self.table.outbox());
        let (due, by_key) = (
            self.table.derived("dual_outbox_due"),
            self.table.derived("dual_outbox_key"),
        );
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                key     TEXT PRIMARY KEY NOT NULL,
                value   BLOB,
                version INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {o} (
                seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                key        TEXT NOT NULL,
                version    INTEGER NOT NULL,
                attempts   INTEGER NOT NULL DEFAULT 0,
                due_ms     INTEGER NOT NULL,
                missed_ms  INTEGER,
                last_error TEXT,
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {due} ON {o} (due_ms, seq);
            CREATE INDEX IF NOT EXISTS {by_key} ON {o} (key, version);"
        )
    }
}

/// A SQLite error as ours: busy, locked and unopenable databases are transient.
fn db_error(context: impl FnOnce() -> String, e: rusqlite::Error) -> DualError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
        )
    );
    if transient {
        DualError::unavailable(context(), e)
    } else {
        DualError::store(context(), e)
    }
}

/// What a closure on the connection returns: ours, or SQLite's (mapped with the context).
enum Fail {
    Db(rusqlite::Error),
    Ours(DualError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

impl From<DualError> for Fail {
    fn from(e: DualError) -> Self {
        Self::Ours(e)
    }
}

fn corrupt(table: &TableName, key: Option<&str>, reason: impl Into<String>) -> DualError {
    DualError::CorruptRow {
        table: table.to_string(),
        key: key.map(str::to_owned),
        reason: reason.into(),
    }
}

/// Reads `(key, value, version)` at columns 0 to 2, checking each.
fn read_row(table: &TableName, r: &SqlRow<'_>) -> Result<Row, Fail> {
    let key = match r.get_ref(0)? {
        ValueRef::Text(t) => {
            String::from_utf8(t.to_vec()).map_err(|_| corrupt(table, None, "key is not UTF-8"))?
        }
        _ => return Err(corrupt(table, None, "key is not text").into()),
    };
    let value = match r.get_ref(1)? {
        ValueRef::Null => None,
        ValueRef::Blob(b) | ValueRef::Text(b) => Some(Bytes::copy_from_slice(b)),
        ValueRef::Integer(_) | ValueRef::Real(_) => {
            return Err(corrupt(table, Some(&key), "value is a number, not bytes or text").into());
        }
    };
    let version = match r.get_ref(2)? {
        ValueRef::Integer(v) if v >= 0 => v.cast_unsigned(),
        _ => {
            return Err(
                corrupt(table, Some(&key), "version is not an integer of 0 or more").into(),
            );
        }
    };
    Ok(Row {
        key,
        value,
        version,
    })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteRows {
    /// Opens (creating if need be) the table `table` in the SQLite file at `path`; waits up
    /// to 5 s for another connection's lock before a call fails as
    /// [`DualError::Unavailable`] (see [`with_busy_timeout`](Self::with_busy_timeout)).
    ///
    /// # Errors
    ///
    /// [`DualError::InvalidTable`] for a bad name; [`DualError::Unavailable`] or
    /// [`DualError::Store`] when the file cannot be opened or set up.
    pub fn open(path: impl AsRef<Path>, table: &str) -> Result<Self, DualError> {
        let table = TableName::new(table)?;
        let path = path.as_ref();
        let conn = Connection::open(path)
            .map_err(|e| db_error(|| format!("open {}", path.display()), e))?;
        Self::with(
            conn,
            table,
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
        )
    }

    /// The table `table` in a database in memory (gone with the last clone): for tests and
    /// examples.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn in_memory(table: &str) -> Result<Self, DualError> {
        let table = TableName::new(table)?;
        let conn =
            Connection::open_in_memory().map_err(|e| db_error(|| "open in memory".into(), e))?;
        Self::with(conn, table, "")
    }

    fn with(conn: Connection, table: TableName, pragmas: &str) -> Result<Self, DualError> {
        super::error::register();
        let sql = Sql::new(table);
        conn.execute_batch(&format!(
            "{pragmas} PRAGMA busy_timeout = 5000; {}",
            sql.schema()
        ))
        .map_err(|e| db_error(|| format!("create table {}", sql.table), e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            sql: Arc::new(sql),
        })
    }

    /// Sets how long a call waits for another connection's lock before it fails as
    /// [`DualError::Unavailable`] (0: at once).
    ///
    /// # Errors
    ///
    /// When SQLite refuses the setting.
    pub fn with_busy_timeout(self, wait: Duration) -> Result<Self, DualError> {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .busy_timeout(wait)
            .map_err(|e| db_error(|| "set busy_timeout".into(), e))?;
        Ok(self)
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.sql.table
    }

    async fn run<T: Send + 'static>(
        &self,
        context: impl FnOnce() -> String + Send + 'static,
        f: impl FnOnce(&mut Connection, &Sql) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, DualError> {
        let (conn, sql) = (self.conn.clone(), self.sql.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &sql).map_err(|fail| match fail {
                Fail::Db(e) => db_error(|| format!("{} on {}", context(), sql.table), e),
                Fail::Ours(e) => e,
            })
        })
        .await
        .map_err(|e| DualError::store("a SQLite call on a blocking thread", e))?
    }
}

impl RowStore for SqliteRows {
    async fn rows(&self, keys: &[String]) -> Result<Vec<Row>, DualError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = serde_json::to_string(keys).map_err(|source| DualError::Json { source })?;
        self.run(
            || "read rows".into(),
            move |c, sql| {
                let mut q = c.prepare_cached(&sql.rows)?;
                let mut rows = q.query(params![keys])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(read_row(&sql.table, r)?);
                }
                Ok(out)
            },
        )
        .await
    }

    async fn apply(&self, rows: &[Row]) -> Result<Vec<bool>, DualError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = rows.to_vec();
        let n = rows.len();
        self.run(
            move || format!("apply {n} rows"),
            move |c, sql| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut stored = Vec::with_capacity(rows.len());
                {
                    let mut q = tx.prepare_cached(&sql.apply)?;
                    for row in &rows {
                        let version = sql_version(&row.key, row.version, &sql.table)?;
                        let n = q.execute(params![row.key, row.value.as_deref(), version])?;
                        stored.push(n == 1);
                    }
                }
                tx.commit()?;
                Ok(stored)
            },
        )
        .await
    }

    async fn scan(&self, after: Option<&str>, max: usize) -> Result<Vec<Row>, DualError> {
        let after = after.map(str::to_owned);
        self.run(
            || "scan rows".into(),
            move |c, sql| {
                let mut out = Vec::with_capacity(max.min(4_096));
                let mut push = |rows: &mut rusqlite::Rows<'_>| -> Result<(), Fail> {
                    while let Some(r) = rows.next()? {
                        out.push(read_row(&sql.table, r)?);
                    }
                    Ok(())
                };
                match after {
                    None => push(
                        &mut c
                            .prepare_cached(&sql.scan_first)?
                            .query(params![limit(max)])?,
                    )?,
                    Some(after) => push(
                        &mut c
                            .prepare_cached(&sql.scan_after)?
                            .query(params![after, limit(max)])?,
                    )?,
                }
                Ok(out)
            },
        )
        .await
    }

    async fn replace(
        &self,
        key: &str,
        expected: Option<u64>,
        row: Option<&Row>,
    ) -> Result<bool, DualError> {
        let (key, row) = (key.to_owned(), row.cloned());
        self.run(
            || "repair a row".into(),
            move |c, sql| {
                let t = &sql.table;
                let n = match (expected, &row) {
                    (None, None) => 0,
                    (None, Some(r)) => c.prepare_cached(&sql.replace_insert)?.execute(params![
                        key,
                        r.value.as_deref(),
                        sql_version(&key, r.version, t)?
                    ])?,
                    (Some(old), Some(r)) => {
                        c.prepare_cached(&sql.replace_update)?.execute(params![
                            key,
                            r.value.as_deref(),
                            sql_version(&key, r.version, t)?,
                            sql_version(&key, old, t)?
                        ])?
                    }
                    (Some(old), None) => c
                        .prepare_cached(&sql.replace_delete)?
                        .execute(params![key, sql_version(&key, old, t)?])?,
                };
                Ok(n == 1)
            },
        )
        .await
    }
}

impl OutboxStore for SqliteRows {
    async fn write(&self, write: &Write, floor: u64, now_ms: u64) -> Result<Written, DualError> {
        let (key, value) = (write.key().to_owned(), write.value().cloned());
        self.run(
            || "write a row".into(),
            move |c, sql| {
                let floor = sql_version(&key, floor.max(1), &sql.table)?;
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let version: i64 = tx
                    .prepare_cached(&sql.write)?
                    .query_row(params![key, value.as_deref(), floor], |r| r.get(0))?;
                tx.prepare_cached(&sql.outbox_insert)?.execute(params![
                    key,
                    version,
                    sql_int(now_ms)
                ])?;
                let seq = tx.last_insert_rowid();
                tx.commit()?;
                Ok(Written {
                    version: from_sql_int(version),
                    seq: from_sql_int(seq),
                })
            },
        )
        .await
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<Pending>, DualError> {
        self.run(
            || "read the outbox".into(),
            move |c, sql| {
                let mut q = c.prepare_cached(&sql.due)?;
                let rows = q.query_map(params![sql_int(now_ms), limit(max)], |r| {
                    Ok(Pending {
                        seq: from_sql_int(r.get(0)?),
                        key: r.get(1)?,
                        version: from_sql_int(r.get(2)?),
                        attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                        missed_since_ms: r.get::<_, Option<i64>>(4)?.map(from_sql_int),
                    })
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            },
        )
        .await
    }

    async fn settle(&self, delivered: &[(String, u64)]) -> Result<u64, DualError> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let delivered = delivered.to_vec();
        self.run(
            || "settle outbox entries".into(),
            move |c, sql| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut deleted = 0;
                {
                    let mut q = tx.prepare_cached(&sql.settle)?;
                    for (key, version) in &delivered {
                        deleted += q.execute(params![key, sql_int(*version)])?;
                    }
                }
                tx.commit()?;
                Ok(deleted as u64)
            },
        )
        .await
    }

    async fn defer(&self, failed: &[Deferral]) -> Result<(), DualError> {
        if failed.is_empty() {
            return Ok(());
        }
        let failed = failed.to_vec();
        self.run(
            || "defer outbox entries".into(),
            move |c, sql| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut q = tx.prepare_cached(&sql.defer)?;
                    for d in &failed {
                        q.execute(params![
                            sql_int(d.seq),
                            i64::from(d.attempts),
                            sql_int(d.due_ms),
                            d.missed_since_ms.map(sql_int),
                            d.error
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(())
            },
        )
        .await
    }

    async fn missed(&self, max: usize) -> Result<Vec<MissedWrite>, DualError> {
        self.run(
            || "list missed writes".into(),
            move |c, sql| {
                let mut q = c.prepare_cached(&sql.missed)?;
                let rows = q.query_map(params![limit(max)], |r| {
                    Ok(MissedWrite {
                        seq: from_sql_int(r.get(0)?),
                        key: r.get(1)?,
                        version: from_sql_int(r.get(2)?),
                        attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                        since_ms: from_sql_int(r.get(4)?),
                        last_error: r.get(5)?,
                    })
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            },
        )
        .await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, DualError> {
        self.run(
            || "count the outbox".into(),
            move |c, sql| {
                let (pending, missed): (i64, i64) = c
                    .prepare_cached(&sql.counts)?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(OutboxCounts {
                    pending: from_sql_int(pending),
                    missed: from_sql_int(missed),
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{DualError, SqliteRows};

    #[tokio::test]
    async fn conforms_in_memory_and_in_a_file() {
        super::super::conformance::check(&SqliteRows::in_memory("rows").unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.db");
        let rows = SqliteRows::open(&path, "rows").unwrap();
        super::super::conformance::check(&rows).await;
        let plant = async |sql: &str| {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        };
        super::super::conformance::corrupt_rows_are_errors(&rows, plant).await;
    }

    #[test]
    fn a_table_name_with_a_quote_is_refused() {
        let err = SqliteRows::in_memory("users\"; DROP TABLE x; --").unwrap_err();
        assert!(matches!(err, DualError::InvalidTable { .. }), "{err:?}");
    }
}
