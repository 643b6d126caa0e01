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
