//! Crash recovery with a real child process: an orchestrator on the SQLite log and index is
//! killed with SIGKILL right after it logged each kind of transition in turn, then restarted
//! (same owner name). Every saga ends Completed or Compensated, every action that took effect
//! took effect once, and every compensation ran once, as the fake services' ledger (a SQLite
//! file the killed process shared) counts.
#![cfg(all(feature = "sqlite", unix))]
#![allow(
    clippy::print_stdout,
    reason = "the child process speaks to its parent on stdout"
)]

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::json;
use support::{Act, Ledger, Tap};
use tower_patterns_core::backoff::Backoff;
use tower_patterns_eventstore::sqlite::SqliteStore;
use tower_patterns_saga::{
    Attempts, Orchestrator, SagaDefinition, SagaId, SagaStatus, index::SqliteIndex,
};
use tower_patterns_testkit::process::ChildTest;

const DIR: &str = "TP_SAGA_CRASH_DIR";
const KILL_AFTER: &str = "TP_SAGA_CRASH_KILL_AFTER";

/// The sagas of each round, and how each must end.
const SAGAS: [(&str, SagaStatus); 5] = [
    ("ok-1", SagaStatus::Completed),
    ("ok-2", SagaStatus::Completed),
    ("retry-1", SagaStatus::Completed),
    ("payment-refused", SagaStatus::Compensated),
    ("flaky-undo", SagaStatus::Compensated),
];

fn definitions(ledger: &Ledger) -> Vec<SagaDefinition> {
    let quick = Attempts::new(3, Backoff::Constant(Duration::from_millis(1)));
    let trip = |name: &str, flight: (Act, Act), hotel: Act, payment: Act| {
        SagaDefinition::builder(name.to_owned())
            .step(
                ledger
                    .step("flight", flight.0, flight.1)
                    .retry(quick)
                    .compensation_retry(quick),
            )
            .step(ledger.step("hotel", hotel, Act::Ok))
            .step(ledger.step("payment", payment, Act::Ok))
            .build()
            .unwrap()
    };
    vec![
        trip("ok", (Act::Ok, Act::Ok), Act::Ok, Act::Ok),
        trip("retry", (Act::FailFirst(1), Act::Ok), Act::Ok, Act::Ok),
        trip("refused", (Act::Ok, Act::Ok), Act::Ok, Act::Refuse),
        // The flight's compensation fails once (in each process) before it succeeds.
        trip("flaky", (Act::Ok, Act::FailFirst(1)), Act::Refuse, Act::Ok),
    ]
}

fn saga_type(id: &str) -> &'static str {
    match id {
        "retry-1" => "retry",
        "payment-refused" => "refused",
        "flaky-undo" => "flaky",
        _ => "ok",
    }
}

/// The child: recovers what a previous process left, starts every saga of the round (a
/// no-op for those already started), waits for all, prints `done`. With a kill point, it
/// freezes after logging that kind of event instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_orchestrator() {
    let Ok(dir) = std::env::var(DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let ledger = Ledger::open(&dir.join("ledger.db"));
    let store = Tap::new(
        SqliteStore::open(dir.join("events.db")).unwrap(),
        std::env::var(KILL_AFTER).ok(),
    );
    let mut builder = Orchestrator::builder("crash")
        .store(Arc::new(store))
        .index(SqliteIndex::open(dir.join("sagas.db")).unwrap())
        .owner("crash-1");
    for d in definitions(&ledger) {
        builder = builder.saga(d);
    }
    let o = builder.build().unwrap();
    let recovered = o.recover().await.unwrap();
    println!("recovered {recovered}");
    let starts = SAGAS.iter().map(|(id, _)| {
        let o = o.clone();
        async move {
            let id = SagaId::new(*id).unwrap();
            o.start(
                saga_type(id.as_str()),
                id.clone(),
                json!({ "who": "ada" }),
                None,
            )
            .await
            .unwrap();
            match o.outcome(&id).await {
                Ok(out) => out,
                Err(e) => panic!(
                    "{id}: {e:?}; state {:?}; open {:?}",
                    o.state(&id).await,
                    o.stuck(10).await
                ),
            }
        }
    });
    let outcomes = futures_util::future::join_all(starts).await;
    assert!(
        outcomes.iter().all(|o| o.status.is_terminal()),
        "{outcomes:?}"
    );
    println!("done");
}

async fn check(dir: &Path, kill_after: &str) {
    let ledger = Ledger::open(&dir.join("ledger.db"));
    let store = Arc::new(SqliteStore::open(dir.join("events.db")).unwrap());
    let mut builder = Orchestrator::builder("check")
        .store(store)
        .index(SqliteIndex::open(dir.join("sagas.db")).unwrap());
    for d in definitions(&ledger) {
        builder = builder.saga(d);
    }
    let o = builder.build().unwrap();
    for (id, want) in SAGAS {
        let state = o.state(&SagaId::new(id).unwrap()).await.unwrap().unwrap();
        assert_eq!(state.status, want, "{id} after a kill after {kill_after}");
        let done = ledger.done(id);
        let undone = ledger.undone(id);
        match want {
            SagaStatus::Completed => {
                assert_eq!(done, ["flight", "hotel", "payment"], "{id} ({kill_after})");
                assert!(undone.is_empty(), "{id} ({kill_after})");
            }
            _ => assert_eq!(
                undone, done,
                "{id}: every effect undone, once ({kill_after})"
            ),
        }
    }
    assert_eq!(
        ledger.most_per_step(),
        1,
        "an effect applied twice after a kill after {kill_after}"
    );
    assert_eq!(o.stuck(10).await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_each_kind_of_transition_every_saga_ends_and_every_effect_happens_once() {
    if std::env::var(DIR).is_ok() {
        return;
    }
    let kinds = [
        "SagaStarted",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "CompensationStarted",
        "StepCompensationStarted",
        "CompensationFailed",
        "StepCompensated",
        "SagaCompleted",
        "SagaCompensated",
    ];
    for kind in kinds {
        println!("kill after {kind}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let mut child = ChildTest::spawn("child_orchestrator", &[(DIR, path), (KILL_AFTER, kind)]);
        child
            .wait_for(&format!("appended {kind}"), Duration::from_secs(60))
            .await;
        child.kill9();
        let mut again = ChildTest::spawn("child_orchestrator", &[(DIR, path)]);
        let recovered: usize = again
            .wait_for("recovered ", Duration::from_secs(60))
            .await
            .parse()
            .unwrap();
        assert!(
            recovered >= 1,
            "the restarted orchestrator took back the killed one's sagas ({kind})"
        );
        again.wait_for("done", Duration::from_secs(60)).await;
        check(dir.path(), kind).await;
    }
}
