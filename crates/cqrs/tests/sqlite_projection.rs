//! A SQLite read model kept by the runner: catch-up then live, restarts from the checkpoint
//! with nothing applied twice, two runners on one file, and the handle's position, status and
//! lag.

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use runner_support::{Ledger, append, append_n, checkpoint_row, created, seen, seen_at};
use tower_patterns_core::observe::{Health, StateHandle};
use tower_patterns_cqrs::{Lag, Projection, Status, Tables};
use tower_patterns_eventstore::{GlobalPosition, InMemoryStore, sqlite::SqliteStore};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn it_catches_up_from_the_start_then_applies_appends_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let model = dir.path().join("model.db");
    let head = append_n(&*store, "shop", 600).await;

    let projection = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, Ledger::default())
        .batch(100)
        .build()
        .unwrap();
    let handle = projection.handle();
    assert_eq!(handle.status(), Status::Starting);
    assert_eq!(handle.health(), Health::Degraded);
    let task = tokio::spawn(projection.run());

    assert!(handle.wait_for(head, WAIT).await, "{:?}", handle.status());
    assert_eq!(handle.position(), head);
    assert_eq!(
        runner_support::status_becomes(&handle, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(handle.lag().await.unwrap(), Lag::default());
    let tables = handle.tables();
    assert_eq!(tables, Tables::new("ledger", 1));
    let rows = seen_at(&model, &tables);
    assert_eq!(rows.len(), 600);
    assert!(rows.iter().all(|&(_, n)| n == 1));
    assert_eq!(checkpoint_row(&model, "ledger"), Some((0, head.index, 1)));

    // Live: appends are applied as they commit.
    let later = append(&*store, "other", vec![created(1), created(2)]).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(seen_at(&model, &tables).len(), 602);

    let report = handle.report();
    assert_eq!((report.pattern, report.state), ("cqrs", "live"));
    assert_eq!(report.value("position"), Some(later.index as f64));
    assert_eq!(report.value("version"), Some(1.0));
    assert_eq!(report.value("lag_events"), Some(0.0));

    handle.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(handle.status(), Status::ShutDown);
    assert_eq!(handle.health(), Health::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn wait_for_answers_at_once_with_zero_time_and_times_out_when_behind() {
    let store = Arc::new(InMemoryStore::new());
    let first = append_n(&*store, "shop", 3).await;
    let conn = Arc::new(Mutex::new(rusqlite::Connection::open_in_memory().unwrap()));
    let projection = Projection::builder("ledger")
        .source(store.clone())
        .sqlite_connection(conn.clone(), Ledger::default())
        .build()
        .unwrap();
    let handle = projection.handle();
    // Not running: nothing is applied, whatever the wait.
    assert!(!handle.wait_for(first, Duration::ZERO).await);
    assert!(!handle.wait_for(first, Duration::from_secs(5)).await);
    assert!(handle.wait_for(GlobalPosition::START, Duration::ZERO).await);

    let task = tokio::spawn(projection.run());
    assert!(handle.wait_for(first, WAIT).await);
    assert!(handle.wait_for(first, Duration::ZERO).await);
    let next = append_n(&*store, "shop", 1).await;
    assert!(handle.wait_for(next, WAIT).await);
    assert_eq!(seen(&conn.lock().unwrap(), &handle.tables()).len(), 4);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn after_a_crash_mid_batch_a_restart_continues_from_the_checkpoint_and_applies_nothing_twice()
{
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let model = dir.path().join("model.db");
    let head = append_n(&*store, "shop", 250).await;

    // The first runner crashes applying event 137: the middle of its second batch of 100.
    let fired = Arc::new(AtomicBool::new(false));
    let crashing = Ledger {
        panic_at: Some((137, fired.clone())),
        ..Ledger::default()
    };
    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, crashing.clone())
        .batch(100)
        .build()
        .unwrap()
        .spawn();
    let crash = task.await.unwrap_err();
    assert!(crash.is_panic());
    assert!(fired.load(Ordering::SeqCst));
    // The first batch committed with its checkpoint; the second rolled back whole.
    assert_eq!(handle.position(), GlobalPosition::new(0, 100));
    assert_eq!(checkpoint_row(&model, "ledger"), Some((0, 100, 1)));
    let tables = Tables::new("ledger", 1);
    assert_eq!(seen_at(&model, &tables).len(), 100);

    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, crashing)
        .batch(100)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    let rows = seen_at(&model, &tables);
    assert_eq!(
        rows,
        (1..=250).map(|i| (i, 1)).collect::<Vec<_>>(),
        "every event once"
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// The child of the crash test: runs the ledger until it hangs in the middle of a batch.
#[tokio::test]
async fn child_runner_until_killed() {
    let Ok(dir) = std::env::var("TP_CQRS_CRASH_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let store = Arc::new(SqliteStore::open(dir.join("events.db")).unwrap());
    let ledger = Ledger {
        stuck_at: Some(250),
        ..Ledger::default()
    };
    let projection = Projection::builder("ledger")
        .source(store)
        .sqlite(dir.join("model.db"), ledger)
        .batch(100)
        .build()
        .unwrap();
    let _ = projection.run().await;
    unreachable!("the ledger hangs at 250 until the parent kills the process");
}

#[tokio::test]
async fn a_runner_killed_mid_batch_loses_the_batch_whole_and_its_restart_applies_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let model = dir.path().join("model.db");
    let head = append_n(&*store, "shop", 400).await;

    let mut child = tower_patterns_testkit::process::ChildTest::spawn(
        "child_runner_until_killed",
        &[("TP_CQRS_CRASH_DIR", dir.path().to_str().unwrap())],
    );
    // Events 201 to 249 are applied in the open transaction of the third batch.
    child.wait_for("stuck 250", WAIT).await;
    child.kill9();
    let tables = Tables::new("ledger", 1);
    assert_eq!(checkpoint_row(&model, "ledger"), Some((0, 200, 1)));
    assert_eq!(seen_at(&model, &tables).len(), 200);

    let (handle, task) = Projection::builder("ledger")
        .source(store.clone())
        .sqlite(&model, Ledger::default())
        .batch(100)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    assert_eq!(
        seen_at(&model, &tables),
        (1..=400).map(|i| (i, 1)).collect::<Vec<_>>()
    );
    assert_eq!(checkpoint_row(&model, "ledger"), Some((0, 400, 1)));
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_read_model_file_apply_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let model = dir.path().join("model.db");
    let runner = || {
        Projection::builder("ledger")
            .source(store.clone())
            .sqlite(&model, Ledger::default())
            .batch(7)
            .build()
            .unwrap()
            .spawn()
    };
    let (a, task_a) = runner();
    let (b, task_b) = runner();
    let mut head = GlobalPosition::START;
    for round in 0..40 {
        head = append(
            &*store,
            &format!("s{round}"),
            (1..=10).map(created).collect(),
        )
        .await;
        tokio::task::yield_now().await;
    }
    assert!(a.wait_for(head, WAIT).await, "{:?}", a.status());
    assert!(b.wait_for(head, WAIT).await, "{:?}", b.status());
    let rows = seen_at(&model, &Tables::new("ledger", 1));
    assert_eq!(rows, (1..=400).map(|i| (i, 1)).collect::<Vec<_>>());
    a.shutdown();
    b.shutdown();
    task_a.await.unwrap().unwrap();
    task_b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_lag_counts_the_events_behind_and_the_seconds_between_them() {
    // A clock that moves 10 s per append: the head is 10 s after the first unapplied event.
    let t = Arc::new(Mutex::new(
        std::time::UNIX_EPOCH + Duration::from_secs(1_000_000),
    ));
    let clock = {
        let t = t.clone();
        move || {
            let mut t = t.lock().unwrap();
            *t += Duration::from_secs(10);
            *t
        }
    };
    let store = Arc::new(InMemoryStore::new().with_clock(clock));
    let projection = Projection::builder("ledger")
        .source(store.clone())
        .sqlite_connection(
            Arc::new(Mutex::new(rusqlite::Connection::open_in_memory().unwrap())),
            Ledger::default(),
        )
        .build()
        .unwrap();
    let handle = projection.handle();
    append_n(&*store, "shop", 3).await;
    // Not started: three events behind, 20 s between the first and the head.
    assert_eq!(
        handle.lag().await.unwrap(),
        Lag {
            events: 3,
            seconds: 20.0
        }
    );
    assert_eq!(handle.report().value("lag_events"), Some(3.0));
    let task = tokio::spawn(projection.run());
    assert_eq!(
        runner_support::status_becomes(&handle, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(handle.lag().await.unwrap(), Lag::default());
    assert_eq!(handle.report().value("lag_events"), Some(0.0));
    handle.shutdown();
    task.await.unwrap().unwrap();
}
