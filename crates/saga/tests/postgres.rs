//! Two orchestrator processes on one PostgreSQL, each starting its own sagas and running a
//! worker; one is killed with SIGKILL mid-run. The other takes its sagas over once their
//! leases expire: every saga finishes, every effect happens once, and no saga's calls ever
//! overlapped (never driven by two at once).
#![cfg(all(feature = "postgres", unix))]
#![allow(
    clippy::print_stdout,
    reason = "the child process speaks to its parent on stdout"
)]

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::json;
use support::{Act, Ledger, Tap, micros};
use tower_patterns_core::backoff::Backoff;
use tower_patterns_eventstore::postgres::PostgresStore;
use tower_patterns_saga::{
    Attempts, Orchestrator, SagaDefinition, SagaEvent, SagaId, SagaStatus, index::PostgresIndex,
};
use tower_patterns_testkit::process::ChildTest;

const URL: &str = "TP_SAGA_PG_URL";
const DIR: &str = "TP_SAGA_PG_DIR";
const WHO: &str = "TP_SAGA_PG_WHO";
const KILL_AFTER: &str = "TP_SAGA_PG_KILL_AFTER";
const PER_PROCESS: usize = 40;

fn definitions(ledger: &Ledger) -> Vec<SagaDefinition> {
    let quick = Attempts::new(3, Backoff::Constant(Duration::from_millis(1)));
    let trip = |name: &str, payment: Act| {
        SagaDefinition::builder(name.to_owned())
            .step(ledger.step("flight", Act::Ok, Act::Ok).retry(quick))
            .step(
                ledger
                    .step("hotel", Act::FailFirst(1), Act::Ok)
                    .retry(quick),
            )
            .step(ledger.step("payment", payment, Act::Ok))
            .build()
            .unwrap()
    };
    vec![trip("trip", Act::Ok), trip("trip-refused", Act::Refuse)]
}

fn plan(i: usize) -> (&'static str, SagaStatus) {
    if i % 4 == 1 {
        ("trip-refused", SagaStatus::Compensated)
    } else {
        ("trip", SagaStatus::Completed)
    }
}

async fn orchestrator(
    url: &str,
    ledger: &Ledger,
    who: &str,
    kill_after: Option<String>,
) -> Orchestrator<Tap<PostgresStore>, PostgresIndex> {
    let store = PostgresStore::connect(url, 4).await.unwrap();
    let index = PostgresIndex::new(store.pool().clone()).await.unwrap();
    let mut b = Orchestrator::builder("pg")
        .store(Arc::new(Tap::new(store, kill_after)))
        .index(index)
        .owner(format!("pg-{who}"))
        // Long enough that a start-up stall (fsyncs while the servers settle) does not hand
        // a live child's sagas to the other before the kill.
        .lease(Duration::from_secs(2))
        .poll(Duration::from_millis(50));
    for d in definitions(ledger) {
        b = b.saga(d);
    }
    b.build().unwrap()
}

/// A child: starts its sagas (`<who>-0`, ...), runs a worker, prints `done` when its own
/// have ended, then keeps working until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_pg_orchestrator() {
    let (Ok(url), Ok(dir), Ok(who)) = (std::env::var(URL), std::env::var(DIR), std::env::var(WHO))
    else {
        return;
    };
    let ledger = Ledger::open(&Path::new(&dir).join("ledger.db"));
    let o = orchestrator(&url, &ledger, &who, std::env::var(KILL_AFTER).ok()).await;
    let _worker = o.spawn_worker();
    let runs = (0..PER_PROCESS).map(|i| {
        let (o, id) = (o.clone(), SagaId::new(format!("{who}-{i}")).unwrap());
        async move { o.run(plan(i).0, id, json!({ "i": i })).await.unwrap() }
    });
    futures_util::future::join_all(runs).await;
    println!("done");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_one_killed_every_saga_finishes_none_driven_twice_at_once() {
    if std::env::var(URL).is_ok() {
        return;
    }
    let Some(url) = tower_patterns_testkit::fresh_postgres("saga_two").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut a = ChildTest::spawn(
        "child_pg_orchestrator",
        &[
            (URL, &url),
            (DIR, path),
            (WHO, "a"),
            (KILL_AFTER, "StepSucceeded:30"),
        ],
    );
    let mut b = ChildTest::spawn(
        "child_pg_orchestrator",
        &[(URL, &url), (DIR, path), (WHO, "b")],
    );
    a.wait_for("appended StepSucceeded", Duration::from_secs(60))
        .await;
    let killed_pid = a.pid();
    a.kill9();
    let killed = micros();
    b.wait_for("done", Duration::from_secs(60)).await;

    let ledger = Ledger::open(&dir.path().join("ledger.db"));
    let o = orchestrator(&url, &ledger, "check", None).await;
    let mut resumed = 0;
    for who in ["a", "b"] {
        for i in 0..PER_PROCESS {
            let id = SagaId::new(format!("{who}-{i}")).unwrap();
            let out = tokio::time::timeout(Duration::from_secs(60), o.outcome(&id))
                .await
                .unwrap_or_else(|_| panic!("{id} did not finish"));
            let out = match out {
                Ok(out) => out,
                // Killed before it logged the start: it never began.
                Err(tower_patterns_saga::SagaError::NotFound(_)) if who == "a" => continue,
                Err(e) => panic!("{id}: {e}"),
            };
            assert_eq!(out.status, plan(i).1, "{id}");
            let log = o.history(&id).await.unwrap();
            if log.iter().any(|e| {
                e.event
                    == SagaEvent::SagaResumed {
                        owner: "pg-b".into(),
                    }
            }) {
                assert_eq!(who, "a", "only a's sagas are taken over");
                resumed += 1;
            }
        }
    }
    assert!(resumed >= 1, "b took over a's sagas in flight");
    assert_eq!(ledger.most_per_step(), 1, "an effect applied twice");
    let overlaps = ledger.overlapping_calls(killed_pid, killed);
    assert!(
        overlaps.is_empty(),
        "sagas driven by two at once: {overlaps:#?}"
    );
    assert!(ledger.calls() > 2 * PER_PROCESS);
    b.kill9();
}
