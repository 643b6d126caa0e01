//! The event store on PostgreSQL (feature `postgres`), for many writers and many readers.
//!
//! # Gap-safe global reads
//!
//! A global sequence alone is not safe to follow: transaction A takes number 10, transaction B
//! takes 11 and commits first, a reader sees 11 and moves past 10, then A commits and event 10
//! is never read. This store numbers each append from a sequence (`commit_no`, the
//! [`GlobalPosition::commit`] of its events; `index` is the event's row number), and gates
//! reads on the appends still open: each append, before it takes its number, announces a lower
//! bound of it with two shared advisory locks held until its transaction ends, and a reader
//! reads only up to the smallest number an open append may still get, in a snapshot taken
//! after it looked (the proof is in `schema.rs`). Nothing can ever appear behind a reader.
//!
//! Only appends to this store hold readers back, and only while their transaction is open: an
//! [`append_in`](PostgresStore::append_in) inside a long transaction delays every later
//! position until it commits, so keep those short. Open transactions in other databases of the
//! cluster, or in this one without an append, do not matter. Read from the primary: a hot
//! standby does not see the primary's locks. Appenders do not wait for each other (except on
//! the same stream).
//!
//! Stores in several schemas of one database (each connected with its schema first in the
//! `search_path`, e.g. `?options=-csearch_path%3Dorders`) each keep their own log, numbers and
//! functions. A store keeps to the schema [`connect`](PostgresStore::connect) set it up in
//! (the first of the `search_path` that exists), whatever the `search_path`, role or temporary
//! tables of the session its statements, or calls of its functions in SQL, run in. One
//! transaction may append to several of them ([`append_in`](PostgresStore::append_in) appends
//! to its store's schema whichever connection the transaction is on): it holds back each
//! store's readers from its first append to that store. They share the lock keys, though: an
//! open append to one store may delay the other stores' readers until it ends too (never
//! skips), and makes their gate take the `pg_locks` scan while it is open.
//!
//! The gate costs a reader one more statement, pipelined with the read (no extra round trip):
//! about 0.015 ms of server time when no append is under way (a try-lock), about 0.15 ms when
//! one is (a `pg_locks` scan). With many readers in one process,
//! [`with_gate_reuse`](PostgresStore::with_gate_reuse) lets them share a gate for a
//! millisecond or so. Readers in SQL call `tp_read_all(commit, index, max)` (READ COMMITTED;
//! always the scan).
//!
//! The first layout ordered the log by transaction id and gated on the cluster's oldest
//! running transaction, so any writing transaction anywhere stalled every reader.
//! [`connect`](PostgresStore::connect) migrates such a database in place (same order; one
//! append number per old transaction). Positions stored from before are transaction ids and no
//! longer mean anything: start such readers again from [`GlobalPosition::START`], or translate a
//! stored `(commit, index)` to `SELECT commit_no, seq FROM tp_events WHERE seq = index` (the
//! index, a row number, is unchanged).
//!
//! Appends lock their stream's row (`SELECT ... FOR UPDATE`), insert all their events in one
//! statement (`UNNEST`), and `NOTIFY tp_events` on commit; [`wait_for_events`] listens for that
//! as a wake-up beside polling (every 250 ms), never as the source of truth.
//!
//! [`wait_for_events`]: crate::EventStore::wait_for_events
//!
//! ```no_run
//! use tower_patterns_eventstore::{postgres::PostgresStore, EventStore, GlobalPosition};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_eventstore::Error> {
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/app", 8).await?;
//! let first = store.read_all(GlobalPosition::START, 100).await?;
//! # let _ = first; Ok(()) }
//! ```

//!
//! By role: `schema.rs` (the tables, the append and the gate, as SQL, and why the gate is
//! safe), `gate.rs` (the reader's side: two statements, a gate reused), `rows.rs` (rows to
//! events), `append.rs` (one append through `tp_append`), `listen.rs` (the `LISTEN` wake-up),
//! and this file (the store).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_postgres::{NoTls, Row, types::ToSql};
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, ExpectedVersion, GlobalPosition, RecordedEvent, Snapshot,
    event::micros,
    store::{Direction, EventStore, parse_stream_metadata, validate},
};

mod append;
mod gate;
mod listen;
mod rows;
mod schema;

use append::{append_tx, is_race};
use gate::GateCache;
use listen::listen;
use rows::{row_to_event, to_i64, to_u64};
use schema::{Statements, schema_sql};

const POLL: Duration = Duration::from_millis(250);
/// How long a gate is reused by default (see [`PostgresStore::with_gate_reuse`]).
const GATE_REUSE: Duration = Duration::ZERO;

struct Inner {
    pool: Pool,
    head: watch::Sender<u64>,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// The last gate, for readers that come within the reuse interval.
    gate: GateCache,
    /// The statements, naming the schema the store was set up in.
    sql: Statements,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

/// The PostgreSQL [`EventStore`]. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with a pool of up to `pool_size` connections, creates the tables if they are
    /// missing, and starts listening for appends.
    ///
    /// # Errors
    ///
    /// A malformed URL, or a database that cannot be reached or set up.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, Error> {
        crate::error::register_error_responses();
        let config: tokio_postgres::Config = url.parse().map_err(Error::backend)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(Error::backend)?;
        let schema: String;
        {
            let client = pool.get().await.map_err(Error::backend)?;
            // Where the tables go: the first schema of the search_path that exists. The
            // functions are pinned to it by name (see schema.rs).
            schema = client
                .query_one("SELECT current_schema()", &[])
                .await
                .map_err(Error::backend)?
                .get::<_, Option<String>>(0)
                .ok_or_else(|| {
                    Error::backend(
                        "no schema to set up the store in: the search_path names none that exists",
                    )
                })?;
            // Two sessions creating the tables at once can collide on the catalog: serialise.
            // One implicit transaction: the lock goes with it, also when a statement fails.
            client
                .batch_execute(&format!(
                    "SELECT pg_advisory_xact_lock(7403524); {}",
                    schema_sql(&schema)
                ))
                .await
                .map_err(Error::backend)?;
        }
        let head = watch::Sender::new(0u64);
        let listener = Some(tokio::spawn(listen(config, head.clone())));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                head,
                clock: Box::new(SystemTime::now),
                listener,
                gate: GateCache::new(GATE_REUSE),
                sql: Statements::new(&schema),
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

    /// Lets readers of this store reuse a gate computed at most `interval` ago, as long as no
    /// append has woken the store since (default: never reuse). Computing the gate is one more
    /// statement on the server, and while appends are under way a scan of `pg_locks` (about
    /// 0.15 ms, taking the lock manager's partition locks in shared mode); with many readers
    /// in one process, reuse lets those a wake-up sends to the log share one. Safe: an older
    /// gate is smaller, and a smaller gate only delays events. The price: after an
    /// [`append_in`](Self::append_in) commits, or an append rolls back, a read in this process
    /// may not show what follows for up to `interval` (until a `NOTIFY` arrives); appends
    /// through [`append`](crate::EventStore::append) are seen at once. Keep `interval` to
    /// milliseconds. Call it before cloning the store.
    ///
    /// # Panics
    ///
    /// When the store has been cloned already.
    #[must_use]
    pub fn with_gate_reuse(mut self, interval: Duration) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_gate_reuse before the store is cloned")
            .gate = GateCache::new(interval);
        self
    }

    /// The pool, for appending in the caller's own transaction with
    /// [`append_in`](Self::append_in) (the outbox pattern: events and other writes commit
    /// together).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Appends within `tx`, a transaction the caller commits (or rolls back). Same rules as
    /// [`EventStore::append`]; subscribers are woken when `tx` commits.
    ///
    /// `tx` may be on any connection to the store's database, also one of another store's pool:
    /// the events go to this store's schema (the one [`connect`](Self::connect) set up), so
    /// one transaction can append to stores in several schemas and commit them together.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`].
    pub async fn append_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        validate(stream, &events)?;
        let stmt = tx
            .prepare(&self.inner.sql.append)
            .await
            .map_err(Error::backend)?;
        append_tx(
            tx,
            &stmt,
            stream,
            expected,
            &events,
            micros((self.inner.clock)()),
        )
        .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.inner.pool.get().await.map_err(Error::backend)
    }

    /// A gated read: `sql` with the gate as its last parameter when one is reused, else
    /// pipelined right behind the statement that computes it (one round trip; two statements,
    /// so two snapshots, the read's taken after the gate was computed).
    async fn gated(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(Error::backend)?;
        let wakeups = *self.inner.head.borrow();
        let reused = self.inner.gate.get(wakeups);
        let mut all = params.to_vec();
        all.push(&reused);
        if reused.is_some() {
            return client.query(&stmt, &all).await.map_err(Error::backend);
        }
        let asked = Instant::now();
        let gate_stmt = client
            .prepare_cached(&self.inner.sql.gate)
            .await
            .map_err(Error::backend)?;
        let (gate, rows) = futures_util::future::join(
            client.query_one(&gate_stmt, &[]),
            client.query(&stmt, &all),
        )
        .await;
        let gate: i64 = gate.map_err(Error::backend)?.get(0);
        self.inner.gate.put(asked, wakeups, gate);
        rows.map_err(Error::backend)
    }
}

impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        validate(stream, &events)?;
        let recorded_at = micros((self.inner.clock)());
        let mut attempt = 0;
        loop {
            attempt += 1;
            // One statement, so one implicit transaction: no BEGIN/COMMIT round trips.
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&self.inner.sql.append)
                .await
                .map_err(Error::backend)?;
            match append_tx(&**client, &stmt, stream, expected, &events, recorded_at).await {
                Err(e) if is_race(&e) && attempt < 3 => {}
                Ok(done) => {
                    // Committed: wake this process's readers now (the NOTIFY comes later), and
                    // keep them from reusing a gate computed before it.
                    if !done.duplicate {
                        self.inner.head.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    return Ok(done);
                }
                other => return other,
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let client = self.client().await?;
        let sql = match direction {
            Direction::Forward => &self.inner.sql.stream_forward,
            Direction::Backward => &self.inner.sql.stream_backward,
        };
        let stmt = client.prepare_cached(sql).await.map_err(Error::backend)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &stream,
                    &to_i64(from),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(Error::backend)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = self
            .gated(
                &self.inner.sql.read_all_at_gate,
                &[
                    &to_i64(after.commit),
                    &to_i64(after.index),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn head(&self) -> Result<Option<RecordedEvent>, Error> {
        let rows = self.gated(&self.inner.sql.head_at_gate, &[]).await?;
        rows.first().map(row_to_event).transpose()
    }

    async fn count_after(&self, after: GlobalPosition, limit: u64) -> Result<u64, Error> {
        let rows = self
            .gated(
                &self.inner.sql.count_after_at_gate,
                &[&to_i64(after.commit), &to_i64(after.index), &to_i64(limit)],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| to_u64(r.get(0))))
    }

    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(&self.inner.sql.find_event, &[&id])
            .await
            .map_err(Error::backend)?;
        row.as_ref().map(row_to_event).transpose()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(&self.inner.sql.stream_version, &[&stream])
            .await
            .map_err(Error::backend)?;
        Ok(row.map_or(0, |r| to_u64(r.get(0))))
    }

    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(&self.inner.sql.stream_metadata, &[&stream])
            .await
            .map_err(Error::backend)?;
        parse_stream_metadata(stream, row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                &self.inner.sql.set_stream_metadata,
                &[&stream, &metadata.to_string()],
            )
            .await
            .map(drop)
            .map_err(Error::backend)
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(&self.inner.sql.load_snapshot, &[&stream])
            .await
            .map_err(Error::backend)?;
        Ok(row.and_then(|r| {
            let state: String = r.get(2);
            RawValue::from_string(state).ok().map(|state| Snapshot {
                version: to_u64(r.get(0)),
                snapshot_version: u32::try_from(r.get::<_, i32>(1)).unwrap_or(u32::MAX),
                state,
            })
        }))
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                &self.inner.sql.save_snapshot,
                &[
                    &stream,
                    &to_i64(snapshot.version),
                    &i32::try_from(snapshot.snapshot_version).unwrap_or(i32::MAX),
                    &snapshot.state.get(),
                ],
            )
            .await
            .map(drop)
            .map_err(Error::backend)
    }

    async fn wait_for_events(&self, after: GlobalPosition) {
        let mut rx = self.inner.head.subscribe();
        rx.borrow_and_update();
        // Anything readable already? (A notification may have come before we subscribed.)
        if let Ok(found) = self.read_all(after, 1).await
            && !found.is_empty()
        {
            return;
        }
        let _ = tokio::time::timeout(POLL, rx.changed()).await;
    }
}
