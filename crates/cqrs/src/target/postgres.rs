//! A read model in PostgreSQL, checkpointed in the same transaction, one runner per
//! projection across processes: see [`PostgresTarget`].

use std::{fmt, sync::Arc, time::Duration};

use deadpool_postgres::{ClientWrapper, Object, Pool, Transaction};
use tokio_postgres::GenericClient;
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::{Applied, Slot, Stored, Target};
use crate::{
    checkpoint::postgres::{self as rows, SCHEMA, position_of, position_params},
    projection::{
        ApplyError, NoTarget, PostgresProjection, ProjectionBuilder, ProjectionError, Tables,
    },
};

/// The advisory lock's first key (its second is the checkpoint row's id).
pub(crate) const LEASE_CLASS: i32 = 7_403_527;

const DEFAULT_LEASE_POLL: Duration = Duration::from_secs(1);
const MIN_LEASE_POLL: Duration = Duration::from_millis(10);
const MAX_LEASE_POLL: Duration = Duration::from_secs(60);

/// The target of a PostgreSQL read model: set with [`ProjectionBuilder::postgres`]. The read
/// model and its checkpoint (table `tp_checkpoints`) commit in one transaction, so each event
/// takes effect once.
///
/// # One runner per projection
///
/// Every process may run the same projections against one database; each projection is driven
/// by one of them at a time. The runner takes a connection out of the pool for itself (a
/// session-level lock must never go back to a pool) and tries
/// `pg_try_advisory_lock(7403527, id)`, where `id` is the number of the projection's row in
/// `tp_checkpoints`, every [`lease_poll`](ProjectionBuilder::lease_poll) (1 s by default)
/// until it holds it; meanwhile its handle shows [`Status::Standby`](crate::Status::Standby).
/// The session is named `tp-projection <pid> <projection>` (`pg_stat_activity`), so
/// `pg_locks` tells which process holds a lease. The holder runs every transaction of the
/// projection on that same connection, so the lock and the right to write end together:
///
/// - a process that exits or is killed closes its socket, PostgreSQL ends the session and
///   releases the lock at once, and a standby takes over within `lease_poll`, from the
///   checkpoint;
/// - a client that vanishes without closing its socket (a host down, a network cut) is found
///   by TCP keepalives, which the runner sets on its session to 5 s idle, then 3 probes 2 s
///   apart;
/// - a holder that finds its connection closed stops writing and waits for the lease again
///   (an idle holder notices at its next batch).
///
/// Each batch is one transaction that first locks the projection's checkpoint row and checks
/// it stands where the runner expects, and last moves it (compare-and-set): a runner that
/// lost the lease without noticing cannot write, even in the instant before it notices.
///
/// A failing event: the batch runs without a savepoint per event (two round trips fewer per
/// event); when event `k` fails the transaction rolls back, events `0..k` are applied again in
/// a new one and committed with their checkpoint, and `k`'s error goes to the failure policy:
/// the outcome of a savepoint per event, paid only on failure.
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use tokio_postgres::Transaction;
/// use tower_patterns_cqrs::{ApplyError, PostgresProjection, Projection, Tables};
/// use tower_patterns_eventstore::{RecordedEvent, postgres::PostgresStore};
///
/// /// The product catalog's prices.
/// struct Prices;
///
/// #[derive(serde::Deserialize)]
/// struct PriceUpdated {
///     id: String,
///     price: i64,
/// }
///
/// impl PostgresProjection for Prices {
///     async fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
///         let sql = format!("CREATE TABLE {} (id text PRIMARY KEY, price bigint)", t.name("prices"));
///         tx.batch_execute(&sql).await?;
///         Ok(())
///     }
///
///     async fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
///         if e.event_type != "PriceUpdated" {
///             return Ok(());
///         }
///         let p: PriceUpdated = e.decode()?;
///         let sql = format!(
///             "INSERT INTO {} VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET price = EXCLUDED.price",
///             t.name("prices")
///         );
///         tx.execute(&sql, &[&p.id, &p.price]).await?;
///         Ok(())
///     }
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(PostgresStore::connect("postgres://app@db/app", 8).await?);
/// // Run this in every process: one of them drives the projection at a time.
/// let (handle, _task) = Projection::builder("prices")
///     .source(store.clone())
///     .postgres(store.pool().clone(), Prices) // the read model beside the events
///     .lease_poll(Duration::from_millis(500))
///     .build()?
///     .spawn();
/// # let _ = handle; Ok(()) }
/// ```
pub struct PostgresTarget<P> {
    pool: Pool,
    projection: Arc<P>,
    lease: bool,
    lease_poll: Duration,
    client: Option<ClientWrapper>,
}

impl<P> fmt::Debug for PostgresTarget<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("lease", &self.lease)
            .field("lease_poll", &self.lease_poll)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl<Src> ProjectionBuilder<Src, NoTarget> {
    /// Keeps the read model (and its checkpoint, in `tp_checkpoints`) in `pool`'s database,
    /// one runner at a time across processes (see [`lease_poll`](ProjectionBuilder::lease_poll)).
    /// The pool may be the event store's ([`PostgresStore::pool`]): the runner takes one
    /// connection out of it for itself.
    ///
    /// [`PostgresStore::pool`]: tower_patterns_eventstore::postgres::PostgresStore::pool
    pub fn postgres<P: PostgresProjection>(
        self,
        pool: Pool,
        projection: P,
    ) -> ProjectionBuilder<Src, PostgresTarget<P>> {
        self.with_target(PostgresTarget {
            pool,
            projection: Arc::new(projection),
            lease: true,
            lease_poll: DEFAULT_LEASE_POLL,
            client: None,
        })
    }
}

impl<Src, P> ProjectionBuilder<Src, PostgresTarget<P>> {
    /// How often a standby runner tries to take the lease (default 1 s; kept between 10 ms
    /// and 60 s): after the holder dies, the projection waits up to this long.
    #[must_use]
    pub fn lease_poll(mut self, every: Duration) -> Self {
        self.target.lease_poll = every.clamp(MIN_LEASE_POLL, MAX_LEASE_POLL);
        self
    }

    /// Whether runners take the lease (default `true`). Without it every process drives the
    /// projection at once: the compare-and-set checkpoint still applies each event once, but
    /// all but one runner's work is rolled back. For a single process that wants no lock.
    #[must_use]
    pub fn lease(mut self, on: bool) -> Self {
        self.target.lease = on;
        self
    }
}

fn fenced(slot: &str) -> ProjectionError {
    ProjectionError::Fenced {
        projection: slot.to_owned(),
    }
}

/// A database error as the runner sees it: a closed connection is a lost lease.
fn db(e: impl Into<tower_patterns_core::BoxError>) -> ProjectionError {
    ProjectionError::database(e)
}

/// Why a connection could not be set up.
enum Lost {
    /// The database cannot be reached now: try again.
    Unreachable(ProjectionError),
    /// The database refused (rights, a broken schema): trying again will not help.
    Refused(ProjectionError),
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops every table, view and sequence of the current schema whose name starts with
/// `prefix` (with what depends on them).
async fn drop_prefix<C: GenericClient + Sync>(
    client: &C,
    prefix: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
             AND left(c.relname, length($1)) = $1 \
             ORDER BY c.relkind = 'S', c.relkind IN ('r', 'p', 'f')",
            &[&prefix],
        )
        .await?;
    for row in rows {
        let (name, kind): (String, String) = (row.get(0), row.get(1));
        let what = match kind.as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "f" => "FOREIGN TABLE",
            "S" => "SEQUENCE",
            _ => "TABLE",
        };
        client
            .batch_execute(&format!("DROP {what} IF EXISTS {} CASCADE", quote(&name)))
            .await?;
    }
    Ok(())
}

/// The checkpoint of `name`, locked for this transaction.
async fn lock_row(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<(GlobalPosition, Option<i32>)>, ProjectionError> {
    let stmt = tx
        .prepare_cached(
            "SELECT commit, idx, version FROM tp_checkpoints WHERE name = $1 FOR UPDATE",
        )
        .await?;
    let row = tx.query_opt(&stmt, &[&name]).await?;
    row.map(|r| Ok((position_of(r.get(0), r.get(1)).map_err(db)?, r.get(2))))
        .transpose()
}

/// Fails with `Fenced` unless `name`'s checkpoint stands at `expected` (and locks it).
async fn check(
    tx: &Transaction<'_>,
    name: &str,
    expected: GlobalPosition,
) -> Result<(), ProjectionError> {
    match lock_row(tx, name).await? {
        Some((at, Some(_))) if at == expected => Ok(()),
        _ => Err(fenced(name)),
    }
}

/// Moves `name`'s checkpoint from `expected` to `to`; `Fenced` when it was not at `expected`.
async fn store_position(
    tx: &Transaction<'_>,
    name: &str,
    expected: GlobalPosition,
    to: GlobalPosition,
) -> Result<(), ProjectionError> {
    let (c, i) = position_params(to).map_err(db)?;
    let (ec, ei) = position_params(expected).map_err(db)?;
    let stmt = tx
        .prepare_cached(
            "UPDATE tp_checkpoints SET commit = $2, idx = $3, updated_at = now() \
             WHERE name = $1 AND commit = $4 AND idx = $5",
        )
        .await?;
    let n = tx.execute(&stmt, &[&name, &c, &i, &ec, &ei]).await?;
    if n == 1 { Ok(()) } else { Err(fenced(name)) }
}

impl<P: PostgresProjection> PostgresTarget<P> {
    /// The dedicated connection, or `Fenced` when it is gone (a lost connection is a lost
    /// lease: the runner goes back to [`Target::acquire`]).
    fn client(&mut self, slot: &str) -> Result<&mut ClientWrapper, ProjectionError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
        }
        self.client.as_mut().ok_or_else(|| fenced(slot))
    }

    /// Turns an error into `Fenced` when the connection closed under it.
    fn lost(&mut self, slot: &str, e: ProjectionError) -> ProjectionError {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            return fenced(slot);
        }
        e
    }

    /// Takes a connection out of the pool and prepares it: the tables, the lease row, the
    /// session's name and keepalives. Returns the lease row's id.
    async fn connect(&mut self, name: &str) -> Result<i32, Lost> {
        let object = self
            .pool
            .get()
            .await
            .map_err(|e| Lost::Unreachable(db(e)))?;
        let client = Object::take(object);
        let sql = |e: tokio_postgres::Error| {
            if e.is_closed() || e.code().is_none() {
                Lost::Unreachable(e.into())
            } else {
                Lost::Refused(e.into())
            }
        };
        client
            .batch_execute(&format!(
                "SET application_name = 'tp-projection {} {}'; SET tcp_keepalives_idle = 5; \
                 SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3;",
                std::process::id(),
                name.replace('\'', "")
            ))
            .await
            .map_err(sql)?;
        client.batch_execute(SCHEMA).await.map_err(sql)?;
        client
            .execute(
                "INSERT INTO tp_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await
            .map_err(sql)?;
        let id: i32 = client
            .query_one("SELECT id FROM tp_checkpoints WHERE name = $1", &[&name])
            .await
            .map_err(sql)?
            .get(0);
        self.client = Some(client);
        Ok(id)
    }

    /// One transaction: lock and check the checkpoint, apply `events`, move the checkpoint.
    /// `Ok(Err((k, e)))` when event `k` failed (everything rolled back).
    async fn try_batch(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        events: &[RecordedEvent],
    ) -> Result<Result<(), (usize, ApplyError)>, ProjectionError> {
        let projection = self.projection.clone();
        let client = self.client(&slot.checkpoint)?;
        let tx = client.transaction().await?;
        check(&tx, &slot.checkpoint, expected).await?;
        if let Err((k, e)) = projection.apply_batch(&tx, &slot.tables, events).await {
            drop(tx); // rolls back
            // A projection answering past the batch is a bug of its own; never past the end.
            return Ok(Err((k.min(events.len().saturating_sub(1)), e)));
        }
        if let Some(last) = events.last() {
            store_position(&tx, &slot.checkpoint, expected, last.position).await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}

impl<P: PostgresProjection> Target for PostgresTarget<P> {
    async fn acquire(&mut self, name: &str) -> Result<(), ProjectionError> {
        // A fresh session: whatever the old one held is released with it.
        self.client = None;
        let mut id = 0;
        loop {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.client = None;
                match self.connect(name).await {
                    Ok(lease_id) => id = lease_id,
                    // Refused by the database itself (rights, a broken schema): say so.
                    Err(Lost::Refused(e)) => return Err(e),
                    Err(Lost::Unreachable(e)) => {
                        tracing::warn!(
                            target: "tower_patterns::cqrs",
                            projection = name,
                            error = %e,
                            "cannot reach the read model's database; trying again"
                        );
                        tokio::time::sleep(self.lease_poll).await;
                        continue;
                    }
                }
            }
            if !self.lease {
                return Ok(());
            }
            let Some(client) = self.client.as_ref() else {
                continue;
            };
            match client
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LEASE_CLASS, &id])
                .await
            {
                Ok(row) if row.get::<_, bool>(0) => {
                    tracing::info!(target: "tower_patterns::cqrs", projection = name, "took the lease");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.is_closed() => self.client = None,
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(self.lease_poll).await;
        }
    }

    async fn open(&mut self, slot: &Slot) -> Result<Stored, ProjectionError> {
        let projection = self.projection.clone();
        let result = async {
            let client = self.client(&slot.checkpoint)?;
            let tx = client.transaction().await?;
            let stored = match lock_row(&tx, &slot.checkpoint).await? {
                Some((position, Some(version))) => Stored {
                    position,
                    version: u32::try_from(version).unwrap_or(1),
                },
                _ => {
                    let version = slot.tables.version();
                    let v = i32::try_from(version).map_err(db)?;
                    tx.execute(
                        "INSERT INTO tp_checkpoints (name, version) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET commit = 0, idx = 0, \
                         version = EXCLUDED.version, updated_at = now()",
                        &[&slot.checkpoint, &v],
                    )
                    .await?;
                    let tables = Tables::new(slot.tables.projection().to_owned(), version);
                    projection.create(&tx, &tables).await.map_err(db)?;
                    Stored {
                        position: GlobalPosition::START,
                        version,
                    }
                }
            };
            tx.commit().await?;
            Ok(stored)
        }
        .await;
        result.map_err(|e| self.lost(&slot.checkpoint, e))
    }

    async fn apply(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        events: &[RecordedEvent],
    ) -> Result<Applied, ProjectionError> {
        let mut upto = events.len();
        let mut failed = None;
        loop {
            match self.try_batch(slot, expected, &events[..upto]).await {
                Ok(Ok(())) => {
                    return Ok(Applied {
                        count: upto,
                        failed,
                    });
                }
                Ok(Err((k, e))) => {
                    if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                        self.client = None;
                        return Err(fenced(&slot.checkpoint));
                    }
                    failed = Some(e);
                    upto = k;
                    if k == 0 {
                        return Ok(Applied { count: 0, failed });
                    }
                }
                Err(e) => return Err(self.lost(&slot.checkpoint, e)),
            }
        }
    }

    async fn dead_letter(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        event: &RecordedEvent,
        error: &ApplyError,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let error = error.to_string();
        let result = async {
            let client = self.client(&slot.checkpoint)?;
            let tx = client.transaction().await?;
            check(&tx, &slot.checkpoint, expected).await?;
            rows::insert_dead_letter(&*tx, &slot.checkpoint, event, &error, attempts)
                .await
                .map_err(db)?;
            store_position(&tx, &slot.checkpoint, expected, event.position).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(|e| self.lost(&slot.checkpoint, e))
    }

    async fn swap(&mut self, live: &Slot, rebuilt: &Slot) -> Result<(), ProjectionError> {
        let result = async {
            let client = self.client(&live.checkpoint)?;
            let tx = client.transaction().await?;
            let l = lock_row(&tx, &live.checkpoint).await?;
            let r = lock_row(&tx, &rebuilt.checkpoint).await?;
            let (Some((lp, Some(lv))), Some((rp, Some(rv)))) = (l, r) else {
                return Err(fenced(&live.checkpoint));
            };
            if lp != rp || u32::try_from(lv).ok() != Some(live.tables.version()) {
                return Err(fenced(&live.checkpoint));
            }
            tx.execute(
                "UPDATE tp_checkpoints SET version = $2, updated_at = now() WHERE name = $1",
                &[&live.checkpoint, &rv],
            )
            .await?;
            // The rebuild's dead letters replace the live copy's at the same positions.
            tx.execute(
                "DELETE FROM tp_dead_letters d WHERE d.name = $1 AND EXISTS (SELECT 1 FROM \
                 tp_dead_letters r WHERE r.name = $2 AND r.commit = d.commit AND r.idx = d.idx)",
                &[&live.checkpoint, &rebuilt.checkpoint],
            )
            .await?;
            tx.execute(
                "UPDATE tp_dead_letters SET name = $1 WHERE name = $2",
                &[&live.checkpoint, &rebuilt.checkpoint],
            )
            .await?;
            tx.execute(
                "DELETE FROM tp_checkpoints WHERE name = $1",
                &[&rebuilt.checkpoint],
            )
            .await?;
            drop_prefix(&*tx, &live.tables.prefix()).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(|e| self.lost(&live.checkpoint, e))
    }

    async fn discard(&mut self, slot: &Slot) -> Result<(), ProjectionError> {
        let result = async {
            let client = self.client(&slot.checkpoint)?;
            let tx = client.transaction().await?;
            // Never the live copy's tables: when the live row holds this version (another
            // runner swapped it in), the runner is told to reload instead.
            let live = lock_row(&tx, slot.tables.projection()).await?;
            if live
                .and_then(|(_, v)| v)
                .and_then(|v| u32::try_from(v).ok())
                == Some(slot.tables.version())
            {
                return Err(fenced(&slot.checkpoint));
            }
            drop_prefix(&*tx, &slot.tables.prefix()).await?;
            tx.execute(
                "DELETE FROM tp_checkpoints WHERE name = $1",
                &[&slot.checkpoint],
            )
            .await?;
            tx.execute(
                "DELETE FROM tp_dead_letters WHERE name = $1",
                &[&slot.checkpoint],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(|e| self.lost(&slot.checkpoint, e))
    }
}
