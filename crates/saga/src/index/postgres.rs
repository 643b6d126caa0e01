//! The index on PostgreSQL, shared by several orchestrator processes.

use deadpool_postgres::Pool;
use tower_patterns_core::BoxError;

use super::{Claim, IndexEntry, SagaIndex, status_word};
use crate::{SagaId, SagaStatus};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_sagas (
    saga_id     TEXT PRIMARY KEY,
    saga_type   TEXT NOT NULL,
    status      TEXT NOT NULL,
    owner       TEXT,
    lease_until BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS tp_sagas_due ON tp_sagas (status, lease_until);
";

/// A [`SagaIndex`] on PostgreSQL: orchestrator processes sharing one database each lease a
/// disjoint set of sagas. A claim locks the rows it takes with `FOR UPDATE SKIP LOCKED`, so
/// two claimers never wait for each other nor take the same saga; a process that dies stops
/// renewing, and its sagas are claimed by the others once their leases expire.
#[derive(Clone)]
pub struct PostgresIndex {
    pool: Pool,
}

impl std::fmt::Debug for PostgresIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIndex").finish_non_exhaustive()
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn id_of(s: String) -> Result<SagaId, BoxError> {
    SagaId::new(s).ok_or_else(|| "a saga id in tp_sagas is empty or too long".into())
}

impl PostgresIndex {
    /// The index in `pool`'s database (the event store's, with `PostgresStore::pool`),
    /// creating its table if need be.
    ///
    /// # Errors
    ///
    /// When the database cannot be reached or the table cannot be created.
    pub async fn new(pool: Pool) -> Result<Self, BoxError> {
        // Processes starting together would race `CREATE TABLE IF NOT EXISTS` (one fails
        // on the catalog's unique index): the first takes a lock, the others wait for it.
        pool.get()
            .await?
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('tp_sagas')); {SCHEMA} COMMIT;"
            ))
            .await?;
        Ok(Self { pool })
    }
}

impl SagaIndex for PostgresIndex {
    async fn register(
        &self,
        id: &SagaId,
        saga_type: &str,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<bool, BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached(
                "INSERT INTO tp_sagas (saga_id, saga_type, status, owner, lease_until, updated_at) \
                 VALUES ($1, $2, 'open', $3, $4, $5) ON CONFLICT (saga_id) DO NOTHING",
            )
            .await?;
        let n = c
            .execute(
                &q,
                &[&id.as_str(), &saga_type, &owner, &i(lease_until), &i(now)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn claim(
        &self,
        owner: &str,
        now: u64,
        lease_until: u64,
        max: usize,
        reclaim_own: bool,
    ) -> Result<Vec<Claim>, BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached(
                "WITH due AS ( \
                   SELECT saga_id, owner FROM tp_sagas \
                   WHERE status = 'open' AND (lease_until <= $2 OR ($5 AND owner = $1)) \
                   ORDER BY lease_until, saga_id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE tp_sagas s SET owner = $1, lease_until = $3 FROM due \
                 WHERE s.saga_id = due.saga_id RETURNING s.saga_id, due.owner",
            )
            .await?;
        let rows = c
            .query(
                &q,
                &[
                    &owner,
                    &i(now),
                    &i(lease_until),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                    &reclaim_own,
                ],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let previous: Option<String> = r.get(1);
                Ok(Claim {
                    id: id_of(r.get(0))?,
                    previous_owner: previous.filter(|p| p != owner),
                })
            })
            .collect()
    }

    async fn claim_one(
        &self,
        id: &SagaId,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Claim>, BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached(
                "WITH one AS ( \
                   SELECT saga_id, owner FROM tp_sagas \
                   WHERE saga_id = $1 AND status IN ('open', 'stuck') \
                     AND (lease_until <= $3 OR owner = $2) \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE tp_sagas s SET owner = $2, lease_until = $4 FROM one \
                 WHERE s.saga_id = one.saga_id RETURNING one.owner",
            )
            .await?;
        let row = c
            .query_opt(&q, &[&id.as_str(), &owner, &i(now), &i(lease_until)])
            .await?;
        Ok(row.map(|r| {
            let previous: Option<String> = r.get(0);
            Claim {
                id: id.clone(),
                previous_owner: previous.filter(|p| p != owner),
            }
        }))
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[SagaId],
        _now: u64,
        lease_until: u64,
    ) -> Result<Vec<SagaId>, BoxError> {
        let ids: Vec<&str> = ids.iter().map(SagaId::as_str).collect();
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached(
                "UPDATE tp_sagas SET lease_until = $2 WHERE owner = $1 AND status = 'open' \
                 AND saga_id = ANY($3) RETURNING saga_id",
            )
            .await?;
        c.query(&q, &[&owner, &i(lease_until), &ids])
            .await?
            .into_iter()
            .map(|r| id_of(r.get(0)))
            .collect()
    }

    async fn set_status(&self, id: &SagaId, status: SagaStatus, now: u64) -> Result<(), BoxError> {
        let word = status_word(status);
        let c = self.pool.get().await?;
        let sql = if word == "open" {
            "UPDATE tp_sagas SET status = $2, updated_at = $3 WHERE saga_id = $1"
        } else {
            "UPDATE tp_sagas SET status = $2, updated_at = $3, owner = NULL, lease_until = 0 \
             WHERE saga_id = $1"
        };
        let q = c.prepare_cached(sql).await?;
        c.execute(&q, &[&id.as_str(), &word, &i(now)]).await?;
        Ok(())
    }

    async fn remove(&self, id: &SagaId) -> Result<(), BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached("DELETE FROM tp_sagas WHERE saga_id = $1")
            .await?;
        c.execute(&q, &[&id.as_str()]).await?;
        Ok(())
    }

    async fn release(&self, id: &SagaId, owner: &str) -> Result<(), BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached("UPDATE tp_sagas SET lease_until = 0 WHERE saga_id = $1 AND owner = $2")
            .await?;
        c.execute(&q, &[&id.as_str(), &owner]).await?;
        Ok(())
    }

    async fn list(&self, status: &str, max: usize) -> Result<Vec<IndexEntry>, BoxError> {
        let c = self.pool.get().await?;
        let q = c
            .prepare_cached(
                "SELECT saga_id, saga_type, status, owner, updated_at FROM tp_sagas \
                 WHERE status = $1 ORDER BY updated_at, saga_id LIMIT $2",
            )
            .await?;
        c.query(&q, &[&status, &i64::try_from(max).unwrap_or(i64::MAX)])
            .await?
            .into_iter()
            .map(|r| {
                Ok(IndexEntry {
                    id: id_of(r.get(0))?,
                    saga_type: r.get(1),
                    status: r.get(2),
                    owner: r.get(3),
                    updated_ms: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        let Some(url) = tower_patterns_testkit::fresh_postgres("saga_index").await else {
            return;
        };
        let pool = tower_patterns_eventstore::postgres::PostgresStore::connect(&url, 8)
            .await
            .unwrap()
            .pool()
            .clone();
        // Processes starting together create the table once, none failing.
        let creators = (0..8).map(|_| super::PostgresIndex::new(pool.clone()));
        for made in futures_util::future::join_all(creators).await {
            made.unwrap();
        }
        let index = super::PostgresIndex::new(pool).await.unwrap();
        super::super::conformance::check(&index).await;
    }
}
