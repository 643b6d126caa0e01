//! Where the events live: SQLite files in the data directory by default, or, with
//! `--postgres URL`, a PostgreSQL database, each store in a schema of its own (`orders_0` ...,
//! `catalog`, `checkout`), so that several storefronts can share them; the saga index moves
//! there too, and their orchestrators share sagas by lease. The read models stay in SQLite
//! files beside each storefront: each follows the shared events on its own.
//!
//! With `--postgres-replicas`, the storefront also watches the database's streaming replicas
//! ([`replicas`]): a replica set's monitor probes the primary's WAL position and each replica's
//! replay position. `/admin/patterns` and the status page list the set (how many replicas are
//! healthy, the largest lag) and each replica (`ReplicaSetHandle::each_replica`: up or down,
//! its lag in WAL bytes and seconds); `/metrics` has each one's lag too. The storefront routes none of its own
//! reads there: they come from its read models. A service whose reads do query PostgreSQL puts
//! `ReplicaRouterLayer` over the same set (see `tower_patterns::consistency::replica`).
//!
//! [`Store`] and [`Index`] choose between the two behind the event store's and the saga
//! index's traits, so the rest of the storefront is written once.

use std::path::Path;

use tower_patterns::{
    BoxError,
    consistency::replica::ReplicaSet,
    eventstore::{
        AppendResult, Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition,
        RecordedEvent, Snapshot, postgres::PostgresStore, sqlite::SqliteStore,
    },
    saga::{
        SagaId, SagaStatus,
        index::{Claim, IndexEntry, PostgresIndex, SagaIndex, SqliteIndex},
    },
};
use uuid::Uuid;

/// An event store on SQLite or PostgreSQL.
pub(crate) enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// A saga index on SQLite or PostgreSQL.
pub(crate) enum Index {
    Sqlite(SqliteIndex),
    Postgres(PostgresIndex),
}

/// The store named `name`: `<dir>/<name>.db`, or schema `<name>` of the PostgreSQL database.
pub(crate) async fn store(
    dir: &Path,
    postgres: Option<&str>,
    name: &str,
) -> Result<Store, BoxError> {
    Ok(match postgres {
        None => Store::Sqlite(SqliteStore::open(dir.join(format!("{name}.db")))?),
        Some(url) => {
            let schema = name.replace('-', "_");
            Store::Postgres(PostgresStore::connect(&in_schema(url, &schema).await?, 4).await?)
        }
    })
}

/// The saga index: `<dir>/checkout-index.db`, or beside the saga log in PostgreSQL.
pub(crate) async fn index(dir: &Path, log: &Store) -> Result<Index, BoxError> {
    Ok(match log {
        Store::Sqlite(_) => Index::Sqlite(SqliteIndex::open(dir.join("checkout-index.db"))?),
        Store::Postgres(pg) => Index::Postgres(PostgresIndex::new(pg.pool().clone()).await?),
    })
}

/// The primary at `primary` and its streaming replicas at `replicas` (`replica-1`, ...),
/// watched once the caller spawns the set's monitor. The pools connect on first use: a
/// replica that cannot be reached is reported down, and the storefront runs on.
///
/// A URL is read as `--postgres` reads it (`tokio_postgres::Config`); an error names the URL's
/// flag and which replica, never the URL (it may hold a password).
pub(crate) fn replicas(primary: &str, replicas: &[String]) -> Result<ReplicaSet, String> {
    let pool = |url: &str, what: &str| -> Result<deadpool_postgres::Pool, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{what}: {e}"))?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        // The monitor holds one connection per node; one more for whoever routes reads.
        deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("{what}: {e}"))
    };
    let mut set = ReplicaSet::builder("storefront-db").primary(pool(
        primary,
        "storefront: --postgres (also TP_STOREFRONT_POSTGRES)",
    )?);
    for (i, url) in replicas.iter().enumerate() {
        let name = format!("replica-{}", i + 1);
        let what = format!(
            "storefront: --postgres-replicas, {name} (also TP_STOREFRONT_POSTGRES_REPLICAS)"
        );
        set = set.replica(name, pool(url, &what)?);
    }
    set.build()
        .map_err(|e| format!("storefront: --postgres-replicas: {e}"))
}

/// `url` with its search path set to `schema`, created if missing.
async fn in_schema(url: &str, schema: &str) -> Result<String, BoxError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    // `schema` is one of the storefront's own names (letters, digits, `_`), never input.
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await?;
    drop(client);
    let _ = conn.await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}

impl EventStore for Store {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        match self {
            Self::Sqlite(s) => s.append(stream, expected, events).await,
            Self::Postgres(s) => s.append(stream, expected, events).await,
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        match self {
            Self::Sqlite(s) => s.read_stream(stream, from, direction, max).await,
            Self::Postgres(s) => s.read_stream(stream, from, direction, max).await,
        }
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        match self {
            Self::Sqlite(s) => s.read_all(after, max).await,
            Self::Postgres(s) => s.read_all(after, max).await,
        }
    }

    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        match self {
            Self::Sqlite(s) => s.find_event(id).await,
            Self::Postgres(s) => s.find_event(id).await,
        }
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.stream_version(stream).await,
            Self::Postgres(s) => s.stream_version(stream).await,
        }
    }

    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        match self {
            Self::Sqlite(s) => s.stream_metadata(stream).await,
            Self::Postgres(s) => s.stream_metadata(stream).await,
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.set_stream_metadata(stream, metadata).await,
            Self::Postgres(s) => s.set_stream_metadata(stream, metadata).await,
        }
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        match self {
            Self::Sqlite(s) => s.load_snapshot(stream).await,
            Self::Postgres(s) => s.load_snapshot(stream).await,
        }
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.save_snapshot(stream, snapshot).await,
            Self::Postgres(s) => s.save_snapshot(stream, snapshot).await,
        }
    }

    async fn head(&self) -> Result<Option<RecordedEvent>, Error> {
        match self {
            Self::Sqlite(s) => s.head().await,
            Self::Postgres(s) => s.head().await,
        }
    }

    async fn count_after(&self, after: GlobalPosition, limit: u64) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.count_after(after, limit).await,
            Self::Postgres(s) => s.count_after(after, limit).await,
        }
    }

    async fn wait_for_events(&self, after: GlobalPosition) {
        match self {
            Self::Sqlite(s) => s.wait_for_events(after).await,
            Self::Postgres(s) => s.wait_for_events(after).await,
        }
    }
}

impl SagaIndex for Index {
    async fn register(
        &self,
        id: &SagaId,
        saga_type: &str,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<bool, BoxError> {
        match self {
            Self::Sqlite(i) => i.register(id, saga_type, owner, now, lease_until).await,
            Self::Postgres(i) => i.register(id, saga_type, owner, now, lease_until).await,
        }
    }

    async fn claim(
        &self,
        owner: &str,
        now: u64,
        lease_until: u64,
        max: usize,
        reclaim_own: bool,
    ) -> Result<Vec<Claim>, BoxError> {
        match self {
            Self::Sqlite(i) => i.claim(owner, now, lease_until, max, reclaim_own).await,
            Self::Postgres(i) => i.claim(owner, now, lease_until, max, reclaim_own).await,
        }
    }

    async fn claim_one(
        &self,
        id: &SagaId,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Claim>, BoxError> {
        match self {
            Self::Sqlite(i) => i.claim_one(id, owner, now, lease_until).await,
            Self::Postgres(i) => i.claim_one(id, owner, now, lease_until).await,
        }
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[SagaId],
        now: u64,
        lease_until: u64,
    ) -> Result<Vec<SagaId>, BoxError> {
        match self {
            Self::Sqlite(i) => i.renew(owner, ids, now, lease_until).await,
            Self::Postgres(i) => i.renew(owner, ids, now, lease_until).await,
        }
    }

    async fn set_status(&self, id: &SagaId, status: SagaStatus, now: u64) -> Result<(), BoxError> {
        match self {
            Self::Sqlite(i) => i.set_status(id, status, now).await,
            Self::Postgres(i) => i.set_status(id, status, now).await,
        }
    }

    async fn remove(&self, id: &SagaId) -> Result<(), BoxError> {
        match self {
            Self::Sqlite(i) => i.remove(id).await,
            Self::Postgres(i) => i.remove(id).await,
        }
    }

    async fn release(&self, id: &SagaId, owner: &str) -> Result<(), BoxError> {
        match self {
            Self::Sqlite(i) => i.release(id, owner).await,
            Self::Postgres(i) => i.release(id, owner).await,
        }
    }

    async fn list(&self, status: &str, max: usize) -> Result<Vec<IndexEntry>, BoxError> {
        match self {
            Self::Sqlite(i) => i.list(status, max).await,
            Self::Postgres(i) => i.list(status, max).await,
        }
    }
}
