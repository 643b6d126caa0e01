//! The event store on PostgreSQL (feature `postgres`), for many writers and many readers.
//!
//! # Gap-safe global reads
//!
//! A global sequence alone is not safe to follow: transaction A takes number 10, transaction B
//! takes 11 and commits first, a reader sees 11 and moves past 10, then A commits and event 10
//! is never read. This store records with each event the 64-bit id of the transaction that
//! wrote it (`pg_current_xact_id()`), orders the global log by (transaction id, sequence), and
//! reads only events of transactions older than the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every such transaction has ended, and every
//! later one gets a larger id, so nothing can ever appear behind a reader. The price: while any
//! transaction that has written something is open (in any database of the cluster), readers of
//! the global log wait for it. Keep transactions short. Appenders do not wait for each other
//! (except on the same stream).
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

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt as _;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_postgres::{NoTls, Row, error::SqlState};
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, ExpectedVersion, GlobalPosition, RecordedEvent, Snapshot,
    event::{RawEvent, micros},
    store::{Direction, EventStore, Seen, parse_stream_metadata, seen, validate},
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8   NOT NULL DEFAULT pg_current_xact_id(),
    stream_id      text   NOT NULL,
    version        bigint NOT NULL,
    event_id       uuid   NOT NULL UNIQUE,
    event_type     text   NOT NULL,
    schema_version int    NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    recorded_at    bigint NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS tp_events_global ON tp_events (tx_id, seq);
CREATE TABLE IF NOT EXISTS tp_streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL,
    metadata  json
);
CREATE TABLE IF NOT EXISTS tp_snapshots (
    stream_id        text   PRIMARY KEY,
    version          bigint NOT NULL,
    snapshot_version int    NOT NULL,
    state            json   NOT NULL
);
-- One round trip per append. p_expected: -1 any, -2 no stream, -3 stream exists, >= 0 exact.
-- Rows: ('dup', stream, id, version, tx, seq) for ids already stored (nothing written);
-- ('conflict', NULL, NULL, current version, NULL, NULL); or ('ok', ...) per appended event.
CREATE OR REPLACE FUNCTION tp_append(
    p_stream text, p_expected bigint, p_ids uuid[], p_types text[], p_schema int[],
    p_payloads text[], p_metadata text[], p_recorded bigint)
RETURNS TABLE (r_status text, r_stream text, r_id uuid, r_version bigint, r_tx text, r_seq bigint)
LANGUAGE plpgsql
-- Plans made while the tables were empty (sequential scans) must not be kept as they grow.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cur bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id) THEN
        RETURN QUERY SELECT 'dup'::text, e.stream_id, e.event_id, e.version, e.tx_id::text, e.seq
            FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id;
        RETURN;
    END IF;
    INSERT INTO tp_streams (stream_id, version) VALUES (p_stream, 0) ON CONFLICT DO NOTHING;
    SELECT s.version INTO cur FROM tp_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    IF NOT (p_expected = -1 OR (p_expected = -2 AND cur = 0) OR (p_expected = -3 AND cur > 0)
            OR p_expected = cur) THEN
        RETURN QUERY SELECT 'conflict'::text, NULL::text, NULL::uuid, cur, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO tp_events AS e (stream_id, version, event_id, event_type, schema_version,
                                    payload, metadata, recorded_at)
        SELECT p_stream, cur + u.ord, u.id, u.t, u.sv, u.p::json, u.m::json, p_recorded
        FROM UNNEST(p_ids, p_types, p_schema, p_payloads, p_metadata)
             WITH ORDINALITY AS u(id, t, sv, p, m, ord)
        RETURNING 'ok'::text, e.stream_id, e.event_id, e.version, e.tx_id::text, e.seq;
    UPDATE tp_streams SET version = cur + cardinality(p_ids) WHERE stream_id = p_stream;
    PERFORM pg_notify('tp_events', '');
END;
$$;
";

const APPEND: &str = "SELECT r_status, r_stream, r_id, r_version, r_tx, r_seq \
                      FROM tp_append($1, $2, $3, $4, $5, $6, $7, $8)";

// The transaction id goes out as text under another name: an output column named `tx_id`
// would capture `ORDER BY tx_id` and sort as text ("1000" before "999").
const COLUMNS: &str = "tx_id::text AS tx_text, seq, stream_id, version, event_id, event_type, \
                       schema_version, payload::text AS payload_text, metadata::text AS metadata_text";

const POLL: Duration = Duration::from_millis(250);

struct Inner {
    pool: Pool,
    head: watch::Sender<u64>,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
    listener: Option<tokio::task::JoinHandle<()>>,
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn position(tx: &str, seq: i64) -> GlobalPosition {
    GlobalPosition::new(tx.parse().unwrap_or(0), to_u64(seq))
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
        {
            let client = pool.get().await.map_err(Error::backend)?;
            // Two sessions creating the tables at once can collide on the catalog: serialise.
            client
                .batch_execute(&format!(
                    "SELECT pg_advisory_lock(7403524); {SCHEMA} SELECT pg_advisory_unlock(7403524);"
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

    /// The pool, for appending in the caller's own transaction with
    /// [`append_in`](Self::append_in) (the outbox pattern: events and other writes commit
    /// together).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Appends within `tx`, a transaction the caller commits (or rolls back). Same rules as
    /// [`EventStore::append`]; subscribers are woken when `tx` commits.
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
        let stmt = tx.prepare(APPEND).await.map_err(Error::backend)?;
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
}

/// Keeps a connection that LISTENs for appends and bumps `head`; reconnects after failures.
async fn listen(config: tokio_postgres::Config, head: watch::Sender<u64>) {
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let listening = async {
                client.batch_execute("LISTEN tp_events").await?;
                // Keep the client alive while messages flow.
                std::future::pending::<()>().await;
                Ok::<_, tokio_postgres::Error>(())
            };
            tokio::pin!(listening);
            loop {
                tokio::select! {
                    res = &mut listening => { let _ = res; break; }
                    msg = messages.next() => match msg {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            head.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn row_to_event(r: &Row) -> Result<RecordedEvent, Error> {
    let tx: String = r.try_get(0).map_err(Error::backend)?;
    let seq: i64 = r.try_get(1).map_err(Error::backend)?;
    RawEvent {
        position: position(&tx, seq),
        stream_id: r.try_get(2).map_err(Error::backend)?,
        version: to_u64(r.try_get(3).map_err(Error::backend)?),
        id: Ok(r.try_get(4).map_err(Error::backend)?),
        event_type: r.try_get(5).map_err(Error::backend)?,
        schema_version: i64::from(r.try_get::<_, i32>(6).map_err(Error::backend)?),
        payload: r.try_get(7).map_err(Error::backend)?,
        metadata: r.try_get(8).map_err(Error::backend)?,
    }
    .check()
}

/// Runs one append through `tp_append` on `client` (a pooled connection or a transaction).
async fn append_tx<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    stmt: &tokio_postgres::Statement,
    stream: &str,
    expected: ExpectedVersion,
    events: &[EventData],
    recorded_at: u64,
) -> Result<AppendResult, Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let schema: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.get()).collect();
    let metadata: Vec<String> = events
        .iter()
        .map(|e| {
            let mut m = e.metadata.clone();
            m.recorded_at_micros = recorded_at;
            serde_json::to_string(&m).map_err(|e| Error::Encode(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let expected_code: i64 = match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => -2,
        ExpectedVersion::StreamExists => -3,
        ExpectedVersion::Exact(v) => to_i64(v),
    };
    let mut rows = client
        .query(
            stmt,
            &[
                &stream,
                &expected_code,
                &ids,
                &types,
                &schema,
                &payloads,
                &metadata,
                &to_i64(recorded_at),
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                // A concurrent append of the same event ids: the caller retries, and then
                // finds them stored.
                Error::Backend(Box::new(DuplicateRace))
            } else {
                Error::backend(e)
            }
        })?;
    let status: &str = rows.first().map_or("", |r| r.get(0));
    match status {
        "dup" => {
            let found: Vec<_> = ids
                .iter()
                .map(|id| {
                    rows.iter().find(|r| r.get::<_, Uuid>(2) == *id).map(|r| {
                        (
                            r.get::<_, String>(1),
                            to_u64(r.get(3)),
                            position(&r.get::<_, String>(4), r.get(5)),
                        )
                    })
                })
                .collect();
            match seen(stream, events, &found)? {
                Seen::All(done) => Ok(done),
                Seen::New => Err(Error::backend(
                    "tp_append reported duplicates it did not name",
                )),
            }
        }
        "conflict" => Err(Error::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: to_u64(rows[0].get(3)),
        }),
        "ok" => {
            rows.sort_by_key(|r| r.get::<_, i64>(3));
            Ok(AppendResult {
                version: rows.last().map_or(0, |r| to_u64(r.get(3))),
                positions: rows
                    .iter()
                    .map(|r| position(&r.get::<_, String>(4), r.get(5)))
                    .collect(),
                duplicate: false,
            })
        }
        other => Err(Error::backend(format!("tp_append answered {other:?}"))),
    }
}

/// Two appends of the same event id raced; the loser retries.
#[derive(Debug)]
struct DuplicateRace;

impl std::fmt::Display for DuplicateRace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a concurrent append stored the same event id")
    }
}

impl std::error::Error for DuplicateRace {}

fn is_race(e: &Error) -> bool {
    matches!(e, Error::Backend(b) if b.is::<DuplicateRace>())
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
                .prepare_cached(APPEND)
                .await
                .map_err(Error::backend)?;
            match append_tx(&**client, &stmt, stream, expected, &events, recorded_at).await {
                Err(e) if is_race(&e) && attempt < 3 => {}
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
            Direction::Forward => format!(
                "SELECT {COLUMNS} FROM tp_events WHERE stream_id = $1 AND version >= $2 \
                 ORDER BY tp_events.version LIMIT $3"
            ),
            Direction::Backward => format!(
                "SELECT {COLUMNS} FROM tp_events WHERE stream_id = $1 AND version <= $2 \
                 ORDER BY tp_events.version DESC LIMIT $3"
            ),
        };
        let stmt = client.prepare_cached(&sql).await.map_err(Error::backend)?;
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
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tp_events \
                 WHERE (tx_id, seq) > ($1::text::xid8, $2) \
                   AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY tp_events.tx_id, tp_events.seq LIMIT $3"
            ))
            .await
            .map_err(Error::backend)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &after.commit.to_string(),
                    &to_i64(after.index),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(Error::backend)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tp_events WHERE event_id = $1"),
                &[&id],
            )
            .await
            .map_err(Error::backend)?;
        row.as_ref().map(row_to_event).transpose()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version FROM tp_streams WHERE stream_id = $1",
                &[&stream],
            )
            .await
            .map_err(Error::backend)?;
        Ok(row.map_or(0, |r| to_u64(r.get(0))))
    }

    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT metadata::text FROM tp_streams WHERE stream_id = $1",
                &[&stream],
            )
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
                "INSERT INTO tp_streams (stream_id, version, metadata) VALUES ($1, 0, $2::text::json) \
                 ON CONFLICT (stream_id) DO UPDATE SET metadata = excluded.metadata",
                &[&stream, &metadata.to_string()],
            )
            .await
            .map(drop)
            .map_err(Error::backend)
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, snapshot_version, state::text FROM tp_snapshots WHERE stream_id = $1",
                &[&stream],
            )
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
                "INSERT INTO tp_snapshots (stream_id, version, snapshot_version, state) \
                 VALUES ($1, $2, $3, $4::text::json) ON CONFLICT (stream_id) DO UPDATE SET \
                 version = excluded.version, snapshot_version = excluded.snapshot_version, \
                 state = excluded.state WHERE excluded.version >= tp_snapshots.version",
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
