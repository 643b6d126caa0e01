//! Checkpoints and dead letters in PostgreSQL: tables `tp_checkpoints` and `tp_dead_letters`,
//! shared with the PostgreSQL read-model target (whose checkpoint rows also carry the lease's
//! lock id).

use deadpool_postgres::Pool;
use tokio_postgres::{GenericClient, Row};
use tower_patterns_core::BoxError;
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::{Checkpoint, CheckpointStore, DeadLetter};

/// The tables. `version` is NULL while the row only names a lease (the PostgreSQL target
/// inserts it to take the lock before the read model exists). Sessions creating the tables
/// at once would collide on the catalog: the advisory lock serialises them.
pub(crate) const SCHEMA: &str = "
DO $$ BEGIN
    PERFORM pg_advisory_xact_lock(7403528);
    CREATE TABLE IF NOT EXISTS tp_checkpoints (
        name       text PRIMARY KEY,
        id         int GENERATED ALWAYS AS IDENTITY UNIQUE,
        commit     bigint NOT NULL DEFAULT 0,
        idx        bigint NOT NULL DEFAULT 0,
        version    int,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS tp_dead_letters (
        name        text   NOT NULL,
        commit      bigint NOT NULL,
        idx         bigint NOT NULL,
        stream      text   NOT NULL,
        version     bigint NOT NULL,
        event_id    uuid   NOT NULL,
        event_type  text   NOT NULL,
        error       text   NOT NULL,
        attempts    int    NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (name, commit, idx)
    );
END $$;
";

/// The CAS update of a checkpoint row: `$1` name, `$2..$4` new (commit, idx, version),
/// `$5..$7` expected. A NULL version counts as 0.
const UPDATE: &str = "UPDATE tp_checkpoints SET commit = $2, idx = $3, version = $4, \
     updated_at = now() WHERE name = $1 AND commit = $5 AND idx = $6 AND COALESCE(version, 0) = $7";

/// The same, when the expected checkpoint is the default one (which a missing row counts as).
const UPSERT: &str = "INSERT INTO tp_checkpoints (name, commit, idx, version) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET commit = EXCLUDED.commit, \
     idx = EXCLUDED.idx, version = EXCLUDED.version, updated_at = now() \
     WHERE tp_checkpoints.commit = $5 AND tp_checkpoints.idx = $6 \
     AND COALESCE(tp_checkpoints.version, 0) = $7";

/// Inserts a dead letter (`$1` name, then the event's columns, error and attempts).
pub(crate) const INSERT_DEAD_LETTER: &str = "INSERT INTO tp_dead_letters \
     (name, commit, idx, stream, version, event_id, event_type, error, attempts) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (name, commit, idx) DO UPDATE SET error = EXCLUDED.error, \
     attempts = EXCLUDED.attempts, recorded_at = now()";

fn to_i64(n: u64, what: &str) -> Result<i64, BoxError> {
    i64::try_from(n).map_err(|_| format!("{what} {n} does not fit a bigint").into())
}

fn to_u64(n: i64, what: &str) -> Result<u64, BoxError> {
    u64::try_from(n).map_err(|_| format!("stored {what} {n} is negative").into())
}

/// A position as the two bigint columns `commit`, `idx`.
pub(crate) fn position_params(p: GlobalPosition) -> Result<(i64, i64), BoxError> {
    Ok((to_i64(p.commit, "commit")?, to_i64(p.index, "index")?))
}

/// A position from the two bigint columns `commit`, `idx`.
pub(crate) fn position_of(commit: i64, idx: i64) -> Result<GlobalPosition, BoxError> {
    Ok(GlobalPosition::new(
        to_u64(commit, "commit")?,
        to_u64(idx, "index")?,
    ))
}

fn version_param(v: u32) -> Result<i32, BoxError> {
    i32::try_from(v).map_err(|_| format!("version {v} does not fit an int").into())
}

/// Stores `new` for `name` if the stored checkpoint is `expected`; false when it is not.
pub(crate) async fn compare_and_set<C: GenericClient + Sync>(
    client: &C,
    name: &str,
    expected: Checkpoint,
    new: Checkpoint,
) -> Result<bool, BoxError> {
    let (nc, ni) = position_params(new.position)?;
    let (ec, ei) = position_params(expected.position)?;
    let (nv, ev) = (
        version_param(new.version)?,
        version_param(expected.version)?,
    );
    let sql = if expected == Checkpoint::default() {
        UPSERT
    } else {
        UPDATE
    };
    let n = client
        .execute(sql, &[&name, &nc, &ni, &nv, &ec, &ei, &ev])
        .await?;
    Ok(n == 1)
}

/// Inserts the dead letter of `event` for `name`.
pub(crate) async fn insert_dead_letter<C: GenericClient + Sync>(
    client: &C,
    name: &str,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> Result<(), BoxError> {
    let (c, i) = position_params(event.position)?;
    let version = to_i64(event.version, "version")?;
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    client
        .execute(
            INSERT_DEAD_LETTER,
            &[
                &name,
                &c,
                &i,
                &event.stream_id,
                &version,
                &event.id,
                &event.event_type,
                &error,
                &attempts,
            ],
        )
        .await?;
    Ok(())
}

/// The dead letters of `name`, oldest position first.
pub(crate) async fn dead_letters<C: GenericClient + Sync>(
    client: &C,
    name: &str,
) -> Result<Vec<DeadLetter>, BoxError> {
    let rows = client
        .query(
            "SELECT name, commit, idx, stream, version, event_id, event_type, error, attempts \
             FROM tp_dead_letters WHERE name = $1 ORDER BY commit, idx",
            &[&name],
        )
        .await?;
    rows.iter().map(dead_letter_of).collect()
}

fn dead_letter_of(row: &Row) -> Result<DeadLetter, BoxError> {
    Ok(DeadLetter {
        name: row.try_get(0)?,
        position: position_of(row.try_get(1)?, row.try_get(2)?)?,
        stream: row.try_get(3)?,
        version: to_u64(row.try_get(4)?, "version")?,
        event_id: row.try_get(5)?,
        event_type: row.try_get(6)?,
        error: row.try_get(7)?,
        attempts: u32::try_from(row.try_get::<_, i32>(8)?).unwrap_or(0),
    })
}

/// Checkpoints in PostgreSQL (table `tp_checkpoints`, dead letters in `tp_dead_letters`): for
/// external projections and the outbox relay whose effects live elsewhere.
///
/// ```no_run
/// use tower_patterns_cqrs::{Checkpoint, CheckpointStore, checkpoint::PostgresCheckpoints};
///
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), tower_patterns_core::BoxError> {
/// let checkpoints = PostgresCheckpoints::new(pool).await?; // creates the tables when missing
/// let stored = checkpoints.load("relay").await?.unwrap_or_default();
/// let next = Checkpoint { position: tower_patterns_eventstore::GlobalPosition::new(1, 42), ..stored };
/// assert!(checkpoints.save("relay", stored, next).await?); // false: another relay moved it
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresCheckpoints {
    pool: Pool,
}

impl std::fmt::Debug for PostgresCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCheckpoints")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PostgresCheckpoints {
    /// Checkpoints in `pool`'s database, creating the tables when missing.
    ///
    /// # Errors
    ///
    /// The database cannot be reached or the tables cannot be created.
    pub async fn new(pool: Pool) -> Result<Self, BoxError> {
        pool.get().await?.batch_execute(SCHEMA).await?;
        Ok(Self { pool })
    }

    /// The dead letters of `name`, in log order.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, BoxError> {
        dead_letters(&**self.pool.get().await?, name).await
    }
}

impl CheckpointStore for PostgresCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, BoxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT commit, idx, version FROM tp_checkpoints \
                 WHERE name = $1 AND version IS NOT NULL",
                &[&name],
            )
            .await?;
        row.map(|r| {
            Ok(Checkpoint {
                position: position_of(r.try_get(0)?, r.try_get(1)?)?,
                version: u32::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0),
            })
        })
        .transpose()
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        compare_and_set(&**self.pool.get().await?, name, expected, new).await
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
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !compare_and_set(&*tx, name, expected, new).await? {
            return Ok(false); // dropped: rolled back
        }
        insert_dead_letter(&*tx, name, event, error, attempts).await?;
        tx.commit().await?;
        Ok(true)
    }
}
