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

/// PostgreSQL with the gate reused between reads: the same guarantees (an append through the
/// store is readable at once by the process that made it).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reusing_the_gate() {
    let Some(url) = common::fresh_postgres("confreuse").await else {
        return;
    };
    let store = tower_patterns_eventstore::postgres::PostgresStore::connect(&url, 8)
        .await
        .unwrap()
        .with_gate_reuse(std::time::Duration::from_secs(3600));
    common::run_all(Arc::new(store)).await;
}

/// On PostgreSQL, `head` and `count_after` are gated like `read_all`: an open append holds back
/// the later appends, which count as nothing until it commits.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_head_and_count_after_hide_what_the_gate_hides() {
    use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, GlobalPosition};
    let Some(url) = common::fresh_postgres("headgate").await else {
        return;
    };
    let store = tower_patterns_eventstore::postgres::PostgresStore::connect(&url, 4)
        .await
        .unwrap();
    let ev = |n: u64| EventData::json("E", &serde_json::json!({ "n": n })).unwrap();
    let x = store
        .append("x", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let a = store
        .append_in(&tx, "a", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    let b = store
        .append("b", ExpectedVersion::Any, vec![ev(3), ev(4)])
        .await
        .unwrap();
    let head = store.head().await.unwrap().unwrap();
    assert_eq!(
        head.position, x.positions[0],
        "B is hidden behind the open A"
    );
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        1
    );
    assert_eq!(store.count_after(x.positions[0], 10).await.unwrap(), 0);
    tx.commit().await.unwrap();
    assert_eq!(
        store.head().await.unwrap().unwrap().position,
        b.positions[1]
    );
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        4
    );
    assert_eq!(store.count_after(x.positions[0], 2).await.unwrap(), 2);
    assert_eq!(store.count_after(a.positions[0], 10).await.unwrap(), 2);
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
