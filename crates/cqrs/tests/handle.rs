//! The projection's handle: its report and health, shutdown before and during a run, a
//! failure to start, errors of the event store retried with a backoff (shown in the status),
//! the lag measured at most once a second while behind (and never delaying a retry), and
//! `wait_for` woken by the commit.

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use metrics_util::debugging::DebuggingRecorder;
use runner_support::{Ledger, append_n, metric, metrics_now, seen};
use tower_patterns_core::BoxError;
use tower_patterns_core::observe::{Health, StateHandle};
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, ExternalProjection, MemoryCheckpoints, Projection,
    ProjectionError, SqliteProjection, Status, Tables,
};
use tower_patterns_eventstore::{
    AppendResult, Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition,
    InMemoryStore, RecordedEvent, Snapshot,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(600);

fn memory() -> Arc<Mutex<rusqlite::Connection>> {
    Arc::new(Mutex::new(rusqlite::Connection::open_in_memory().unwrap()))
}

#[test]
fn each_status_has_a_health_and_a_word() {
    let cases = [
        (Status::Starting, Health::Degraded, "starting"),
        (Status::Standby, Health::Degraded, "standby"),
        (Status::CatchingUp, Health::Ready, "catching_up"),
        (Status::Live, Health::Ready, "live"),
        (
            Status::Retrying {
                attempt: 2,
                error: "x".into(),
            },
            Health::Degraded,
            "retrying",
        ),
        (
            Status::Stopped { error: "x".into() },
            Health::Unavailable,
            "stopped",
        ),
        (
            Status::Rebuilding {
                position: GlobalPosition::START,
            },
            Health::Ready,
            "rebuilding",
        ),
        (Status::ShutDown, Health::Unavailable, "shut_down"),
    ];
    for (status, health, word) in cases {
        assert_eq!((status.health(), status.as_str()), (health, word));
    }
}

#[tokio::test(start_paused = true)]
async fn the_report_carries_position_version_and_lag_and_sets_the_gauges() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 12).await;
    let (handle, task) = Projection::builder("catalog")
        .source(store.clone())
        .sqlite_connection(memory(), Ledger::default())
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    handle.wait_for_status(WAIT, |s| *s == Status::Live).await;
    assert_eq!(StateHandle::name(&handle), "catalog");
    assert_eq!(handle.name(), "catalog");
    assert_eq!(handle.pattern(), "cqrs");
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(
        handle.report().to_json(),
        r#"{"pattern":"cqrs","name":"catalog","health":"ready","state":"live","values":{"position":12.0,"commit":0.0,"version":1.0,"lag_events":0.0,"lag_seconds":0.0}}"#
    );
    let debug = format!("{handle:?}");
    assert!(
        debug.contains("catalog") && debug.contains("Live"),
        "{debug}"
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
    let seen = metrics_now(&snap);
    assert_eq!(
        metric(&seen, "tower_patterns_cqrs_applied_total", "catalog"),
        Some(12.0)
    );
    assert_eq!(
        metric(&seen, "tower_patterns_cqrs_lag_seconds", "catalog"),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_before_the_run_returns_at_once_and_resume_is_a_no_op_unless_stopped() {
    let store = Arc::new(InMemoryStore::new());
    append_n(&*store, "shop", 3).await;
    let ledger = Ledger::default();
    let projection = Projection::builder("catalog")
        .source(store.clone())
        .sqlite_connection(memory(), ledger.clone())
        .build()
        .unwrap();
    let handle = projection.handle();
    handle.resume();
    handle.shutdown();
    projection.run().await.unwrap();
    assert_eq!(handle.status(), Status::ShutDown);
    assert_eq!(ledger.calls.load(Ordering::SeqCst), 0);
    assert_eq!(handle.position(), GlobalPosition::START);
}

struct BadSchema;

impl SqliteProjection for BadSchema {
    fn create(&self, tx: &rusqlite::Transaction<'_>, _: &Tables) -> Result<(), ApplyError> {
        tx.execute_batch("CREATE TABLE oops (")?;
        Ok(())
    }

    fn apply(
        &self,
        _: &rusqlite::Transaction<'_>,
        _: &Tables,
        _: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_projection_whose_tables_cannot_be_created_does_not_start() {
    let store = Arc::new(InMemoryStore::new());
    let projection = Projection::builder("catalog")
        .source(store)
        .sqlite_connection(memory(), BadSchema)
        .build()
        .unwrap();
    let handle = projection.handle();
    let err = projection.run().await.unwrap_err();
    assert!(matches!(err, ProjectionError::Database(_)), "{err:?}");
    assert!(matches!(handle.status(), Status::Stopped { .. }));
    assert_eq!(handle.health(), Health::Unavailable);
}

/// An in-memory store whose `read_all` fails while `failures` is above zero, and which
/// counts its `head` queries.
#[derive(Clone, Default)]
struct Flaky {
    inner: InMemoryStore,
    failures: Arc<AtomicU32>,
    heads: Arc<AtomicU32>,
    /// While set, `count_after` (the lag's measurement) never answers: a database that is
    /// down, whose pool waits.
    hang_counts: Arc<AtomicBool>,
}

impl EventStore for Flaky {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        self.inner.read_stream(stream, from, direction, max).await
    }
    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Error::Invalid("connection lost".into()));
        }
        self.inner.read_all(after, max).await
    }
    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        self.inner.find_event(id).await
    }
    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        self.inner.stream_version(stream).await
    }
    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        self.inner.stream_metadata(stream).await
    }
    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        self.inner.set_stream_metadata(stream, metadata).await
    }
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        self.inner.save_snapshot(stream, snapshot).await
    }
    async fn head(&self) -> Result<Option<RecordedEvent>, Error> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head().await
    }
    async fn count_after(&self, after: GlobalPosition, limit: u64) -> Result<u64, Error> {
        if self.hang_counts.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.count_after(after, limit).await
    }
    async fn wait_for_events(&self, after: GlobalPosition) {
        self.inner.wait_for_events(after).await;
    }
}

#[tokio::test(start_paused = true)]
async fn errors_of_the_store_are_retried_with_a_backoff_and_shown_in_the_status() {
    let store = Arc::new(Flaky::default());
    let head = append_n(&*store, "shop", 30).await;
    store.failures.store(4, Ordering::SeqCst);
    let conn = memory();
    let (handle, task) = Projection::builder("catalog")
        .source(store.clone())
        .sqlite_connection(conn.clone(), Ledger::default())
        .build()
        .unwrap()
        .spawn();
    let status = handle
        .wait_for_status(WAIT, |s| matches!(s, Status::Retrying { attempt: 4, .. }))
        .await;
    let Status::Retrying { error, .. } = &status else {
        panic!("{status:?}")
    };
    assert!(error.contains("connection lost"), "{error}");
    assert_eq!(handle.health(), Health::Degraded);
    let started = tokio::time::Instant::now();
    assert!(handle.wait_for(head, WAIT).await);
    // The fourth retry waited 100 ms · 2³ = 800 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(800));
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    assert_eq!(seen(&conn.lock().unwrap(), &handle.tables()).len(), 30);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn while_behind_the_lag_is_measured_at_most_once_a_second() {
    let store = Arc::new(Flaky::default());
    let head = append_n(&*store, "shop", 500).await;
    let (handle, task) = Projection::builder("catalog")
        .source(store.clone())
        .sqlite_connection(memory(), Ledger::default())
        .batch(10)
        .build()
        .unwrap()
        .spawn();
    // Fifty full pages, in no time at all (paused): one measurement.
    assert!(handle.wait_for(head, WAIT).await);
    assert_eq!(store.heads.load(Ordering::SeqCst), 1);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn wait_for_wakes_on_the_commit_not_on_a_polling_interval() {
    let store = Arc::new(InMemoryStore::new());
    let (handle, task) = Projection::builder("catalog")
        .source(store.clone())
        .sqlite_connection(memory(), Ledger::default())
        .build()
        .unwrap()
        .spawn();
    handle.wait_for_status(WAIT, |s| *s == Status::Live).await;
    let at = append_n(&*store, "shop", 1).await;
    let started = tokio::time::Instant::now();
    assert!(handle.wait_for(at, Duration::from_secs(3600)).await);
    // Paused time moves only when every task waits on a timer: none did.
    assert_eq!(started.elapsed(), Duration::ZERO);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// Checkpoints in memory whose first `failures` advances fail (the database is down).
#[derive(Clone, Default)]
struct Down {
    inner: MemoryCheckpoints,
    failures: Arc<AtomicU32>,
}

impl CheckpointStore for Down {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, BoxError> {
        self.inner.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        let failing = new.position > GlobalPosition::START
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            return Err("database is down".into());
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

struct Nothing;

impl ExternalProjection for Nothing {
    async fn apply(&self, _: &RecordedEvent) -> Result<(), ApplyError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_lag_measurement_that_hangs_does_not_put_off_the_next_try() {
    let store = Arc::new(Flaky::default());
    let head = append_n(&*store, "shop", 10).await;
    // The read model's database is down, and so is the store's (the same database): the
    // lag cannot be measured while the runner waits to try again.
    store.hang_counts.store(true, Ordering::SeqCst);
    let checkpoints = Down::default();
    checkpoints.failures.store(3, Ordering::SeqCst);
    let (handle, task) = Projection::builder("catalog")
        .source(store.clone())
        .external(checkpoints.clone(), Nothing)
        .build()
        .unwrap()
        .spawn();
    let started = tokio::time::Instant::now();
    // Three backoffs (100 ms doubling, jittered): the retries come on time.
    assert!(handle.wait_for(head, Duration::from_secs(60)).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(checkpoints.failures.load(Ordering::SeqCst), 0);
    handle.shutdown();
    task.await.unwrap().unwrap();
}
