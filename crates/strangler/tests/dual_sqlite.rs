//! Dual writes between two real SQLite files: the secondary locked by another connection for
//! a while (writes go on, missed ones are recorded, both end equal), the version guard, the
//! reconciler against planted differences of each kind, bad input, and the handles' reports
//! and metrics. The crash test is in `dual_crash.rs`.
#![cfg(feature = "sqlite")]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rusqlite::Connection;
use tower::ServiceExt;
use tower_patterns_core::{
    backoff::Backoff,
    observe::{Health, StateHandle},
};
use tower_patterns_strangler::dual::{
    DifferenceKind, DualError, DualStatus, DualWrite, Reconciler, Row, RowStore, SqliteRows, Write,
};

use support::{every_row, outbox_len};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` every few milliseconds until it holds (real files, real time).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Files {
    _dir: tempfile::TempDir,
    primary: PathBuf,
    secondary: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    Files {
        primary: dir.path().join("monolith.db"),
        secondary: dir.path().join("users.db"),
        _dir: dir,
    }
}

fn stores(f: &Files) -> (SqliteRows, SqliteRows) {
    let primary = SqliteRows::open(&f.primary, "users").unwrap();
    // A locked secondary fails at once rather than after 5 s.
    let secondary = SqliteRows::open(&f.secondary, "users")
        .unwrap()
        .with_busy_timeout(Duration::ZERO)
        .unwrap();
    (primary, secondary)
}

fn dual(primary: SqliteRows, secondary: SqliteRows) -> DualWrite<SqliteRows> {
    DualWrite::builder("users")
        .primary(primary)
        .secondary(secondary)
        .backoff(
            Backoff::Constant(Duration::from_millis(5)),
            Duration::from_millis(20),
        )
        .missed_after(2)
        .poll(Duration::from_millis(5))
        .batch(16)
        .build()
        .unwrap()
}

/// Another connection holding the secondary's write lock: its writes fail as busy.
fn lock(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c
}

async fn write_a_day(dual: &DualWrite<SqliteRows>, n: usize) {
    for i in 0..n {
        let w = Write::put_json(format!("user:{i:03}"), &serde_json::json!({ "i": i })).unwrap();
        dual.clone().oneshot(w).await.unwrap();
    }
    for i in (0..n).step_by(7) {
        let w = Write::put_json(
            format!("user:{i:03}"),
            &serde_json::json!({ "i": i, "again": true }),
        );
        dual.clone().oneshot(w.unwrap()).await.unwrap();
    }
    for i in (3..n).step_by(11) {
        dual.clone()
            .oneshot(Write::delete(format!("user:{i:03}")))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_for_a_while_writes_go_on_and_reconciliation_makes_both_equal() {
    let f = files();
    let (primary, secondary) = stores(&f);
    let held = lock(&f.secondary);
    let dual = dual(primary.clone(), secondary.clone());
    let handle = dual.handle();
    // Every write is acknowledged while the secondary is locked.
    write_a_day(&dual, 60).await;
    assert_eq!(handle.written(), 60 + 9 + 6);
    eventually("every write recorded as missed", async || {
        handle.missed_count() == 75
    })
    .await;
    let missed = handle.missed(1_000).await.unwrap();
    assert_eq!(missed.len(), 75, "one record per write");
    assert!(missed.iter().all(|m| m.attempts >= 2));
    assert!(
        missed[0].last_error.as_deref().unwrap().contains("busy")
            || missed[0].last_error.as_deref().unwrap().contains("locked"),
        "{missed:?}"
    );
    assert_eq!(handle.status(), DualStatus::SecondaryFailing);
    assert_eq!(handle.health(), Health::Degraded);
    assert_eq!(handle.applied(), 0);
    assert!(every_row(&f.secondary).is_empty());

    // The worker goes away before the secondary returns: the reconciler repairs.
    handle.stop();
    assert!(handle.wait_stopped(WAIT).await);
    held.execute_batch("ROLLBACK").unwrap();
    let reconciler = Reconciler::builder("users")
        .primary(primary.clone())
        .secondary(secondary.clone())
        .batch(7)
        .repair(true)
        .build()
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(report.missing, 60, "{report:?}");
    assert_eq!((report.extra, report.differing), (0, 0));
    assert_eq!(report.repaired, 60);
    assert_eq!(report.cleared, 75, "every missed record cleared");
    assert!(handle.missed(1_000).await.unwrap().is_empty());
    assert_eq!(outbox_len(&f.primary), 0);
    let rows = every_row(&f.primary);
    assert_eq!(rows.len(), 60);
    assert_eq!(every_row(&f.secondary), rows, "both databases equal");
    assert!(reconciler.run_once().await.unwrap().is_clean());
    assert_eq!(reconciler.handle().health(), Health::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_catches_up_when_the_secondary_returns() {
    let f = files();
    let (primary, secondary) = stores(&f);
    let dual = dual(primary.clone(), secondary.clone());
    let handle = dual.handle();
    write_a_day(&dual, 20).await;
    assert!(handle.wait_idle(WAIT).await);
    assert_eq!(every_row(&f.secondary), every_row(&f.primary));

    let held = lock(&f.secondary);
    write_a_day(&dual, 40).await;
    eventually("missed while locked", async || handle.missed_count() > 0).await;
    assert!(!handle.wait_idle(Duration::from_millis(50)).await);
    drop(held); // the lock's transaction ends with its connection
    assert!(handle.wait_idle(WAIT).await, "{handle:?}");
    assert_eq!(handle.missed_count(), 0);
    assert!(handle.missed(10).await.unwrap().is_empty());
    assert_eq!(handle.status(), DualStatus::Live);
    assert_eq!(every_row(&f.secondary), every_row(&f.primary));
    assert!(handle.failures() > 0);
    let report = Reconciler::builder("users")
        .primary(primary)
        .secondary(secondary)
        .build()
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.primary_rows, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_never_overwrites_a_newer_one() {
    let f = files();
    let (primary, secondary) = stores(&f);
    // The secondary holds a newer row (as from the other direction's dual write).
    let far = u64::try_from(i64::MAX / 2).unwrap();
    let newer = Row::new("user:1", &b"from the new service"[..], far);
    assert_eq!(
        secondary.apply(std::slice::from_ref(&newer)).await.unwrap(),
        [true]
    );
    let dual = dual(primary.clone(), secondary.clone());
    let handle = dual.handle();
    let written = dual
        .clone()
        .oneshot(Write::put("user:1", "from the monolith"))
        .await
        .unwrap();
    assert!(written.version < far);
    // Two writes of one key; once the newer is delivered, a late delivery of the older
    // (as from a second worker on the same outbox) changes nothing.
    let old = dual
        .clone()
        .oneshot(Write::put("user:2", "old"))
        .await
        .unwrap();
    dual.clone()
        .oneshot(Write::put("user:2", "new"))
        .await
        .unwrap();
    assert!(handle.wait_idle(WAIT).await);
    let fresh = primary.get("user:2").await.unwrap().unwrap();
    assert_eq!(secondary.get("user:2").await.unwrap().unwrap(), fresh);
    let stale = Row::new("user:2", &b"old"[..], old.version);
    assert_eq!(secondary.apply(&[stale]).await.unwrap(), [false]);
    assert_eq!(secondary.get("user:2").await.unwrap().unwrap(), fresh);
    assert_eq!(
        secondary.get("user:1").await.unwrap().unwrap(),
        newer,
        "the monolith's older write did not overwrite the newer row"
    );
    assert_eq!(handle.superseded(), 1);
    assert!(handle.applied() >= 1);
    assert_eq!(outbox_len(&f.primary), 0, "a superseded entry is settled");
}

#[tokio::test]
async fn the_reconciler_reports_and_repairs_each_kind_of_difference() {
    let f = files();
    let (primary, secondary) = stores(&f);
    let r = |k: &str, v: &str, n| Row::new(k, v.as_bytes().to_vec(), n);
    let same: Vec<Row> = (0..10).map(|i| r(&format!("k{i:02}"), "same", 5)).collect();
    primary.apply(&same).await.unwrap();
    secondary.apply(&same).await.unwrap();
    primary
        .apply(&[
            r("a-missing", "p", 3),
            Row::tombstone("b-deleted", 9),
            r("c-value", "primary's", 4),
            r("d-older", "new", 8),
            r("e-newer", "truth", 2),
        ])
        .await
        .unwrap();
    secondary
        .apply(&[
            r("c-value", "secondary's", 4),
            r("d-older", "old", 7),
            r("e-newer", "ahead", 6),
            r("z-extra", "x", 1),
        ])
        .await
        .unwrap();
    let before = every_row(&f.secondary);
    let report_only = Reconciler::builder("check")
        .primary(primary.clone())
        .secondary(secondary.clone())
        .batch(3)
        .build()
        .unwrap();
    let report = report_only.run_once().await.unwrap();
    let found: Vec<(&str, DifferenceKind, Option<u64>, Option<u64>)> = report
        .differences
        .iter()
        .map(|d| {
            (
                d.key.as_str(),
                d.kind,
                d.primary_version,
                d.secondary_version,
            )
        })
        .collect();
    use DifferenceKind::{Differs, ExtraInSecondary, MissingInSecondary};
    assert_eq!(
        found,
        [
            ("a-missing", MissingInSecondary, Some(3), None),
            ("b-deleted", MissingInSecondary, Some(9), None),
            ("c-value", Differs, Some(4), Some(4)),
            ("d-older", Differs, Some(8), Some(7)),
            ("e-newer", Differs, Some(2), Some(6)),
            ("z-extra", ExtraInSecondary, None, Some(1)),
        ]
    );
    assert_eq!(
        (
            report.missing,
            report.extra,
            report.differing,
            report.repaired
        ),
        (2, 1, 3, 0)
    );
    assert_eq!((report.primary_rows, report.secondary_rows), (15, 14));
    assert_eq!(
        every_row(&f.secondary),
        before,
        "a report-only run changes nothing"
    );
    assert_eq!(report_only.handle().health(), Health::Degraded);

    let listed = Reconciler::builder("listed")
        .primary(primary.clone())
        .secondary(secondary.clone())
        .max_listed(2)
        .build()
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!((listed.differences.len(), listed.total()), (2, 6));

    let repairing = Reconciler::builder("repair")
        .primary(primary.clone())
        .secondary(secondary.clone())
        .batch(3)
        .repair(true)
        .build()
        .unwrap();
    let report = repairing.run_once().await.unwrap();
    assert_eq!(report.repaired, 6, "{report:?}");
    assert!(report.differences.iter().all(|d| d.repaired));
    assert_eq!(every_row(&f.secondary), every_row(&f.primary));
    assert!(repairing.run_once().await.unwrap().is_clean());
    assert_eq!(repairing.handle().health(), Health::Ready);
    assert!(report.to_json().contains(r#""kind":"extra_in_secondary""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_reconciler_repairs_on_its_own_until_stopped() {
    let f = files();
    let (primary, secondary) = stores(&f);
    primary.apply(&[Row::new("k", &b"v"[..], 1)]).await.unwrap();
    let reconciler = Reconciler::builder("periodic")
        .primary(primary)
        .secondary(secondary.clone())
        .repair(true)
        .every(Duration::from_millis(5))
        .build()
        .unwrap();
    let handle = reconciler.handle();
    let task = reconciler.spawn();
    eventually("the first run repaired", async || {
        secondary.get("k").await.unwrap().is_some()
    })
    .await;
    secondary.replace("k", Some(1), None).await.unwrap();
    eventually("a later run repaired again", async || {
        secondary.get("k").await.unwrap().is_some()
    })
    .await;
    eventually("two runs counted", async || handle.runs() >= 2).await;
    handle.stop();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_input_is_a_typed_error_never_a_panic() {
    let f = files();
    for bad in ["users\"; DROP TABLE users; --", "", "1x", "a b"] {
        assert!(matches!(
            SqliteRows::open(&f.primary, bad),
            Err(DualError::InvalidTable { .. })
        ));
    }
    let (primary, secondary) = stores(&f);
    let dual = dual(primary.clone(), secondary.clone());
    for key in [String::new(), "a\0b".into(), "k".repeat(513)] {
        let err = dual
            .clone()
            .oneshot(Write::put(key, "v"))
            .await
            .unwrap_err();
        assert!(matches!(err, DualError::InvalidKey { .. }), "{err:?}");
    }
    assert_eq!(dual.handle().written(), 0);
    // Rows another program stored with SQLite's loose types.
    let reconciler = Reconciler::builder("corrupt")
        .primary(primary.clone())
        .secondary(secondary.clone())
        .build()
        .unwrap();
    for (sql, reason) in [
        ("INSERT INTO users VALUES ('n', 42, 1)", "value is a number"),
        (
            "INSERT INTO users VALUES ('t', x'00', 'one')",
            "version is not",
        ),
        (
            "INSERT INTO users VALUES ('m', x'00', -1)",
            "version is not",
        ),
        (
            "INSERT INTO users VALUES (x'ff', NULL, 1)",
            "key is not text",
        ),
    ] {
        let c = Connection::open(&f.secondary).unwrap();
        c.execute_batch(&format!("DELETE FROM users; {sql}"))
            .unwrap();
        match reconciler.run_once().await.unwrap_err() {
            DualError::CorruptRow {
                reason: got, table, ..
            } => {
                assert!(got.contains(reason), "{got}");
                assert_eq!(table, "users");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(reconciler.handle().last_error().is_some());
    assert_eq!(reconciler.handle().health(), Health::Degraded);
    // JSON stored as text by another program reads as its bytes.
    let c = Connection::open(&f.secondary).unwrap();
    c.execute_batch(r#"DELETE FROM users; INSERT INTO users VALUES ('j', '{"a":1}', 1)"#)
        .unwrap();
    let row = secondary.get("j").await.unwrap().unwrap();
    assert_eq!(
        row.json::<serde_json::Value>().unwrap(),
        Some(serde_json::json!({"a": 1}))
    );
}

#[test]
fn settings_are_checked_by_build() {
    let f = files();
    let (primary, secondary) = stores(&f);
    let base = || {
        DualWrite::builder("users")
            .primary(primary.clone())
            .secondary(secondary.clone())
    };
    // Outside a runtime: an error, not a panic.
    assert_eq!(base().build().unwrap_err().field(), "runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    assert_eq!(base().batch(0).build().unwrap_err().field(), "batch");
    assert_eq!(
        base().missed_after(0).build().unwrap_err().field(),
        "missed_after"
    );
    assert_eq!(
        base().poll(Duration::ZERO).build().unwrap_err().field(),
        "poll"
    );
    let zero_cap = base().backoff(Backoff::Constant(Duration::ZERO), Duration::ZERO);
    assert_eq!(zero_cap.build().unwrap_err().field(), "backoff");
    let bad_name = DualWrite::builder("a b")
        .primary(primary.clone())
        .secondary(secondary.clone());
    assert_eq!(bad_name.build().unwrap_err().field(), "name");
    let reconciler = || {
        Reconciler::builder("r")
            .primary(primary.clone())
            .secondary(secondary.clone())
    };
    assert_eq!(reconciler().batch(0).build().unwrap_err().field(), "batch");
    assert_eq!(
        reconciler()
            .every(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "every"
    );
    assert!(reconciler().build().is_ok());
}

#[tokio::test]
async fn metrics_are_registered_at_build_and_handles_report() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let f = files();
    let (primary, secondary) = stores(&f);
    let dual = dual(primary.clone(), secondary.clone());
    let reconciler = Reconciler::builder("users")
        .primary(primary)
        .secondary(secondary)
        .build()
        .unwrap();
    let names: Vec<(String, Vec<String>, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()));
            (key.key().name().to_owned(), labels.collect(), value)
        })
        .collect();
    for want in [
        "applied_total",
        "superseded_total",
        "failures_total",
        "missed_total",
        "pending",
        "missed",
        "reconcile_runs_total",
        "reconcile_repaired_total",
    ] {
        let want = format!("tower_patterns_strangler_dual_{want}");
        assert!(
            names
                .iter()
                .any(|(n, l, _)| *n == want && l == &["name=users"]),
            "{want} in {names:?}"
        );
    }
    let kinds: Vec<&Vec<String>> = names
        .iter()
        .filter(|(n, ..)| n == "tower_patterns_strangler_dual_reconcile_differences_total")
        .map(|(_, l, _)| l)
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    let report = dual.handle().report();
    assert_eq!((report.pattern, &*report.name), ("strangler", "users"));
    assert_eq!(report.value("missed"), Some(0.0));
    assert_eq!(reconciler.handle().report().state, "not_run");
}
