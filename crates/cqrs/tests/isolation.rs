//! Acceptance: "a projection that fails on one event follows its policy while the others keep
//! up". Three projections read one store; one of them fails on the `Poison` event, under each
//! policy in turn (retry three times then dead-letter; stop; retry for ever). The other two
//! reach `Live` with no lag, and the failing one shows its dead letter, its stop or its
//! retries, counted in the metrics.

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use runner_support::{
    Ledger, Shop, append, append_n, dead_letters, event, metric, metrics_now, seen,
};
use rusqlite::Connection;
use tokio::task::JoinHandle;
use tower_patterns_core::{
    backoff::Backoff,
    observe::{Health, StateHandle},
};
use tower_patterns_cqrs::{
    FailurePolicy, Lag, Projection, ProjectionError, ProjectionHandle, Status,
    projection::{ApplyErrorKind, Exhausted},
};
use tower_patterns_eventstore::{GlobalPosition, InMemoryStore};

const WAIT: Duration = Duration::from_secs(600);

struct Log {
    store: Arc<InMemoryStore>,
    /// The last event before the poison.
    before: GlobalPosition,
    poison: GlobalPosition,
    head: GlobalPosition,
}

/// 50 products, the poison (stream `poison`, version 1), 50 more.
async fn log() -> Log {
    let store = Arc::new(InMemoryStore::new());
    let before = append_n(&*store, "shop", 50).await;
    let poison = append(&*store, "poison", vec![event(&Shop::Poison {})]).await;
    let head = append_n(&*store, "more", 50).await;
    Log {
        store,
        before,
        poison,
        head,
    }
}

struct Running {
    handle: ProjectionHandle,
    conn: Arc<Mutex<Connection>>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

fn spawn(log: &Log, name: &str, policy: FailurePolicy, ledger: Ledger) -> Running {
    let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
    let (handle, task) = Projection::builder(name)
        .source(log.store.clone())
        .sqlite_connection(conn.clone(), ledger)
        .batch(16)
        .policy(policy)
        .build()
        .unwrap()
        .spawn();
    Running { handle, conn, task }
}

/// Two healthy projections beside the failing one: both get everything and go live.
fn spawn_others(log: &Log) -> [Running; 2] {
    [
        spawn(log, "search", FailurePolicy::default(), Ledger::default()),
        spawn(log, "stats", FailurePolicy::default(), Ledger::default()),
    ]
}

async fn assert_keep_up(log: &Log, others: &[Running]) {
    for o in others {
        let name = o.handle.name().to_owned();
        assert!(o.handle.wait_for(log.head, WAIT).await, "{name}");
        let status = o.handle.wait_for_status(WAIT, |s| *s == Status::Live).await;
        assert_eq!(status, Status::Live, "{name}");
        assert_eq!(o.handle.health(), Health::Ready);
        assert_eq!(o.handle.lag().await.unwrap(), Lag::default(), "{name}");
        let rows = seen(&o.conn.lock().unwrap(), &o.handle.tables());
        assert_eq!(rows.len(), 101, "{name}");
    }
}

/// The metrics of the two healthy projections (read once, at the end).
/// Adds a snapshot to `seen`. A snapshot drains the recorder (counters and gauges go back
/// to 0), so counters (`_total`) add up across snapshots and gauges keep the value seen last.
fn take(snap: &Snapshotter, seen: &mut HashMap<(String, String), f64>) {
    for (key, value) in metrics_now(snap) {
        if key.0.ends_with("_total") {
            *seen.entry(key).or_default() += value;
        } else {
            seen.insert(key, value);
        }
    }
}

fn assert_others_counted(seen: &HashMap<(String, String), f64>, applied: f64) {
    for name in ["search", "stats"] {
        let m = |what: &str| metric(seen, what, name);
        assert_eq!(
            m("tower_patterns_cqrs_applied_total"),
            Some(applied),
            "{name}"
        );
        assert_eq!(m("tower_patterns_cqrs_lag_events"), Some(0.0), "{name}");
        assert_eq!(m("tower_patterns_cqrs_retries_total"), Some(0.0), "{name}");
        assert_eq!(
            m("tower_patterns_cqrs_dead_letters_total"),
            Some(0.0),
            "{name}"
        );
    }
}

async fn shut_down(all: impl IntoIterator<Item = Running>) {
    for r in all {
        r.handle.shutdown();
        r.task.await.unwrap().unwrap();
    }
}

fn quick(policy: FailurePolicy) -> FailurePolicy {
    policy.backoff(
        Backoff::Exponential {
            base: Duration::from_millis(100),
            multiplier: 2.0,
        },
        Duration::from_secs(1),
    )
}

#[tokio::test(start_paused = true)]
async fn retry_three_times_then_dead_letter_goes_on_past_the_poison() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let log = log().await;
    let ledger = Ledger::failing(ApplyErrorKind::Transient);
    let bad = spawn(
        &log,
        "feed",
        quick(FailurePolicy::retry(3)).then(Exhausted::DeadLetter),
        ledger.clone(),
    );
    let others = spawn_others(&log);
    assert_keep_up(&log, &others).await;

    assert!(bad.handle.wait_for(log.head, WAIT).await);
    assert_eq!(
        dead_letters(&bad.conn.lock().unwrap(), "feed"),
        [(
            log.poison.index,
            "poison".to_owned(),
            1,
            "Poison".to_owned(),
            3
        )]
    );
    // Everything but the poison applied, once; the poison's own write was rolled back.
    let rows = seen(&bad.conn.lock().unwrap(), &bad.handle.tables());
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter()
            .all(|&(idx, n)| idx != log.poison.index && n == 1)
    );
    // Three attempts: the batch's, then two alone.
    assert_eq!(ledger.calls.load(Ordering::SeqCst), 100 + 3);
    assert_eq!(
        bad.handle
            .wait_for_status(WAIT, |s| *s == Status::Live)
            .await,
        Status::Live
    );
    let [a, b] = others;
    shut_down([bad, a, b]).await;
    let seen = metrics_now(&snap);
    assert_others_counted(&seen, 101.0);
    let m = |what: &str| metric(&seen, what, "feed");
    assert_eq!(m("tower_patterns_cqrs_retries_total"), Some(2.0));
    assert_eq!(m("tower_patterns_cqrs_dead_letters_total"), Some(1.0));
    assert_eq!(m("tower_patterns_cqrs_applied_total"), Some(100.0));
}

#[tokio::test(start_paused = true)]
async fn stop_holds_the_checkpoint_before_the_poison_until_resumed() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let log = log().await;
    let ledger = Ledger::failing(ApplyErrorKind::Permanent);
    let bad = spawn(&log, "feed", FailurePolicy::stop(), ledger.clone());
    let others = spawn_others(&log);
    assert_keep_up(&log, &others).await;

    let status = bad
        .handle
        .wait_for_status(WAIT, |s| matches!(s, Status::Stopped { .. }))
        .await;
    let Status::Stopped { error } = status else {
        panic!("{status:?}")
    };
    assert!(
        error.contains("stream poison at version 1, position 51"),
        "{error}"
    );
    assert_eq!(bad.handle.health(), Health::Unavailable);
    assert_eq!(bad.handle.position(), log.before);
    match bad.handle.last_error().as_deref() {
        Some(ProjectionError::Apply {
            stream,
            version,
            position,
            attempts,
            ..
        }) => assert_eq!(
            (stream.as_str(), *version, *position, *attempts),
            ("poison", 1, log.poison, 1)
        ),
        other => panic!("{other:?}"),
    }
    // Stopped for good: no time makes it move.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(bad.handle.position(), log.before);
    // While stopped the runner measures its lag once a second: the gauge and the report show
    // the poison and the 50 after it, and follow the log as it grows.
    let mut so_far = HashMap::new();
    let mut lag_gauge = || {
        take(&snap, &mut so_far);
        metric(&so_far, "tower_patterns_cqrs_lag_events", "feed")
    };
    assert_eq!(lag_gauge(), Some(51.0));
    assert_eq!(bad.handle.report().value("lag_events"), Some(51.0));
    let later = append_n(&*log.store, "later", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lag_gauge(), Some(55.0));
    assert_eq!(bad.handle.report().value("lag_events"), Some(55.0));
    assert_eq!(
        bad.handle.lag().await.unwrap().events,
        55,
        "the poison, the 50 after it and the 4 appended while stopped"
    );
    assert_eq!(
        seen(&bad.conn.lock().unwrap(), &bad.handle.tables()).len(),
        50
    );
    assert!(dead_letters(&bad.conn.lock().unwrap(), "feed").is_empty());
    assert_eq!(bad.handle.report().state, "stopped");

    // The cause fixed, resume tries the poison again: it applies and the rest follows.
    ledger.cured.store(true, Ordering::SeqCst);
    bad.handle.resume();
    assert!(bad.handle.wait_for(later, WAIT).await);
    assert_eq!(
        seen(&bad.conn.lock().unwrap(), &bad.handle.tables()).len(),
        105
    );
    let [a, b] = others;
    shut_down([bad, a, b]).await;
    take(&snap, &mut so_far);
    let seen = so_far;
    assert_others_counted(&seen, 105.0);
    let m = |what: &str| metric(&seen, what, "feed");
    assert_eq!(m("tower_patterns_cqrs_retries_total"), Some(0.0));
    assert_eq!(m("tower_patterns_cqrs_dead_letters_total"), Some(0.0));
    assert_eq!(m("tower_patterns_cqrs_applied_total"), Some(105.0));
}

#[tokio::test(start_paused = true)]
async fn retry_for_ever_shows_its_attempts_and_holds_the_checkpoint() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let log = log().await;
    let ledger = Ledger::failing(ApplyErrorKind::Transient);
    let bad = spawn(&log, "feed", quick(FailurePolicy::retry(0)), ledger.clone());
    let others = spawn_others(&log);
    assert_keep_up(&log, &others).await;

    let status = bad
        .handle
        .wait_for_status(
            WAIT,
            |s| matches!(s, Status::Retrying { attempt, .. } if *attempt >= 20),
        )
        .await;
    let Status::Retrying { attempt, error } = status else {
        panic!("{status:?}")
    };
    assert!(error.contains("position 51"), "{error}");
    assert_eq!(bad.handle.health(), Health::Degraded);
    assert_eq!(bad.handle.position(), log.before);
    // Measured once a second while retrying: the poison and the 50 after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut so_far = HashMap::new();
    take(&snap, &mut so_far);
    assert_eq!(
        metric(&so_far, "tower_patterns_cqrs_lag_events", "feed"),
        Some(51.0)
    );
    assert_eq!(bad.handle.report().value("lag_events"), Some(51.0));
    assert!(dead_letters(&bad.conn.lock().unwrap(), "feed").is_empty());

    ledger.cured.store(true, Ordering::SeqCst);
    assert!(bad.handle.wait_for(log.head, WAIT).await);
    assert_eq!(
        bad.handle
            .wait_for_status(WAIT, |s| *s == Status::Live)
            .await,
        Status::Live
    );
    let [a, b] = others;
    shut_down([bad, a, b]).await;
    take(&snap, &mut so_far);
    let seen = so_far;
    assert_others_counted(&seen, 101.0);
    let retries = metric(&seen, "tower_patterns_cqrs_retries_total", "feed").unwrap();
    assert!(retries >= f64::from(attempt), "{retries} {attempt}");
    assert_eq!(
        metric(&seen, "tower_patterns_cqrs_dead_letters_total", "feed"),
        Some(0.0)
    );
}
