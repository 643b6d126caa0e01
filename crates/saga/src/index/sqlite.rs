//! The index in a SQLite file.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tower_patterns_core::BoxError;

use super::{Claim, IndexEntry, SagaIndex, status_word};
use crate::{SagaId, SagaStatus};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_sagas (
    saga_id     TEXT PRIMARY KEY,
    saga_type   TEXT NOT NULL,
    status      TEXT NOT NULL,
    owner       TEXT,
    lease_until INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tp_sagas_due ON tp_sagas (status, lease_until);
";

/// A [`SagaIndex`] in a SQLite file (WAL mode, every change synced): one orchestrator
/// process on one machine. Keep it in its own file beside the event store's (`sagas.db`
/// next to `events.db`), so the two never wait for each other's write lock. Cloning shares
/// the connection.
#[derive(Clone)]
pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIndex").finish_non_exhaustive()
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn saga_id(s: String) -> rusqlite::Result<SagaId> {
    SagaId::new(s).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(0, "saga_id".into(), rusqlite::types::Type::Text)
    })
}

impl SqliteIndex {
    /// Opens (creating if need be) the index in the file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BoxError> {
        Self::with(
            Connection::open(path)?,
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
        )
    }

    /// An index in memory (gone with the last clone).
    ///
    /// # Errors
    ///
    /// When SQLite cannot create it.
    pub fn in_memory() -> Result<Self, BoxError> {
        Self::with(Connection::open_in_memory()?, "")
    }

    fn with(conn: Connection, pragmas: &str) -> Result<Self, BoxError> {
        conn.execute_batch(&format!("{pragmas} PRAGMA busy_timeout = 5000; {SCHEMA}"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BoxError> {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await??;
        Ok(out)
    }
}

impl SagaIndex for SqliteIndex {
    async fn register(
        &self,
        id: &SagaId,
        saga_type: &str,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<bool, BoxError> {
        let (id, saga_type, owner) = (id.to_string(), saga_type.to_owned(), owner.to_owned());
        self.run(move |c| {
            c.prepare_cached(
                "INSERT INTO tp_sagas (saga_id, saga_type, status, owner, lease_until, updated_at) \
                 VALUES (?1, ?2, 'open', ?3, ?4, ?5) ON CONFLICT (saga_id) DO NOTHING",
            )?
            .execute(params![id, saga_type, owner, i(lease_until), i(now)])
            .map(|n| n == 1)
        })
        .await
    }

    async fn claim(
        &self,
        owner: &str,
        now: u64,
        lease_until: u64,
        max: usize,
        reclaim_own: bool,
    ) -> Result<Vec<Claim>, BoxError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let due = {
                let mut q = tx.prepare_cached(
                    "SELECT saga_id, owner FROM tp_sagas WHERE status = 'open' \
                     AND (lease_until <= ?1 OR (?3 AND owner = ?4)) \
                     ORDER BY lease_until, saga_id LIMIT ?2",
                )?;
                let rows = q.query_map(
                    params![
                        i(now),
                        i64::try_from(max).unwrap_or(i64::MAX),
                        reclaim_own,
                        owner
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut claims = Vec::with_capacity(due.len());
            {
                let mut update = tx.prepare_cached(
                    "UPDATE tp_sagas SET owner = ?2, lease_until = ?3 WHERE saga_id = ?1",
                )?;
                for (id, previous) in due {
                    update.execute(params![id, owner, i(lease_until)])?;
                    claims.push(Claim {
                        id: saga_id(id)?,
                        previous_owner: previous.filter(|p| *p != owner),
                    });
                }
            }
            tx.commit()?;
            Ok(claims)
        })
        .await
    }

    async fn claim_one(
        &self,
        id: &SagaId,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Claim>, BoxError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let previous: Option<Option<String>> = tx
                .prepare_cached(
                    "SELECT owner FROM tp_sagas WHERE saga_id = ?1 AND status IN ('open', 'stuck') \
                     AND (lease_until <= ?2 OR owner = ?3)",
                )?
                .query_row(params![id.as_str(), i(now), owner], |r| r.get(0))
                .optional()?;
            let Some(previous) = previous else {
                return Ok(None);
            };
            tx.prepare_cached(
                "UPDATE tp_sagas SET owner = ?2, lease_until = ?3 WHERE saga_id = ?1",
            )?
            .execute(params![id.as_str(), owner, i(lease_until)])?;
            tx.commit()?;
            Ok(Some(Claim {
                id,
                previous_owner: previous.filter(|p| *p != owner),
            }))
        })
        .await
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[SagaId],
        _now: u64,
        lease_until: u64,
    ) -> Result<Vec<SagaId>, BoxError> {
        let owner = owner.to_owned();
        let ids = serde_json::to_string(&ids.iter().map(SagaId::as_str).collect::<Vec<_>>())?;
        self.run(move |c| {
            let mut q = c.prepare_cached(
                "UPDATE tp_sagas SET lease_until = ?2 WHERE owner = ?1 AND status = 'open' \
                 AND saga_id IN (SELECT value FROM json_each(?3)) RETURNING saga_id",
            )?;
            let rows = q.query_map(params![owner, i(lease_until), ids], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|r| r.and_then(saga_id)).collect()
        })
        .await
    }

    async fn set_status(&self, id: &SagaId, status: SagaStatus, now: u64) -> Result<(), BoxError> {
        let (id, word) = (id.to_string(), status_word(status));
        self.run(move |c| {
            let sql = if word == "open" {
                "UPDATE tp_sagas SET status = ?2, updated_at = ?3 WHERE saga_id = ?1"
            } else {
                "UPDATE tp_sagas SET status = ?2, updated_at = ?3, owner = NULL, lease_until = 0 \
                 WHERE saga_id = ?1"
            };
            c.prepare_cached(sql)?
                .execute(params![id, word, i(now)])
                .map(drop)
        })
        .await
    }

    async fn remove(&self, id: &SagaId) -> Result<(), BoxError> {
        let id = id.to_string();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM tp_sagas WHERE saga_id = ?1")?
                .execute(params![id])
                .map(drop)
        })
        .await
    }

    async fn release(&self, id: &SagaId, owner: &str) -> Result<(), BoxError> {
        let (id, owner) = (id.to_string(), owner.to_owned());
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE tp_sagas SET lease_until = 0 WHERE saga_id = ?1 AND owner = ?2",
            )?
            .execute(params![id, owner])
            .map(drop)
        })
        .await
    }

    async fn list(&self, status: &str, max: usize) -> Result<Vec<IndexEntry>, BoxError> {
        let status = status.to_owned();
        self.run(move |c| {
            let mut q = c.prepare_cached(
                "SELECT saga_id, saga_type, status, owner, updated_at FROM tp_sagas \
                 WHERE status = ?1 ORDER BY updated_at, saga_id LIMIT ?2",
            )?;
            let rows = q.query_map(
                params![status, i64::try_from(max).unwrap_or(i64::MAX)],
                |r| {
                    Ok(IndexEntry {
                        id: saga_id(r.get(0)?)?,
                        saga_type: r.get(1)?,
                        status: r.get(2)?,
                        owner: r.get(3)?,
                        updated_ms: u(r.get(4)?),
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms_in_memory_and_in_a_file() {
        super::super::conformance::check(&super::SqliteIndex::in_memory().unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sagas.db");
        super::super::conformance::check(&super::SqliteIndex::open(&path).unwrap()).await;
        // Reopened, the file still knows its sagas.
        let again = super::SqliteIndex::open(&path).unwrap();
        assert_eq!(
            super::SagaIndex::list(&again, "stuck", 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
