//! The PostgreSQL store's read gate as a projection sees it: an open transaction in another
//! database of the cluster, or an unrelated one in the store's own database, does not delay
//! the projection; an open append to the event store holds back the positions after it, and
//! both apply in log order once it commits.
#![cfg(feature = "postgres")]

mod pg_support;

use std::time::Duration;

use pg_support::{Ledger, append, client, ledger, store};
use serde_json::json;
use tower_patterns_cqrs::Projection;
use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion};
use tower_patterns_testkit::fresh_postgres;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_elsewhere_do_not_delay_the_projection() {
    let (Some(url), Some(other)) = (
        fresh_postgres("gate_open").await,
        fresh_postgres("gate_other").await,
    ) else {
        return;
    };
    let store = store(&url).await;
    // A writing transaction in another database of the cluster, and an unrelated one in the
    // store's own database, both left open.
    let mut elsewhere = client(&other).await;
    let mut here = client(&url).await;
    let open_elsewhere = elsewhere.transaction().await.unwrap();
    open_elsewhere
        .batch_execute("CREATE TABLE audit (x int); INSERT INTO audit VALUES (1)")
        .await
        .unwrap();
    let open_here = here.transaction().await.unwrap();
    open_here
        .batch_execute("CREATE TABLE notes (x int); INSERT INTO notes VALUES (1)")
        .await
        .unwrap();

    let (handle, task) = Projection::builder("feed")
        .source(store.clone())
        .postgres(store.pool().clone(), Ledger::default())
        .build()
        .unwrap()
        .spawn();
    let head = append(&store, "feed-1", "PostCreated", 50).await;
    assert!(
        handle.wait_for(head, WITHIN).await,
        "the projection reached the head while the other transactions stay open"
    );
    let lag = handle.lag().await.unwrap();
    assert_eq!(lag.events, 0, "{lag:?}");
    let db = client(&url).await;
    assert_eq!(ledger(&db, "feed_v1_applied").await, (50, 1));
    open_elsewhere.rollback().await.unwrap();
    open_here.rollback().await.unwrap();
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_append_holds_back_later_positions_then_both_apply_in_order() {
    let Some(url) = fresh_postgres("gate_append").await else {
        return;
    };
    let store = store(&url).await;
    let (handle, task) = Projection::builder("feed")
        .source(store.clone())
        .postgres(store.pool().clone(), Ledger::default())
        .build()
        .unwrap()
        .spawn();
    let first = append(&store, "feed-0", "PostCreated", 3).await;
    assert!(handle.wait_for(first, WITHIN).await);

    // A: an append inside the caller's transaction (the outbox pattern), still open.
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let a = store
        .append_in(
            &tx,
            "feed-a",
            ExpectedVersion::Any,
            vec![EventData::json("PostCreated", &json!({ "by": "a" })).unwrap()],
        )
        .await
        .unwrap();
    // B: a later append, committed.
    let b = store
        .append(
            "feed-b",
            ExpectedVersion::Any,
            vec![EventData::json("PostCreated", &json!({ "by": "b" })).unwrap()],
        )
        .await
        .unwrap();
    let (pa, pb) = (a.positions[0], b.positions[0]);
    assert!(pa < pb, "A was given the earlier position");
    // While A is open, B is not applied (nor readable): a bounded wait that must run out.
    assert!(
        !handle.wait_for(pb, Duration::from_secs(1)).await,
        "B applied before A committed: A could be skipped"
    );
    assert_eq!(handle.position(), first);
    assert!(store.read_all(first, 10).await.unwrap().is_empty());

    tx.commit().await.unwrap();
    assert!(
        handle.wait_for(pb, WITHIN).await,
        "both applied once A committed"
    );
    let db = client(&url).await;
    let order: Vec<(i64, i64)> = db
        .query("SELECT commit, idx FROM feed_v1_applied ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pos = |p: tower_patterns_eventstore::GlobalPosition| (p.commit as i64, p.index as i64);
    assert_eq!(order.len(), 5);
    assert_eq!(&order[3..], [pos(pa), pos(pb)], "A before B");
    assert_eq!(ledger(&db, "feed_v1_applied").await, (5, 1));
    handle.shutdown();
    task.await.unwrap().unwrap();
}
