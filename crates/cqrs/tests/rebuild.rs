//! Rebuild and swap: the next version of a read model is built from the start of the log
//! beside the live one, which keeps up with appends; when the rebuild reaches the live
//! position the two are swapped in one transaction and the old tables dropped. A rebuild
//! interrupted by a shutdown (or a crash) is discarded when the runner starts again.

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use runner_support::{
    Ledger, Shop, append, append_n, checkpoint_row, created, event, objects, seen_at,
};
use tower_patterns_core::{BoxError, observe::StateHandle};
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, ExternalProjection, FailurePolicy, MemoryCheckpoints,
    Projection, SqliteProjection, Status, Tables, projection::ApplyErrorKind,
};
use tower_patterns_eventstore::{
    GlobalPosition, InMemoryStore, RecordedEvent, sqlite::SqliteStore,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_rebuild_while_appends_continue_swaps_in_tables_equal_to_a_fresh_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let model = dir.path().join("model.db");
    let head = append_n(&*store, "shop", 300).await;
    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, Ledger::default())
        .batch(16)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    assert_eq!(objects(&model, "ledger_v1_"), ["ledger_v1_seen"]);

    // Watch every status the runner shows from now on.
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (handle, statuses) = (handle.clone(), statuses.clone());
        tokio::spawn(async move {
            loop {
                let s = handle.wait_for_status(WAIT, |_| true).await;
                statuses.lock().unwrap().push(s.clone());
                let version = handle.tables().version();
                if version == 2 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    handle.rebuild();
    // Appends go on while the rebuild runs.
    let mut last = head;
    for round in 0..30 {
        last = append(
            &*store,
            &format!("s{round}"),
            (1..=5).map(created).collect(),
        )
        .await;
        tokio::task::yield_now().await;
    }
    let swapped = handle
        .wait_for_status(WAIT, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(handle.tables(), Tables::new("ledger", 2), "{swapped:?}");
    watcher.await.unwrap();
    let seen_statuses = statuses.lock().unwrap().clone();
    assert!(
        seen_statuses.iter().any(
            |s| matches!(s, Status::Rebuilding { position } if *position > GlobalPosition::START)
        ),
        "{seen_statuses:?}"
    );
    assert!(handle.wait_for(last, WAIT).await);

    // The old copy is gone, the checkpoint names version 2, the rebuild's row is gone.
    assert!(objects(&model, "ledger_v1_").is_empty());
    assert_eq!(objects(&model, "ledger_v2_"), ["ledger_v2_seen"]);
    assert_eq!(checkpoint_row(&model, "ledger"), Some((0, last.index, 2)));
    assert_eq!(checkpoint_row(&model, "ledger#rebuild"), None);

    // The swapped-in tables equal a fresh build of the whole log.
    let fresh = dir.path().join("fresh.db");
    let (fresh_handle, fresh_task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&fresh, Ledger::default())
        .build()
        .unwrap()
        .spawn();
    assert!(fresh_handle.wait_for(last, WAIT).await);
    let rebuilt = seen_at(&model, &Tables::new("ledger", 2));
    assert_eq!(rebuilt.len() as u64, last.index);
    assert_eq!(rebuilt, seen_at(&fresh, &Tables::new("ledger", 1)));
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(handle.report().value("version"), Some(2.0));

    // A second rebuild goes on to version 3.
    handle.rebuild();
    handle
        .wait_for_status(WAIT, |_| handle.tables().version() == 3)
        .await;
    assert!(objects(&model, "ledger_v2_").is_empty());
    assert_eq!(seen_at(&model, &Tables::new("ledger", 3)), rebuilt);
    for h in [handle, fresh_handle] {
        h.shutdown();
    }
    task.await.unwrap().unwrap();
    fresh_task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_interrupted_by_a_shutdown_is_discarded_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let model = dir.path().join("model.db");
    append_n(&*store, "shop", 20).await;
    let poison = append(&*store, "poison", vec![event(&Shop::Poison {})]).await;
    let head = append_n(&*store, "more", 20).await;
    // The poison fails only in version 2: the live copy passes it, the rebuild retries it
    // for ever.
    let ledger = Ledger {
        only_version: Some(2),
        ..Ledger::failing(ApplyErrorKind::Transient)
    };
    let build = |ledger: Ledger| {
        Projection::builder("ledger")
            .source(store.clone())
            .sqlite(&model, ledger)
            .batch(8)
            .policy(FailurePolicy::retry(0))
            .build()
            .unwrap()
            .spawn()
    };
    let (handle, task) = build(ledger.clone());
    assert!(handle.wait_for(head, WAIT).await);
    handle.rebuild();
    let retrying = handle
        .wait_for_status(WAIT, |s| matches!(s, Status::Retrying { attempt: 3, .. }))
        .await;
    assert!(matches!(retrying, Status::Retrying { .. }), "{retrying:?}");
    // The live copy stays live for readers: still version 1, at the head.
    assert_eq!(handle.tables(), Tables::new("ledger", 1));
    assert_eq!(handle.position(), head);
    assert_eq!(
        checkpoint_row(&model, "ledger#rebuild"),
        Some((0, poison.index - 1, 2))
    );
    assert_eq!(objects(&model, "ledger_v2_"), ["ledger_v2_seen"]);
    handle.shutdown();
    task.await.unwrap().unwrap();

    // The restarted runner drops the half-built copy; the live one is untouched.
    let (handle, task) = build(Ledger::default());
    assert!(handle.wait_for(head, WAIT).await);
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(checkpoint_row(&model, "ledger#rebuild"), None);
    assert!(objects(&model, "ledger_v2_").is_empty());
    assert_eq!(seen_at(&model, &Tables::new("ledger", 1)).len(), 41);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_its_policy_stops_is_abandoned_and_the_live_copy_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let model = dir.path().join("model.db");
    append_n(&*store, "shop", 20).await;
    let poison = append(&*store, "poison", vec![event(&Shop::Poison {})]).await;
    let head = append_n(&*store, "more", 20).await;
    let ledger = Ledger {
        only_version: Some(2),
        ..Ledger::failing(ApplyErrorKind::Permanent)
    };
    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, ledger)
        .batch(8)
        .policy(FailurePolicy::stop())
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    assert!(handle.last_error().is_none());
    handle.rebuild();
    let status = handle
        .wait_for_status(WAIT, |_| handle.last_error().is_some())
        .await;
    let error = handle.last_error().unwrap();
    assert!(
        error
            .to_string()
            .contains(&format!("of stream poison at version 1, position {poison}")),
        "{error} ({status:?})"
    );
    // The live copy goes on.
    let later = append_n(&*store, "later", 5).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(handle.tables(), Tables::new("ledger", 1));
    assert!(objects(&model, "ledger_v2_").is_empty());
    assert_eq!(checkpoint_row(&model, "ledger#rebuild"), None);
    assert_eq!(seen_at(&model, &Tables::new("ledger", 1)).len(), 46);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// The ledger, except that its tables cannot be created for version 2 (as a release whose
/// `create` is broken): the table is made, then the error rolls it back.
struct CreateFailsForV2(Ledger);

impl SqliteProjection for CreateFailsForV2 {
    fn create(&self, tx: &rusqlite::Transaction<'_>, tables: &Tables) -> Result<(), ApplyError> {
        self.0.create(tx, tables)?;
        if tables.version() == 2 {
            return Err(ApplyError::permanent("no room for version 2"));
        }
        Ok(())
    }

    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.0.apply(tx, tables, event)
    }
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_whose_tables_cannot_be_created_is_abandoned_and_the_live_copy_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let model = dir.path().join("model.db");
    let head = append_n(&*store, "shop", 20).await;
    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, CreateFailsForV2(Ledger::default()))
        .batch(8)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    handle.rebuild();
    handle
        .wait_for_status(WAIT, |_| handle.last_error().is_some())
        .await;
    let error = handle
        .last_error()
        .expect("the rebuild's failure is recorded");
    assert!(
        error.to_string().contains("no room for version 2"),
        "{error}"
    );
    // The live copy goes on, the failed copy leaves nothing behind.
    let later = append_n(&*store, "later", 5).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(handle.tables(), Tables::new("ledger", 1));
    assert!(objects(&model, "ledger_v2_").is_empty());
    assert_eq!(checkpoint_row(&model, "ledger#rebuild"), None);
    assert_eq!(seen_at(&model, &Tables::new("ledger", 1)).len(), 25);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// Counts deliveries per event.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<HashMap<u64, u32>>>);

impl ExternalProjection for Deliveries {
    async fn apply(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(event.position.index)
            .or_default() += 1;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_external_rebuild_replays_the_log_into_the_same_effect() -> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 40).await;
    let checkpoints = MemoryCheckpoints::new();
    let effect = Deliveries::default();
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .batch(8)
        .build()?
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    assert!(effect.0.lock().unwrap().values().all(|&n| n == 1));
    handle.rebuild();
    handle
        .wait_for_status(WAIT, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(handle.tables().version(), 2);
    // Every event delivered again (at-least-once: the effect must take repeats).
    let counts = effect.0.lock().unwrap().clone();
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|&n| n == 2), "{counts:?}");
    assert_eq!(
        checkpoints.load("search").await?,
        Some(Checkpoint {
            position: head,
            version: 2
        })
    );
    assert_eq!(
        checkpoints.load("search#rebuild").await?,
        Some(Checkpoint::default())
    );
    handle.shutdown();
    task.await??;
    Ok(())
}
