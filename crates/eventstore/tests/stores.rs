//! The conformance suite on every store: in memory, SQLite (file, WAL) and PostgreSQL (the
//! test command's server; skipped with a printed reason under plain `cargo test`).

mod common;

use std::sync::Arc;

use tower_patterns_eventstore::InMemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    common::run_all(Arc::new(InMemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        tower_patterns_eventstore::sqlite::SqliteStore::open(dir.path().join("events.db")).unwrap();
    common::run_all(Arc::new(store)).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory() {
    common::run_all(Arc::new(
        tower_patterns_eventstore::sqlite::SqliteStore::in_memory().unwrap(),
    ))
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(url) = common::fresh_postgres("conf").await else {
        return;
    };
    let store = tower_patterns_eventstore::postgres::PostgresStore::connect(&url, 8)
        .await
        .unwrap();
    common::run_all(Arc::new(store)).await;
}

/// Bytes in the database that are not an event: a typed error naming the event, never a panic.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrupt_rows_are_typed_errors() {
    use tower_patterns_eventstore::{
        Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition,
        sqlite::SqliteStore,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    let e = EventData::json("A", &serde_json::json!({ "ok": true })).unwrap();
    store
        .append("s", ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    store
        .append(
            "s",
            ExpectedVersion::Any,
            vec![EventData::json("B", &1).unwrap()],
        )
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE tp_events SET payload = '{not json' WHERE version = 2",
        [],
    )
    .unwrap();
    match store.read_stream("s", 1, Direction::Forward, 10).await {
        Err(Error::Corrupt {
            stream,
            version: 2,
            position,
            reason,
        }) => {
            assert_eq!(
                (stream.as_str(), position),
                ("s", GlobalPosition::new(0, 2))
            );
            assert!(reason.contains("payload is not JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    raw.execute("UPDATE tp_events SET metadata = 'x' WHERE version = 1", [])
        .unwrap();
    assert!(matches!(
        store.read_all(GlobalPosition::START, 10).await,
        Err(Error::Corrupt { version: 1, .. })
    ));
}
