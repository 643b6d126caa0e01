//! 1,000 sagas at once, on the SQLite log and index (files, every commit synced) and on
//! PostgreSQL: every one ends as its plan says, every effect happens once.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{Act, Ledger, trip};
use tower_patterns_eventstore::EventStore;
use tower_patterns_saga::{Orchestrator, SagaId, SagaStatus, index::SagaIndex};

const SAGAS: usize = 1_000;

/// Every tenth saga's payment is refused.
fn refused(i: usize) -> bool {
    i % 10 == 3
}

async fn thousand<S: EventStore, I: SagaIndex>(store: Arc<S>, index: I) {
    let ledger = Ledger::in_memory();
    let ok = trip(&ledger, &[]);
    let mut refusing = trip(&ledger, &[("payment", Act::Refuse)]);
    let refusing = {
        // The same steps under another saga type.
        let stages: Vec<_> = refusing.stages().to_vec();
        refusing = stages
            .into_iter()
            .fold(
                tower_patterns_saga::SagaDefinition::builder("trip-refused"),
                |b, s| b.parallel(s),
            )
            .build()
            .unwrap();
        refusing
    };
    let o = Orchestrator::builder("thousand")
        .store(store)
        .index(index)
        .saga(ok)
        .saga(refusing)
        .build()
        .unwrap();
    let runs = (0..SAGAS).map(|i| {
        let o = o.clone();
        tokio::spawn(async move {
            let kind = if refused(i) { "trip-refused" } else { "trip" };
            o.run(
                kind,
                SagaId::new(format!("s-{i}")).unwrap(),
                json!({ "i": i }),
            )
            .await
            .unwrap()
        })
    });
    let outcomes = futures_util::future::join_all(runs).await;
    for (i, out) in outcomes.into_iter().enumerate() {
        let out = out.unwrap();
        let saga = format!("s-{i}");
        if refused(i) {
            assert_eq!(out.status, SagaStatus::Compensated, "{saga}");
            assert_eq!(ledger.undone(&saga), ["flight", "hotel"], "{saga}");
        } else {
            assert_eq!(out.status, SagaStatus::Completed, "{saga}");
            assert_eq!(ledger.done(&saga), ["flight", "hotel", "payment"], "{saga}");
        }
    }
    assert_eq!(ledger.most_per_step(), 1);
    assert_eq!(o.handle().count("completed"), Some(900));
    assert_eq!(o.handle().count("compensated"), Some(100));
    assert_eq!(o.handle().count("running"), Some(0));
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sagas_at_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        tower_patterns_eventstore::sqlite::SqliteStore::open(dir.path().join("events.db")).unwrap();
    let index = tower_patterns_saga::index::SqliteIndex::open(dir.path().join("sagas.db")).unwrap();
    thousand(Arc::new(store), index).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sagas_at_once_on_postgres() {
    let Some(url) = tower_patterns_testkit::fresh_postgres("saga_thousand").await else {
        return;
    };
    let store = tower_patterns_eventstore::postgres::PostgresStore::connect(&url, 16)
        .await
        .unwrap();
    let index = tower_patterns_saga::index::PostgresIndex::new(store.pool().clone())
        .await
        .unwrap();
    thousand(Arc::new(store), index).await;
}
