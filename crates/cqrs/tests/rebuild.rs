//! Rebuild and swap: the next version of a read model is built from the start of the log
//! beside the live one, which keeps up with appends; when the rebuild reaches the live
//! position the two are swapped in one transaction and the old tables dropped. A rebuild
//! interrupted by a shutdown (or a crash) is discarded when the runner starts again. A rebuild
//! whose own copy fails waits out what may pass and is abandoned for what cannot, without
//! ever dropping the version the live row holds.

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
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

/// Decides, for each checkpoint write (name, expected, new), whether it fails and with what.
type Script = Box<dyn FnMut(&str, Checkpoint, Checkpoint) -> Option<BoxError> + Send>;

/// Checkpoints in memory whose writes fail as a script says (a checkpoint service that is
/// down for a while, or refuses for good).
#[derive(Clone)]
struct Scripted {
    inner: MemoryCheckpoints,
    script: Arc<Mutex<Script>>,
}

impl Scripted {
    fn new(
        script: impl FnMut(&str, Checkpoint, Checkpoint) -> Option<BoxError> + Send + 'static,
    ) -> Self {
        Self {
            inner: MemoryCheckpoints::new(),
            script: Arc::new(Mutex::new(Box::new(script))),
        }
    }
}

impl CheckpointStore for Scripted {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, BoxError> {
        self.inner.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        let failure = (self.script.lock().unwrap())(name, expected, new);
        if let Some(e) = failure {
            return Err(e);
        }
        self.inner.save(name, expected, new).await
    }

    async fn dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        self.inner
            .dead_letter(name, event, error, attempts, expected, new)
            .await
    }
}

/// Whether a write is a rebuild's advance (not its opening, not its reset).
fn rebuild_advance(name: &str, new: Checkpoint) -> bool {
    name == "search#rebuild" && new.position > GlobalPosition::START && new != Checkpoint::default()
}

/// Runs an external projection over 40 events with `checkpoints`, asks for a rebuild and
/// returns once it is swapped in or abandoned, with the handle and the runner's task.
async fn rebuild_with(
    store: &Arc<InMemoryStore>,
    checkpoints: Scripted,
) -> (
    tower_patterns_cqrs::ProjectionHandle,
    tokio::task::JoinHandle<Result<(), tower_patterns_cqrs::ProjectionError>>,
) {
    let head = append_n(&**store, "shop", 40).await;
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints, Deliveries::default())
        .batch(8)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    handle.rebuild();
    // Long enough for every attempt of a rebuild that keeps failing (paused time).
    handle
        .wait_for_status(Duration::from_secs(600), |_| {
            handle.tables().version() == 2 || handle.last_error().is_some()
        })
        .await;
    (handle, task)
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_whose_writes_fail_for_a_while_waits_them_out_and_is_swapped_in()
-> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    let failed = Arc::new(Mutex::new(0u32));
    let checkpoints = Scripted::new({
        let failed = failed.clone();
        move |name, _, new| {
            let mut failed = failed.lock().unwrap();
            (rebuild_advance(name, new) && *failed < 3).then(|| {
                *failed += 1;
                "checkpoint service unavailable".into()
            })
        }
    });
    let (handle, task) = rebuild_with(&store, checkpoints.clone()).await;
    assert_eq!(*failed.lock().unwrap(), 3);
    assert!(handle.last_error().is_none(), "{:?}", handle.last_error());
    assert_eq!(handle.tables().version(), 2);
    // The live copy goes on after the swap.
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        checkpoints.load("search").await?.map(|c| c.version),
        Some(2)
    );
    handle.shutdown();
    task.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_whose_writes_keep_failing_is_abandoned_after_its_attempts_in_a_row()
-> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    let failed = Arc::new(Mutex::new(0u32));
    let checkpoints = Scripted::new({
        let failed = failed.clone();
        move |name, _, new| {
            rebuild_advance(name, new).then(|| {
                *failed.lock().unwrap() += 1;
                "checkpoint service unavailable".into()
            })
        }
    });
    let (handle, task) = rebuild_with(&store, checkpoints.clone()).await;
    let error = handle.last_error().expect("abandoned");
    assert!(
        error.to_string().contains("checkpoint service unavailable"),
        "{error}"
    );
    assert_eq!(*failed.lock().unwrap(), 20);
    assert_eq!(handle.tables().version(), 1);
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        checkpoints.load("search").await?.map(|c| c.version),
        Some(1)
    );
    handle.shutdown();
    task.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_whose_advance_fails_for_good_is_abandoned_at_once() -> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    let failed = Arc::new(Mutex::new(0u32));
    let checkpoints = Scripted::new({
        let failed = failed.clone();
        move |name, _, new| {
            rebuild_advance(name, new).then(|| {
                *failed.lock().unwrap() += 1;
                ApplyError::permanent("checkpoint quota exceeded").into()
            })
        }
    });
    let (handle, task) = rebuild_with(&store, checkpoints.clone()).await;
    let error = handle.last_error().expect("abandoned");
    assert!(
        error.to_string().contains("checkpoint quota exceeded"),
        "{error}"
    );
    assert_eq!(*failed.lock().unwrap(), 1);
    assert_eq!(handle.tables().version(), 1);
    assert_eq!(
        checkpoints
            .load("search#rebuild")
            .await?
            .unwrap_or_default(),
        Checkpoint::default()
    );
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    handle.shutdown();
    task.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_whose_swap_fails_for_good_is_abandoned_and_the_live_copy_goes_on()
-> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    // The swap's first write: the live checkpoint taking version 2.
    let failed = Arc::new(Mutex::new(0u32));
    let checkpoints = Scripted::new({
        let failed = failed.clone();
        move |name, _, new| {
            (name == "search" && new.version == 2).then(|| {
                *failed.lock().unwrap() += 1;
                ApplyError::permanent("checkpoint schema rejects version 2").into()
            })
        }
    });
    let (handle, task) = rebuild_with(&store, checkpoints.clone()).await;
    let error = handle.last_error().expect("abandoned");
    assert!(error.to_string().contains("rejects version 2"), "{error}");
    assert_eq!(*failed.lock().unwrap(), 1);
    assert_eq!(handle.tables().version(), 1);
    assert_eq!(
        checkpoints
            .load("search#rebuild")
            .await?
            .unwrap_or_default(),
        Checkpoint::default()
    );
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        checkpoints.load("search").await?.map(|c| c.version),
        Some(1)
    );
    handle.shutdown();
    task.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_external_swap_whose_second_write_fails_stands() -> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    // The swap's second write: the rebuild's row reset once the live one took it.
    let failed = Arc::new(Mutex::new(0u32));
    let checkpoints = Scripted::new({
        let failed = failed.clone();
        move |name, expected, new| {
            let mut failed = failed.lock().unwrap();
            (name == "search#rebuild"
                && new == Checkpoint::default()
                && expected.position > GlobalPosition::START
                && *failed == 0)
                .then(|| {
                    *failed += 1;
                    ApplyError::permanent("checkpoint service gone").into()
                })
        }
    });
    let (handle, task) = rebuild_with(&store, checkpoints.clone()).await;
    assert_eq!(*failed.lock().unwrap(), 1);
    assert!(handle.last_error().is_none(), "{:?}", handle.last_error());
    assert_eq!(handle.tables().version(), 2);
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        checkpoints.load("search").await?,
        Some(Checkpoint {
            position: later,
            version: 2
        })
    );
    handle.shutdown();
    task.await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_rebuild_never_drops_tables_the_live_row_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let model = dir.path().join("model.db");
    append_n(&*store, "shop", 20).await;
    append(&*store, "poison", vec![event(&Shop::Poison {})]).await;
    let head = append_n(&*store, "more", 20).await;
    // The poison fails only in the rebuild's copy, which its policy abandons after retries.
    let ledger = Ledger {
        only_version: Some(2),
        ..Ledger::failing(ApplyErrorKind::Transient)
    };
    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, ledger)
        .batch(8)
        .policy(FailurePolicy::retry(3))
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    handle.rebuild();
    handle
        .wait_for_status(WAIT, |s| matches!(s, Status::Retrying { attempt: 1, .. }))
        .await;
    // Meanwhile another runner on the same file made version 2 live (as after a swap).
    let conn = rusqlite::Connection::open(&model).unwrap();
    conn.execute(
        "UPDATE tp_checkpoints SET version = 2 WHERE name = 'ledger'",
        [],
    )
    .unwrap();
    drop(conn);
    // The abandon refuses to drop what the live row names: the runner reloads it instead.
    handle
        .wait_for_status(WAIT, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(handle.tables(), Tables::new("ledger", 2));
    assert_eq!(objects(&model, "ledger_v2_"), ["ledger_v2_seen"]);
    assert_eq!(checkpoint_row(&model, "ledger#rebuild"), None);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn while_a_rebuild_waits_out_a_failure_the_live_copy_goes_on() -> Result<(), BoxError> {
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 40).await;
    let down = Arc::new(AtomicBool::new(true));
    let failed = Arc::new(AtomicU32::new(0));
    let checkpoints = Scripted::new({
        let (down, failed) = (down.clone(), failed.clone());
        move |name, _, new| {
            (rebuild_advance(name, new) && down.load(Ordering::SeqCst)).then(|| {
                failed.fetch_add(1, Ordering::SeqCst);
                "checkpoint service unavailable".into()
            })
        }
    });
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), Deliveries::default())
        .batch(8)
        .build()?
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    handle.rebuild();
    // Six failures in a row: the rebuild's backoff is now seconds long.
    let deadline = tokio::time::Instant::now() + WAIT;
    while failed.load(Ordering::SeqCst) < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild stopped trying"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    let later = append_n(&*store, "later", 3).await;
    assert!(handle.wait_for(later, Duration::from_millis(100)).await);
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(
        matches!(handle.status(), Status::Rebuilding { .. }),
        "{:?}",
        handle.status()
    );
    assert!(handle.last_error().is_none(), "{:?}", handle.last_error());
    // The service comes back: the rebuild goes on from where it stood and is swapped in.
    down.store(false, Ordering::SeqCst);
    handle
        .wait_for_status(WAIT, |_| handle.tables().version() == 2)
        .await;
    assert_eq!(handle.tables().version(), 2);
    assert_eq!(
        checkpoints.load("search").await?,
        Some(Checkpoint {
            position: later,
            version: 2
        })
    );
    handle.shutdown();
    task.await??;
    Ok(())
}
