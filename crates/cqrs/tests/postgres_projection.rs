//! A read model in PostgreSQL: catches up, follows live appends, restarts from its checkpoint,
//! dead-letters a poison event with every other event applied once, rebuilds into fresh
//! tables and drops the old ones, an abandoned rebuild never drops the version the live row
//! holds; PostgresCheckpoints' compare-and-set.
#![cfg(feature = "postgres")]

mod pg_support;

use std::{sync::Arc, time::Duration};

use pg_support::{Ledger, append, checkpoint, client, ledger, relations_like, store, tables_like};
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::Transaction;
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, FailurePolicy, PostgresProjection, Projection, Status,
    Tables, checkpoint::PostgresCheckpoints,
};
use tower_patterns_eventstore::{EventStore, GlobalPosition, RecordedEvent};
use tower_patterns_testkit::fresh_postgres;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_follows_live_appends_and_restarts_from_its_checkpoint() {
    let Some(url) = fresh_postgres("pgproj_live").await else {
        return;
    };
    let store = store(&url).await;
    let head = append(&store, "catalog-1", "PriceUpdated", 300).await;
    let model = Ledger::default();
    let build = || {
        Projection::builder("catalog")
            .source(store.clone())
            .postgres(store.pool().clone(), model.clone())
            .batch(64)
            .build()
            .unwrap()
    };
    let (handle, task) = build().spawn();
    assert!(handle.wait_for(head, WITHIN).await, "caught up");
    let db = client(&url).await;
    assert_eq!(ledger(&db, "catalog_v1_applied").await, (300, 1));

    let head = append(&store, "catalog-2", "PriceUpdated", 20).await;
    assert!(handle.wait_for(head, WITHIN).await, "live appends applied");
    assert_eq!(
        handle.wait_for_status(WITHIN, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(checkpoint(&db, "catalog").await, Some((head, Some(1))));
    handle.shutdown();
    task.await.unwrap().unwrap();

    // A rebuild interrupted by a crash left its tables and checkpoint row: discarded at start.
    db.batch_execute(
        "CREATE TABLE catalog_v2_applied (x int); CREATE VIEW catalog_v2_repeated AS SELECT 1; \
         INSERT INTO tp_checkpoints (name, version) VALUES ('catalog#rebuild', 2)",
    )
    .await
    .unwrap();

    // Restarted: it applies only what came after its checkpoint.
    let before = model.applies();
    let (handle, task) = build().spawn();
    let head = append(&store, "catalog-3", "PriceUpdated", 5).await;
    assert!(handle.wait_for(head, WITHIN).await);
    assert_eq!(model.applies() - before, 5, "nothing applied again");
    assert!(relations_like(&db, "catalog_v2_").await.is_empty());
    assert_eq!(checkpoint(&db, "catalog#rebuild").await, None);
    assert_eq!(ledger(&db, "catalog_v1_applied").await, (325, 1));
    assert_eq!(checkpoint(&db, "catalog").await, Some((head, Some(1))));
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_a_batch_is_dead_lettered_and_every_other_event_applies_once() {
    let Some(url) = fresh_postgres("pgproj_dead").await else {
        return;
    };
    let store = store(&url).await;
    append(&store, "feed-1", "Liked", 10).await;
    let poison = append(&store, "feed-1", "Poison", 1).await;
    let head = append(&store, "feed-1", "Liked", 10).await;
    let model = Ledger::default();
    let (handle, task) = Projection::builder("feed")
        .source(store.clone())
        .postgres(store.pool().clone(), model.clone())
        .policy(FailurePolicy::DeadLetter)
        .build()
        .unwrap()
        .spawn();
    assert!(
        handle.wait_for(head, WITHIN).await,
        "{:?} {:?}",
        handle.status(),
        handle.last_error()
    );
    let db = client(&url).await;
    // The ten before the poison were applied, rolled back with it, and applied again: once.
    assert_eq!(ledger(&db, "feed_v1_applied").await, (20, 1));
    assert!(model.applies() >= 21);
    let dead = PostgresCheckpoints::new(store.pool().clone())
        .await
        .unwrap()
        .dead_letters("feed")
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].position,
            dead[0].event_type.as_str(),
            dead[0].stream.as_str()
        ),
        (poison, "Poison", "feed-1")
    );
    assert!(dead[0].error.contains("refuses"), "{}", dead[0].error);
    assert_eq!(checkpoint(&db, "feed").await, Some((head, Some(1))));
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_the_next_tables_and_drops_the_old_ones() {
    let Some(url) = fresh_postgres("pgproj_swap").await else {
        return;
    };
    let store = store(&url).await;
    let head = append(&store, "catalog-1", "PriceUpdated", 120).await;
    let (handle, task) = Projection::builder("shop")
        .source(store.clone())
        .postgres(store.pool().clone(), Ledger::default())
        .batch(32)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WITHIN).await);
    let db = client(&url).await;
    assert_eq!(tables_like(&db, "shop_v1_").await, ["shop_v1_applied"]);
    handle.rebuild();
    // The swap names the new tables before it changes the status: the status watch wakes
    // this wait once they are in.
    let status = handle
        .wait_for_status(WITHIN, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(
        handle.tables().version(),
        2,
        "swapped within {WITHIN:?} (status {status:?})"
    );
    assert_eq!(
        relations_like(&db, "shop_v1_").await,
        Vec::<String>::new(),
        "old tables, views and sequences dropped"
    );
    assert_eq!(
        relations_like(&db, "shop_v2_").await,
        [
            "shop_v2_applied",
            "shop_v2_applied_pkey",
            "shop_v2_applied_seq_seq",
            "shop_v2_repeated",
            "shop_v2_ticket"
        ]
    );
    assert_eq!(tables_like(&db, "shop_v2_").await, ["shop_v2_applied"]);
    assert_eq!(ledger(&db, "shop_v2_applied").await, (120, 1));
    assert_eq!(checkpoint(&db, "shop").await, Some((head, Some(2))));
    assert_eq!(checkpoint(&db, "shop#rebuild").await, None);
    // The swapped-in copy follows the log.
    let head = append(&store, "catalog-2", "PriceUpdated", 3).await;
    assert!(handle.wait_for(head, WITHIN).await);
    assert_eq!(ledger(&db, "shop_v2_applied").await, (123, 1));
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn pg_checkpoints_compare_and_set_and_record_dead_letters() {
    let Some(url) = fresh_postgres("pgproj_cp").await else {
        return;
    };
    let store = store(&url).await;
    let cps = PostgresCheckpoints::new(store.pool().clone())
        .await
        .unwrap();
    let cps = {
        drop(cps);
        PostgresCheckpoints::new(store.pool().clone())
            .await
            .unwrap() // idempotent
    };
    let name = "relay";
    assert_eq!(cps.load(name).await.unwrap(), None);
    let a = Checkpoint {
        position: GlobalPosition::new(1, 7),
        version: 1,
    };
    let b = Checkpoint {
        position: GlobalPosition::new(2, 9),
        version: 1,
    };
    assert!(cps.save(name, Checkpoint::default(), a).await.unwrap());
    assert!(
        !cps.save(name, Checkpoint::default(), b).await.unwrap(),
        "stale expectation"
    );
    assert_eq!(cps.load(name).await.unwrap(), Some(a));
    assert!(cps.save(name, a, b).await.unwrap());
    assert!(!cps.save(name, a, b).await.unwrap());
    assert_eq!(cps.load(name).await.unwrap(), Some(b));

    let head = append(&store, "orders-1", "Placed", 1).await;
    let event = store
        .read_all(GlobalPosition::START, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(event.position, head);
    let c = Checkpoint {
        position: head,
        version: 1,
    };
    assert!(
        !cps.dead_letter(name, &event, "boom", 3, a, c)
            .await
            .unwrap()
    );
    assert!(
        cps.dead_letters(name).await.unwrap().is_empty(),
        "rolled back"
    );
    assert!(
        cps.dead_letter(name, &event, "boom", 3, b, c)
            .await
            .unwrap()
    );
    assert_eq!(cps.load(name).await.unwrap(), Some(c));
    let dead = cps.dead_letters(name).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].event_id,
            dead[0].attempts,
            dead[0].error.as_str(),
            dead[0].version
        ),
        (event.id, 3, "boom", 1)
    );
    assert!(cps.dead_letters("other").await.unwrap().is_empty());
}

/// The ledger, except that `Poison` passes in version 1 and, in version 2, waits for a permit
/// (saying it got there) and then fails for good.
#[derive(Clone)]
struct Gated {
    inner: Ledger,
    reached: Arc<Notify>,
    open: Arc<Semaphore>,
}

impl PostgresProjection for Gated {
    async fn create(&self, tx: &Transaction<'_>, tables: &Tables) -> Result<(), ApplyError> {
        self.inner.create(tx, tables).await
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.event_type != "Poison" {
            return self.inner.apply(tx, tables, event).await;
        }
        if tables.version() == 2 {
            self.reached.notify_one();
            let _permit = self.open.acquire().await;
            return Err(ApplyError::permanent("version 2 refuses the poison"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_rebuild_never_drops_tables_the_live_row_holds() {
    let Some(url) = fresh_postgres("pgproj_keep").await else {
        return;
    };
    let store = store(&url).await;
    append(&store, "feed-1", "Liked", 10).await;
    append(&store, "feed-1", "Poison", 1).await;
    let head = append(&store, "feed-1", "Liked", 10).await;
    let model = Gated {
        inner: Ledger::default(),
        reached: Arc::new(Notify::new()),
        open: Arc::new(Semaphore::new(0)),
    };
    let (handle, task) = Projection::builder("feed")
        .source(store.clone())
        .postgres(store.pool().clone(), model.clone())
        .batch(4)
        .policy(FailurePolicy::stop())
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WITHIN).await);
    handle.rebuild();
    tokio::time::timeout(WITHIN, model.reached.notified())
        .await
        .expect("the rebuild reaches the poison");
    // Meanwhile another runner made version 2 live (as a swap does).
    let db = client(&url).await;
    db.execute(
        "UPDATE tp_checkpoints SET version = 2 WHERE name = 'feed'",
        &[],
    )
    .await
    .unwrap();
    model.open.add_permits(1);
    // The abandon refuses to drop what the live row names: the runner reloads it instead.
    handle
        .wait_for_status(WITHIN, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(handle.tables(), Tables::new("feed", 2));
    assert!(!relations_like(&db, "feed_v2_").await.is_empty());
    assert_eq!(checkpoint(&db, "feed#rebuild").await, None);
    handle.shutdown();
    task.await.unwrap().unwrap();
}
