//! The inbox: drops a repeated delivery by event id, inside the effect's own transaction.
//!
//! An effect that lives outside the checkpoint's database (an external projection, a JetStream
//! consumer) is delivered *at least once*: a crash between the effect and the checkpoint
//! delivers the event again. When the effect itself is a database write, record the event's id
//! in the same transaction: the row `(consumer, event_id)` of table `tp_inbox` is inserted with
//! `ON CONFLICT DO NOTHING`, and zero rows inserted means the event was handled before, so the
//! effect is skipped. The effect and the inbox row commit or roll back together: each event
//! takes effect once per consumer.
//!
//! The photo feed's like counter, kept by a consumer of the bus, in SQLite:
//!
//! ```
//! use tower_patterns_cqrs::inbox::Inbox;
//!
//! # fn main() -> Result<(), rusqlite::Error> {
//! let mut db = rusqlite::Connection::open_in_memory()?;
//! Inbox::create_sqlite(&db)?;
//! db.execute_batch("CREATE TABLE likes (post TEXT PRIMARY KEY, n INTEGER NOT NULL)")?;
//!
//! let inbox = Inbox::new("like_counter");
//! let liked = uuid::Uuid::now_v7(); // the event's id, as delivered
//! for _delivery in 0..2 {
//!     let tx = db.transaction()?;
//!     if inbox.first_sqlite(&tx, liked)? {
//!         tx.execute(
//!             "INSERT INTO likes VALUES ('p1', 1) ON CONFLICT (post) DO UPDATE SET n = n + 1",
//!             [],
//!         )?;
//!     }
//!     tx.commit()?;
//! }
//! let n: i64 = db.query_row("SELECT n FROM likes WHERE post = 'p1'", [], |r| r.get(0))?;
//! assert_eq!(n, 1); // the second delivery was dropped
//! # Ok(()) }
//! ```
//!
//! The inbox grows by one row per event and consumer: prune rows older than any redelivery can
//! be (`Inbox::prune_sqlite`, `Inbox::prune_postgres`; a JetStream consumer's redeliveries
//! stop after `max_deliver` attempts, a relay's after its restart), for example daily with a
//! week's margin.

use std::sync::Arc;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use uuid::Uuid;

/// The SQLite table (one row per consumer and event; `received_at` in microseconds since the
/// Unix epoch).
#[cfg(feature = "sqlite")]
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_inbox (
    consumer    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tp_inbox_received ON tp_inbox (consumer, received_at);
";

/// The PostgreSQL table. Sessions creating it at once would collide on the catalog: the
/// advisory lock serialises them (`DO` runs as one statement, in the caller's transaction if
/// there is one).
#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "
DO $$ BEGIN
    PERFORM pg_advisory_xact_lock(7403528);
    CREATE TABLE IF NOT EXISTS tp_inbox (
        consumer    text   NOT NULL,
        event_id    uuid   NOT NULL,
        received_at bigint NOT NULL,
        PRIMARY KEY (consumer, event_id)
    );
    CREATE INDEX IF NOT EXISTS tp_inbox_received ON tp_inbox (consumer, received_at);
END $$;
";

/// Drops repeated deliveries of events to one consumer; see the [module docs](self).
///
/// Cheap to clone. The consumer's name keeps the rows of several consumers of the same event
/// apart in one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbox {
    consumer: Arc<str>,
}

impl Inbox {
    /// The inbox of consumer `consumer` (a projection's or a durable consumer's name).
    pub fn new(consumer: impl Into<Arc<str>>) -> Self {
        Self {
            consumer: consumer.into(),
        }
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn cutoff(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
}

#[cfg(feature = "sqlite")]
impl Inbox {
    /// Creates table `tp_inbox` in `conn` if it is missing.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn create_sqlite(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
        conn.execute_batch(SQLITE_SCHEMA)
    }

    /// Records `event_id` for this consumer in `tx`: `true` the first time (apply the effect in
    /// the same transaction), `false` for a repeat (skip it). Commit `tx` after the effect.
    ///
    /// # Errors
    ///
    /// The database's (a missing table: call [`create_sqlite`](Self::create_sqlite) first).
    pub fn first_sqlite(
        &self,
        tx: &rusqlite::Transaction<'_>,
        event_id: Uuid,
    ) -> Result<bool, rusqlite::Error> {
        let inserted = tx.execute(
            "INSERT INTO tp_inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
            rusqlite::params![
                &*self.consumer,
                event_id.hyphenated().to_string(),
                micros(SystemTime::now())
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Deletes this consumer's rows recorded more than `age` ago; returns how many.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn prune_sqlite(
        &self,
        conn: &rusqlite::Connection,
        age: Duration,
    ) -> Result<usize, rusqlite::Error> {
        self.prune_sqlite_before(conn, cutoff(age))
    }

    /// Deletes this consumer's rows recorded before `before`; returns how many.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn prune_sqlite_before(
        &self,
        conn: &rusqlite::Connection,
        before: SystemTime,
    ) -> Result<usize, rusqlite::Error> {
        conn.execute(
            "DELETE FROM tp_inbox WHERE consumer = ?1 AND received_at < ?2",
            rusqlite::params![&*self.consumer, micros(before)],
        )
    }
}

#[cfg(feature = "postgres")]
impl Inbox {
    /// Creates table `tp_inbox` if it is missing (safe to run from several sessions at once).
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn create_postgres<C>(client: &C) -> Result<(), tokio_postgres::Error>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        client.batch_execute(POSTGRES_SCHEMA).await
    }

    /// Records `event_id` for this consumer in `tx` (the effect's transaction): `true` the
    /// first time (apply the effect in the same transaction), `false` for a repeat (skip it).
    ///
    /// Two deliveries racing in two transactions: the second waits on the first's row and
    /// gets `false` once the first commits (or `true` if it rolls back).
    ///
    /// # Errors
    ///
    /// The database's (a missing table: call [`create_postgres`](Self::create_postgres)
    /// first).
    pub async fn first_postgres<C>(
        &self,
        tx: &C,
        event_id: Uuid,
    ) -> Result<bool, tokio_postgres::Error>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        let inserted = tx
            .execute(
                "INSERT INTO tp_inbox (consumer, event_id, received_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
                &[&&*self.consumer, &event_id, &micros(SystemTime::now())],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Deletes this consumer's rows recorded more than `age` ago; returns how many.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn prune_postgres<C>(
        &self,
        client: &C,
        age: Duration,
    ) -> Result<u64, tokio_postgres::Error>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        self.prune_postgres_before(client, cutoff(age)).await
    }

    /// Deletes this consumer's rows recorded before `before`; returns how many.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn prune_postgres_before<C>(
        &self,
        client: &C,
        before: SystemTime,
    ) -> Result<u64, tokio_postgres::Error>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        client
            .execute(
                "DELETE FROM tp_inbox WHERE consumer = $1 AND received_at < $2",
                &[&&*self.consumer, &micros(before)],
            )
            .await
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    fn db() -> rusqlite::Connection {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        Inbox::create_sqlite(&db).unwrap();
        Inbox::create_sqlite(&db).unwrap(); // idempotent
        db
    }

    #[test]
    fn a_repeat_is_dropped_per_consumer_and_a_rolled_back_delivery_is_not_remembered() {
        let mut db = db();
        let (search, cache) = (Inbox::new("search"), Inbox::new("cache"));
        let id = Uuid::now_v7();
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, id).unwrap());
        assert!(!search.first_sqlite(&tx, id).unwrap());
        assert!(cache.first_sqlite(&tx, id).unwrap(), "another consumer");
        tx.commit().unwrap();

        let other = Uuid::now_v7();
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, other).unwrap());
        drop(tx); // rolled back: the effect did not happen either
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, other).unwrap());
        assert!(!search.first_sqlite(&tx, id).unwrap());
        tx.commit().unwrap();
        assert_eq!(search.consumer(), "search");
    }

    #[test]
    fn pruning_deletes_only_old_rows_of_its_consumer() {
        let mut db = db();
        let (search, cache) = (Inbox::new("search"), Inbox::new("cache"));
        let id = Uuid::now_v7();
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, id).unwrap());
        assert!(cache.first_sqlite(&tx, id).unwrap());
        tx.commit().unwrap();
        assert_eq!(search.prune_sqlite_before(&db, UNIX_EPOCH).unwrap(), 0);
        assert_eq!(
            search.prune_sqlite(&db, Duration::from_secs(3600)).unwrap(),
            0
        );
        let later = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(search.prune_sqlite_before(&db, later).unwrap(), 1);
        let tx = db.transaction().unwrap();
        assert!(
            search.first_sqlite(&tx, id).unwrap(),
            "pruned: a delivery counts again"
        );
        assert!(
            !cache.first_sqlite(&tx, id).unwrap(),
            "the other consumer kept its row"
        );
        tx.commit().unwrap();
        assert_eq!(cache.prune_sqlite_before(&db, later).unwrap(), 1);

        // By age: a row recorded two hours ago goes, a fresh one stays.
        let (old, fresh) = (Uuid::now_v7(), Uuid::now_v7());
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, old).unwrap());
        assert!(search.first_sqlite(&tx, fresh).unwrap());
        tx.execute(
            "UPDATE tp_inbox SET received_at = received_at - 7200000000 WHERE event_id = ?1",
            [old.hyphenated().to_string()],
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            search.prune_sqlite(&db, Duration::from_secs(3600)).unwrap(),
            1
        );
        let tx = db.transaction().unwrap();
        assert!(search.first_sqlite(&tx, old).unwrap(), "pruned");
        assert!(!search.first_sqlite(&tx, fresh).unwrap(), "kept");
        assert_eq!(micros(UNIX_EPOCH), 0);
        assert_eq!(cutoff(Duration::MAX), UNIX_EPOCH);
    }
}
