//! Shared by the PostgreSQL projection tests: the ledger read model (one row per event
//! applied, counting applications: `n > 1` would be an event applied twice), a store in a
//! fresh database, appends, and queries.
#![allow(dead_code)]

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tokio_postgres::{NoTls, Transaction};
use tower_patterns_cqrs::{ApplyError, PostgresProjection, Tables};
use tower_patterns_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalPosition, RecordedEvent, postgres::PostgresStore,
};

/// Every event applied counts in `applied(event_id, n)`; an event of type `Poison` fails
/// (permanently).
#[derive(Clone, Default)]
pub(crate) struct Ledger {
    pub(crate) applies: Arc<AtomicUsize>,
}

impl Ledger {
    pub(crate) fn applies(&self) -> usize {
        self.applies.load(Ordering::SeqCst)
    }
}

impl PostgresProjection for Ledger {
    async fn create(&self, tx: &Transaction<'_>, tables: &Tables) -> Result<(), ApplyError> {
        tx.batch_execute(&format!(
            "CREATE TABLE {} (event_id uuid PRIMARY KEY, n int NOT NULL DEFAULT 1, \
             commit bigint NOT NULL, idx bigint NOT NULL, \
             seq bigint GENERATED ALWAYS AS IDENTITY)",
            tables.name("applied")
        ))
        .await?;
        // A view and a sequence beside the table: a swap drops every kind of relation.
        tx.batch_execute(&format!(
            "CREATE VIEW {} AS SELECT event_id FROM {} WHERE n > 1; CREATE SEQUENCE {};",
            tables.name("repeated"),
            tables.name("applied"),
            tables.name("ticket")
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if event.event_type == "Poison" {
            return Err(ApplyError::permanent(format!(
                "the ledger refuses event {}",
                event.position
            )));
        }
        let table = tables.name("applied");
        tx.execute(
            &format!(
                "INSERT INTO {table} (event_id, commit, idx) VALUES ($1, $2, $3) \
                 ON CONFLICT (event_id) DO UPDATE SET n = {table}.n + 1"
            ),
            &[
                &event.id,
                &(event.position.commit as i64),
                &(event.position.index as i64),
            ],
        )
        .await?;
        Ok(())
    }
}

pub(crate) async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

pub(crate) async fn store(url: &str) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(url, 8).await.unwrap())
}

/// Appends `n` events of type `kind` to `stream`, 50 per append; the last position.
pub(crate) async fn append(
    store: &PostgresStore,
    stream: &str,
    kind: &str,
    n: u64,
) -> GlobalPosition {
    let mut last = GlobalPosition::START;
    let mut i = 0;
    while i < n {
        let chunk = (n - i).min(50);
        let events = (i..i + chunk)
            .map(|k| EventData::json(kind, &json!({ "k": k })).unwrap())
            .collect();
        let r = store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
        last = *r.positions.last().unwrap();
        i += chunk;
    }
    last
}

/// (rows, largest n) of the ledger's table `table`.
pub(crate) async fn ledger(client: &tokio_postgres::Client, table: &str) -> (i64, i32) {
    let row = client
        .query_one(
            &format!("SELECT count(*), COALESCE(max(n), 0) FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The stored checkpoint row of `name`: (position, version).
pub(crate) async fn checkpoint(
    client: &tokio_postgres::Client,
    name: &str,
) -> Option<(GlobalPosition, Option<i32>)> {
    client
        .query_opt(
            "SELECT commit, idx, version FROM tp_checkpoints WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| {
            (
                GlobalPosition::new(r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64),
                r.get(2),
            )
        })
}

/// The relations (tables, views, sequences, indexes) of the current schema whose names start
/// with `prefix`.
pub(crate) async fn relations_like(client: &tokio_postgres::Client, prefix: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND left(c.relname, length($1)) = $1 ORDER BY 1",
            &[&prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The tables of the current schema whose names start with `prefix`.
pub(crate) async fn tables_like(client: &tokio_postgres::Client, prefix: &str) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             AND left(tablename, length($1)) = $1 ORDER BY 1",
            &[&prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
