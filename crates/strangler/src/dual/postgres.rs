//! Rows (and a primary's outbox) on PostgreSQL.

use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::{Row as PgRow, error::SqlState};

use super::{
    DualError, Row, TableName, Write, Written,
    row::{from_sql_int, sql_int, sql_version},
    store::{Deferral, MissedWrite, OutboxCounts, OutboxStore, Pending, RowStore},
};

/// A [`RowStore`] and [`OutboxStore`] on PostgreSQL: the table
/// `<table> (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA, version BIGINT)` and, beside it,
/// the outbox `<table>_dual_outbox`, both created if need be (in the first schema of the
/// connection's `search_path`). A write is one statement that upserts the row and inserts
/// its outbox entry, so it commits both or neither. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresRows {
    pool: Pool,
    sql: std::sync::Arc<Sql>,
}

impl std::fmt::Debug for PostgresRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRows")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

struct Sql {
    table: TableName,
    write: String,
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
                "WITH w AS ( \
                   INSERT INTO {t} AS r (key, value, version) VALUES ($1, $2, $3) \
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                   version = GREATEST(r.version + 1, excluded.version) RETURNING key, version) \
                 INSERT INTO {o} (key, version, due_ms, created_ms) \
                 SELECT key, version, $4, $4 FROM w RETURNING seq, version"
            ),
            apply: format!(
                "INSERT INTO {t} AS r (key, value, version) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[]) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version WHERE (excluded.version > r.version \
                 OR (excluded.version = r.version AND ((excluded.value IS NULL AND r.value IS NOT NULL) \
                 OR (excluded.value IS NOT NULL AND r.value IS NOT NULL AND excluded.value > r.value)))) \
                 RETURNING key"
            ),
            rows: format!("SELECT key, value, version FROM {t} WHERE key = ANY($1)"),
            scan_first: format!(
                "SELECT key, value, version FROM {t} ORDER BY key COLLATE \"C\" LIMIT $1"
            ),
            scan_after: format!(
                "SELECT key, value, version FROM {t} WHERE key COLLATE \"C\" > $1 \
                 ORDER BY key COLLATE \"C\" LIMIT $2"
            ),
            replace_insert: format!(
                "INSERT INTO {t} (key, value, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO NOTHING"
            ),
            replace_update: format!(
                "UPDATE {t} SET value = $2, version = $3 WHERE key = $1 AND version = $4"
            ),
            replace_delete: format!("DELETE FROM {t} WHERE key = $1 AND version = $2"),
            due: format!(
                "SELECT seq, key, version, attempts, missed_ms FROM {o} \
                 WHERE due_ms <= $1 ORDER BY due_ms, seq LIMIT $2"
            ),
            settle: format!(
                "DELETE FROM {o} o USING unnest($1::text[], $2::bigint[]) AS d(key, version) \
                 WHERE o.key = d.key AND o.version <= d.version"
            ),
            defer: format!(
                "UPDATE {o} o SET attempts = d.attempts, due_ms = d.due_ms, \
                 missed_ms = d.missed_ms, last_error = d.last_error \
                 FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::text[]) \
                   AS d(seq, attempts, due_ms, missed_ms, last_error) \
                 WHERE o.seq = d.seq"
            ),
            missed: format!(
                "SELECT seq, key, version, attempts, missed_ms, last_error FROM {o} \
                 WHERE missed_ms IS NOT NULL ORDER BY seq LIMIT $1"
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
        // Processes starting together would race `CREATE TABLE IF NOT EXISTS` (one fails on
        // the catalog's unique index): the first takes a lock, the others wait for it. The
        // name is a checked identifier, so it is safe inside the literal.
        format!(
            "BEGIN;
            SELECT pg_advisory_xact_lock(hashtext('tp_dual:{name}'));
            CREATE TABLE IF NOT EXISTS {t} (
                key     TEXT COLLATE \"C\" PRIMARY KEY,
                value   BYTEA,
                version BIGINT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {o} (
                seq        BIGSERIAL PRIMARY KEY,
                key        TEXT NOT NULL,
                version    BIGINT NOT NULL,
                attempts   INTEGER NOT NULL DEFAULT 0,
                due_ms     BIGINT NOT NULL,
                missed_ms  BIGINT,
                last_error TEXT,
                created_ms BIGINT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {due} ON {o} (due_ms, seq);
            CREATE INDEX IF NOT EXISTS {by_key} ON {o} (key, version);
            COMMIT;",
            name = self.table
        )
    }
}

/// A PostgreSQL error as ours: lost connections, a server shutting down or out of
/// resources, serialization failures and deadlocks are transient.
fn pg_error(context: String, e: tokio_postgres::Error) -> DualError {
    let transient = e.is_closed()
        || e.code().is_some_and(|c| {
            let code = c.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
        })
        // No code and not closed: the socket failed (an I/O error).
        || (e.code().is_none() && std::error::Error::source(&e).is_some());
    if transient {
        DualError::unavailable(context, e)
    } else {
        DualError::store(context, e)
    }
}

fn corrupt(table: &TableName, key: Option<&str>, reason: impl Into<String>) -> DualError {
    DualError::CorruptRow {
        table: table.to_string(),
        key: key.map(str::to_owned),
        reason: reason.into(),
    }
}

/// Reads `(key, value, version)` at columns 0 to 2, checking each (never panicking on a
/// table of another shape).
fn read_row(table: &TableName, r: &PgRow) -> Result<Row, DualError> {
    let key: String = r
        .try_get(0)
        .map_err(|e| corrupt(table, None, format!("key: {e}")))?;
    let value: Option<Vec<u8>> = r
        .try_get(1)
        .map_err(|e| corrupt(table, Some(&key), format!("value: {e}")))?;
    let version: i64 = r
        .try_get(2)
        .map_err(|e| corrupt(table, Some(&key), format!("version: {e}")))?;
    let version =
        u64::try_from(version).map_err(|_| corrupt(table, Some(&key), "version is negative"))?;
    Ok(Row {
        key,
        value: value.map(Bytes::from),
        version,
    })
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    table: &TableName,
    r: &'a PgRow,
    i: usize,
) -> Result<T, DualError> {
    r.try_get(i)
        .map_err(|e| corrupt(table, None, format!("outbox column {i}: {e}")))
}

impl PostgresRows {
    /// The table `table` in `pool`'s database, creating it and its outbox if need be.
    ///
    /// # Errors
    ///
    /// [`DualError::InvalidTable`] for a bad name; [`DualError::Unavailable`] when the
    /// database cannot be reached; [`DualError::Store`] when the tables cannot be created.
    pub async fn new(pool: Pool, table: &str) -> Result<Self, DualError> {
        super::error::register();
        let sql = Sql::new(TableName::new(table)?);
        let rows = Self {
            pool,
            sql: std::sync::Arc::new(sql),
        };
        let c = rows.conn().await?;
        c.batch_execute(&rows.sql.schema())
            .await
            .map_err(|e| pg_error(format!("create table {}", rows.sql.table), e))?;
        Ok(rows)
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.sql.table
    }

    /// The pool.
    pub const fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn conn(&self) -> Result<Object, DualError> {
        self.pool.get().await.map_err(|e| {
            DualError::unavailable(format!("a connection for table {}", self.sql.table), e)
        })
    }

    fn context(&self, what: &str) -> String {
        format!("{what} on {}", self.sql.table)
    }

    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<PgRow>, DualError> {
        let c = self.conn().await?;
        let q = c
            .prepare_cached(sql)
            .await
            .map_err(|e| pg_error(self.context(what), e))?;
        c.query(&q, params)
            .await
            .map_err(|e| pg_error(self.context(what), e))
    }

    async fn execute(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, DualError> {
        let c = self.conn().await?;
        let q = c
            .prepare_cached(sql)
            .await
            .map_err(|e| pg_error(self.context(what), e))?;
        c.execute(&q, params)
            .await
            .map_err(|e| pg_error(self.context(what), e))
    }
}

impl RowStore for PostgresRows {
    async fn rows(&self, keys: &[String]) -> Result<Vec<Row>, DualError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.query("read rows", &self.sql.rows, &[&keys]).await?;
        rows.iter().map(|r| read_row(&self.sql.table, r)).collect()
    }

    async fn apply(&self, rows: &[Row]) -> Result<Vec<bool>, DualError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let values: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value.as_deref()).collect();
        let versions = rows
            .iter()
            .map(|r| sql_version(&r.key, r.version, &self.sql.table))
            .collect::<Result<Vec<_>, _>>()?;
        let what = format!("apply {} rows", rows.len());
        let stored = self
            .query(&what, &self.sql.apply, &[&keys, &values, &versions])
            .await?;
        let stored: std::collections::HashSet<String> = stored
            .iter()
            .map(|r| get::<String>(&self.sql.table, r, 0))
            .collect::<Result<_, _>>()?;
        Ok(rows.iter().map(|r| stored.contains(&r.key)).collect())
    }

    async fn scan(&self, after: Option<&str>, max: usize) -> Result<Vec<Row>, DualError> {
        let limit = sql_int(max as u64);
        let rows = match after {
            None => {
                self.query("scan rows", &self.sql.scan_first, &[&limit])
                    .await?
            }
            Some(after) => {
                self.query("scan rows", &self.sql.scan_after, &[&after, &limit])
                    .await?
            }
        };
        rows.iter().map(|r| read_row(&self.sql.table, r)).collect()
    }

    async fn replace(
        &self,
        key: &str,
        expected: Option<u64>,
        row: Option<&Row>,
    ) -> Result<bool, DualError> {
        let t = &self.sql.table;
        let n = match (expected, row) {
            (None, None) => 0,
            (None, Some(r)) => {
                let version = sql_version(key, r.version, t)?;
                self.execute(
                    "repair a row",
                    &self.sql.replace_insert,
                    &[&key, &r.value.as_deref(), &version],
                )
                .await?
            }
            (Some(old), Some(r)) => {
                let (version, old) = (sql_version(key, r.version, t)?, sql_version(key, old, t)?);
                self.execute(
                    "repair a row",
                    &self.sql.replace_update,
                    &[&key, &r.value.as_deref(), &version, &old],
                )
                .await?
            }
            (Some(old), None) => {
                let old = sql_version(key, old, t)?;
                self.execute("repair a row", &self.sql.replace_delete, &[&key, &old])
                    .await?
            }
        };
        Ok(n == 1)
    }
}

impl OutboxStore for PostgresRows {
    async fn write(&self, write: &Write, floor: u64, now_ms: u64) -> Result<Written, DualError> {
        let key = write.key();
        let floor = sql_version(key, floor.max(1), &self.sql.table)?;
        let value = write.value().map(|v| &v[..]);
        let rows = self
            .query(
                "write a row",
                &self.sql.write,
                &[&key, &value, &floor, &sql_int(now_ms)],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| DualError::store(self.context("write a row"), "no row returned"))?;
        Ok(Written {
            seq: from_sql_int(get(&self.sql.table, r, 0)?),
            version: from_sql_int(get(&self.sql.table, r, 1)?),
        })
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<Pending>, DualError> {
        let rows = self
            .query(
                "read the outbox",
                &self.sql.due,
                &[&sql_int(now_ms), &sql_int(max as u64)],
            )
            .await?;
        let t = &self.sql.table;
        rows.iter()
            .map(|r| {
                Ok(Pending {
                    seq: from_sql_int(get(t, r, 0)?),
                    key: get(t, r, 1)?,
                    version: from_sql_int(get(t, r, 2)?),
                    attempts: u32::try_from(get::<i32>(t, r, 3)?).unwrap_or(0),
                    missed_since_ms: get::<Option<i64>>(t, r, 4)?.map(from_sql_int),
                })
            })
            .collect()
    }

    async fn settle(&self, delivered: &[(String, u64)]) -> Result<u64, DualError> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = delivered.iter().map(|(k, _)| k.as_str()).collect();
        let versions: Vec<i64> = delivered.iter().map(|(_, v)| sql_int(*v)).collect();
        self.execute(
            "settle outbox entries",
            &self.sql.settle,
            &[&keys, &versions],
        )
        .await
    }

    async fn defer(&self, failed: &[Deferral]) -> Result<(), DualError> {
        if failed.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = failed.iter().map(|d| sql_int(d.seq)).collect();
        let attempts: Vec<i32> = failed
            .iter()
            .map(|d| i32::try_from(d.attempts).unwrap_or(i32::MAX))
            .collect();
        let due: Vec<i64> = failed.iter().map(|d| sql_int(d.due_ms)).collect();
        let missed: Vec<Option<i64>> = failed
            .iter()
            .map(|d| d.missed_since_ms.map(sql_int))
            .collect();
        let errors: Vec<&str> = failed.iter().map(|d| d.error.as_str()).collect();
        self.execute(
            "defer outbox entries",
            &self.sql.defer,
            &[&seqs, &attempts, &due, &missed, &errors],
        )
        .await
        .map(drop)
    }

    async fn missed(&self, max: usize) -> Result<Vec<MissedWrite>, DualError> {
        let rows = self
            .query(
                "list missed writes",
                &self.sql.missed,
                &[&sql_int(max as u64)],
            )
            .await?;
        let t = &self.sql.table;
        rows.iter()
            .map(|r| {
                Ok(MissedWrite {
                    seq: from_sql_int(get(t, r, 0)?),
                    key: get(t, r, 1)?,
                    version: from_sql_int(get(t, r, 2)?),
                    attempts: u32::try_from(get::<i32>(t, r, 3)?).unwrap_or(0),
                    since_ms: from_sql_int(get(t, r, 4)?),
                    last_error: get(t, r, 5)?,
                })
            })
            .collect()
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, DualError> {
        let rows = self
            .query("count the outbox", &self.sql.counts, &[])
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| DualError::store(self.context("count the outbox"), "no row"))?;
        Ok(OutboxCounts {
            pending: from_sql_int(get(&self.sql.table, r, 0)?),
            missed: from_sql_int(get(&self.sql.table, r, 1)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::{Manager, Pool};

    #[tokio::test]
    async fn conforms() {
        let Some(url) = tower_patterns_testkit::fresh_postgres("dual_rows").await else {
            return;
        };
        let config: tokio_postgres::Config = url.parse().unwrap();
        let pool = Pool::builder(Manager::new(config, tokio_postgres::NoTls))
            .max_size(8)
            .build()
            .unwrap();
        // Processes starting together create the tables once, none failing.
        let creators = (0..6).map(|_| super::PostgresRows::new(pool.clone(), "rows"));
        for made in futures_util::future::join_all(creators).await {
            made.unwrap();
        }
        let rows = super::PostgresRows::new(pool.clone(), "rows")
            .await
            .unwrap();
        super::super::conformance::check(&rows).await;
        super::super::conformance::corrupt_rows_are_errors(&rows, async |sql: &str| {
            pool.get().await.unwrap().batch_execute(sql).await.unwrap();
        })
        .await;
    }
}
