//! The orchestrator in one process, on the in-memory log and index with paused time: the
//! order saga's four endings, the trip booking, retries, parallel branches, compensations that
//! fail, the operator, deadlines.

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::json;
use support::{Act, Ledger, SECOND, order_saga, trip};
use tower::{Service as _, ServiceExt as _};
use tower_patterns_core::backoff::Backoff;
use tower_patterns_eventstore::InMemoryStore;
use tower_patterns_saga::{
    Attempts, Orchestrator, Phase, SagaDefinition, SagaError, SagaEvent, SagaId, SagaStatus,
    StartSaga, index::MemoryIndex,
};

type Orch = Orchestrator<InMemoryStore, MemoryIndex>;

fn orchestrator(
    store: &Arc<InMemoryStore>,
    index: &MemoryIndex,
    defs: Vec<SagaDefinition>,
) -> Orch {
    let mut b = Orchestrator::builder("test")
        .store(store.clone())
        .index(index.clone())
        .owner("test-1");
    for d in defs {
        b = b.saga(d);
    }
    b.build().unwrap()
}

/// An orchestrator of `def` on a log and an index of its own.
fn fresh(def: SagaDefinition) -> Orch {
    orchestrator(
        &Arc::new(InMemoryStore::new()),
        &MemoryIndex::new(),
        vec![def],
    )
}

/// The steps of saga `saga` compensated, in the order the log has them.
async fn compensated(o: &Orch, saga: &str) -> Vec<String> {
    o.history(&id(saga))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            SagaEvent::StepCompensated { step } => Some(step),
            _ => None,
        })
        .collect()
}

fn id(s: &str) -> SagaId {
    SagaId::new(s).unwrap()
}

async fn kinds(o: &Orch, saga: &str) -> Vec<&'static str> {
    o.history(&id(saga))
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect()
}

/// The order saga, run with `fail` refusing; returns (status, reason, undone steps).
async fn order_case(fail: Option<&str>) -> (SagaStatus, Option<String>, Vec<String>, Vec<String>) {
    let ledger = Ledger::in_memory();
    let o = fresh(order_saga(&ledger, fail));
    let out = o
        .run(
            "order",
            id("o-1"),
            json!({ "items": ["book"], "card": "4242" }),
        )
        .await
        .unwrap();
    assert_eq!(ledger.most_per_step(), 1);
    (
        out.status,
        out.reason,
        ledger.done("o-1"),
        ledger.undone("o-1"),
    )
}

#[tokio::test(start_paused = true)]
async fn order_saga_succeeds_and_marks_the_order_complete() {
    let (status, reason, done, undone) = order_case(None).await;
    assert_eq!(status, SagaStatus::Completed);
    assert_eq!(reason, None);
    assert_eq!(
        done,
        ["complete", "inventory", "order", "payment", "shipping"]
    );
    assert!(undone.is_empty());
}

#[tokio::test(start_paused = true)]
async fn order_saga_payment_failed_marks_the_order_failed_and_refunds_nothing() {
    let (status, reason, done, undone) = order_case(Some("payment")).await;
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(reason.as_deref(), Some("payment failed"));
    assert_eq!(done, ["order"]);
    assert_eq!(undone, ["order"], "the order is marked failed; no refund");
}

#[tokio::test(start_paused = true)]
async fn order_saga_inventory_unavailable_refunds_the_payment() {
    let (status, reason, done, undone) = order_case(Some("inventory")).await;
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(reason.as_deref(), Some("inventory unavailable"));
    assert_eq!(done, ["order", "payment"]);
    assert_eq!(
        undone,
        ["order", "payment"],
        "refund, order marked failed; no release"
    );
}

#[tokio::test(start_paused = true)]
async fn order_saga_shipment_failed_refunds_and_releases() {
    let (status, reason, done, undone) = order_case(Some("shipping")).await;
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(reason.as_deref(), Some("shipment creation failed"));
    assert_eq!(done, ["inventory", "order", "payment"]);
    assert_eq!(undone, ["inventory", "order", "payment"]);
}

#[tokio::test(start_paused = true)]
async fn compensations_run_newest_first_and_the_log_has_every_transition() {
    let ledger = Ledger::in_memory();
    let o = fresh(order_saga(&ledger, Some("shipping")));
    o.run("order", id("o-2"), json!({})).await.unwrap();
    let log = o.history(&id("o-2")).await.unwrap();
    assert_eq!(
        compensated(&o, "o-2").await,
        ["inventory", "payment", "order"]
    );
    assert_eq!(
        kinds(&o, "o-2").await,
        [
            "SagaStarted",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepFailed",
            "CompensationStarted",
            "StepCompensationStarted",
            "StepCompensated",
            "StepCompensationStarted",
            "StepCompensated",
            "StepCompensationStarted",
            "StepCompensated",
            "SagaCompensated",
        ]
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].recorded_at_micros <= w[1].recorded_at_micros)
    );
}

#[tokio::test(start_paused = true)]
async fn trip_booking_hotel_failure_cancels_the_flight_and_payment_failure_cancels_both() {
    let ledger = Ledger::in_memory();
    let o = fresh(trip(&ledger, &[("hotel", Act::Refuse)]));
    let out = o.run("trip", id("t-hotel"), json!({})).await.unwrap();
    assert_eq!(
        (out.status, out.failed_step.as_deref()),
        (SagaStatus::Compensated, Some("hotel"))
    );
    assert_eq!(
        out.reason.as_deref(),
        Some("hotel refused"),
        "a refusal's reason without one of the step's"
    );
    assert_eq!(ledger.undone("t-hotel"), ["flight"]);

    let ledger = Ledger::in_memory();
    let o = fresh(trip(&ledger, &[("payment", Act::Refuse)]));
    let out = o.run("trip", id("t-pay"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(ledger.undone("t-pay"), ["flight", "hotel"]);

    // A failed flight leaves nothing to undo: Failed, not Compensated.
    let ledger = Ledger::in_memory();
    let o = fresh(trip(&ledger, &[("flight", Act::Refuse)]));
    let out = o.run("trip", id("t-flight"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Failed);
    assert!(ledger.undone("t-flight").is_empty() && ledger.done("t-flight").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_step_retried_with_backoff_keeps_its_key_and_takes_effect_once() {
    let ledger = Ledger::in_memory();
    let backoff = Backoff::Exponential {
        base: Duration::from_millis(200),
        multiplier: 2.0,
    };
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("flight", Act::FailFirst(2), Act::Ok)
                .retry(Attempts::new(3, backoff)),
        )
        .build()
        .unwrap();
    let o = fresh(def);
    let t0 = tokio::time::Instant::now();
    let out = o.run("trip", id("r-1"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Completed);
    // 200 ms then 400 ms of backoff.
    assert_eq!(t0.elapsed(), Duration::from_millis(600));
    assert_eq!(ledger.count("r-1", "flight", Phase::Action), 1);
    assert_eq!(out.outputs["flight"]["key"], "r-1/flight/do/0");
    assert_eq!(
        kinds(&o, "r-1").await,
        [
            "SagaStarted",
            "StepStarted",
            "StepFailed",
            "StepStarted",
            "StepFailed",
            "StepStarted",
            "StepSucceeded",
            "SagaCompleted"
        ]
    );

    // Out of attempts: compensated, the step itself too (its outcome is unknown).
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .step(
            ledger
                .step("hotel", Act::AlwaysFail, Act::Ok)
                .retry(Attempts::new(2, backoff)),
        )
        .build()
        .unwrap();
    let o = fresh(def);
    let out = o.run("trip", id("r-2"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(out.reason.as_deref(), Some("hotel failed"));
    assert_eq!(compensated(&o, "r-2").await, ["hotel", "flight"]);
    assert_eq!(
        ledger.undone("r-2"),
        ["flight"],
        "the hotel never took effect: its compensation found nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_timeout_is_an_unknown_outcome() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .step(ledger.step("hotel", Act::Hang, Act::Ok).timeout(2 * SECOND))
        .build()
        .unwrap();
    let o = fresh(def);
    let t0 = tokio::time::Instant::now();
    let out = o.run("trip", id("to-1"), json!({})).await.unwrap();
    assert_eq!(t0.elapsed(), 2 * SECOND);
    assert_eq!(out.status, SagaStatus::Compensated);
    let log = o.history(&id("to-1")).await.unwrap();
    assert!(log.iter().any(|e| matches!(&e.event, SagaEvent::StepFailed { step, error, refused: false, .. } if step == "hotel" && error == "step timed out")));
}

#[tokio::test(start_paused = true)]
async fn parallel_branches_run_at_once_and_a_failed_branch_compensates_the_others() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .parallel([
            ledger.step("hotel", Act::Ok, Act::Ok),
            ledger.step("car", Act::Refuse, Act::Ok),
            ledger.step("museum", Act::Ok, Act::Ok),
        ])
        .step(ledger.step("payment", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let o = fresh(def);
    let out = o.run("trip", id("p-1"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(out.failed_step.as_deref(), Some("car"));
    assert_eq!(
        ledger.max_in_flight(),
        3,
        "the three branches were in flight together"
    );
    assert_eq!(ledger.done("p-1"), ["flight", "hotel", "museum"]);
    assert_eq!(ledger.undone("p-1"), ["flight", "hotel", "museum"]);
    assert_eq!(ledger.count("p-1", "payment", Phase::Action), 0);

    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .parallel([
            ledger.step("hotel", Act::Ok, Act::Ok),
            ledger.step("car", Act::Ok, Act::Ok),
        ])
        .build()
        .unwrap();
    let o = fresh(def);
    assert!(
        o.run("trip", id("p-2"), json!({}))
            .await
            .unwrap()
            .is_completed()
    );
}

#[tokio::test(start_paused = true)]
async fn outputs_reach_later_steps_and_the_steps_own_compensation() {
    let ledger = Ledger::in_memory();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let refund = tower::service_fn(move |req: tower_patterns_saga::StepRequest| {
        let record = record.clone();
        async move {
            let own: serde_json::Value = req.own_output().cloned().unwrap();
            let order: Option<serde_json::Value> = req.output("order").unwrap();
            let input: serde_json::Value = req.input().unwrap();
            record.lock().unwrap().push((
                own["id"].clone(),
                order.unwrap()["id"].clone(),
                input["card"].clone(),
                req.key.to_string(),
            ));
            Ok::<_, tower_patterns_core::BoxError>(json!(null))
        }
    });
    let def = SagaDefinition::builder("order")
        .step(ledger.step("order", Act::Ok, Act::Ok))
        .step(
            tower_patterns_saga::Step::new("payment", ledger.service(Act::Ok))
                .compensate_with(refund),
        )
        .step(ledger.step("inventory", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let o = fresh(def);
    o.run("order", id("out-1"), json!({ "card": "4242" }))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            json!("payment-out-1"),
            json!("order-out-1"),
            json!("4242"),
            "out-1/payment/undo/0".to_owned()
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_fails_twice_then_succeeds_ends_compensated() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::FailFirst(2)))
        .step(ledger.step("hotel", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let o = fresh(def);
    let out = o.run("trip", id("c-1"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(ledger.count("c-1", "flight", Phase::Compensation), 1);
    let failures = kinds(&o, "c-1")
        .await
        .into_iter()
        .filter(|k| *k == "CompensationFailed")
        .count();
    assert_eq!(failures, 2);
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_always_fails_is_stuck_until_an_operator_resolves_it() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("flight", Act::Ok, Act::AlwaysFail)
                .compensation_retry(Attempts::new(3, Backoff::Constant(SECOND))),
        )
        .step(ledger.step("hotel", Act::Ok, Act::Ok))
        .step(ledger.step("payment", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let o = orchestrator(&store, &MemoryIndex::new(), vec![def]);
    let out = o.run("trip", id("s-1"), json!({})).await.unwrap();
    assert_eq!(out.status, SagaStatus::Stuck);
    {
        use tower_patterns_core::observe::{Health, StateHandle as _};
        assert_eq!(o.handle().health(), Health::Degraded);
        assert_eq!(o.handle().count("stuck_now"), Some(1));
    }
    assert_eq!(
        ledger.undone("s-1"),
        ["hotel"],
        "the hotel was undone before the flight's compensation failed"
    );
    assert_eq!(
        o.outcome(&id("s-1")).await.unwrap().status,
        SagaStatus::Stuck
    );

    let stuck = o.stuck(10).await.unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        (stuck[0].id.as_str(), stuck[0].step.as_str()),
        ("s-1", "flight")
    );
    assert_eq!(stuck[0].error, "flight unavailable");
    assert_eq!(stuck[0].reason.as_deref(), Some("payment refused"));

    // An operator's retry runs the compensation three more times under a new generation.
    let again = o
        .retry(&id("s-1"), "ada", "the airline's API is back")
        .await
        .unwrap();
    assert_eq!(again.status, SagaStatus::Stuck);
    let starts: Vec<_> = o
        .history(&id("s-1"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            SagaEvent::StepCompensationStarted { step, attempt } if step == "flight" => {
                Some(attempt)
            }
            _ => None,
        })
        .collect();
    assert_eq!(starts, [1, 2, 3, 1, 2, 3]);

    // Bad operator calls are typed errors.
    assert!(matches!(
        o.resolve(&id("s-1"), "", "x").await,
        Err(SagaError::Invalid(_))
    ));
    assert!(matches!(
        o.resolve(&id("nope"), "ada", "x").await,
        Err(SagaError::NotFound(_))
    ));

    let done = o
        .resolve(&id("s-1"), "ada", "refunded the flight by hand")
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Resolved);
    assert!(o.stuck(10).await.unwrap().is_empty());
    let last = o.history(&id("s-1")).await.unwrap().pop().unwrap().event;
    assert_eq!(
        last,
        SagaEvent::SagaResolved {
            by: "ada".into(),
            why: "refunded the flight by hand".into()
        }
    );
    assert!(matches!(
        o.retry(&id("s-1"), "ada", "again").await,
        Err(SagaError::NotStuck {
            status: SagaStatus::Resolved,
            ..
        })
    ));
    assert_eq!(o.handle().count("stuck"), Some(2));
    assert_eq!(o.handle().count("stuck_now"), Some(0));
    assert_eq!(o.handle().count("resolved"), Some(1));
    assert_eq!(o.handle().count("failed"), Some(0));
    use tower_patterns_core::observe::StateHandle as _;
    assert_eq!(
        o.handle().health(),
        tower_patterns_core::observe::Health::Ready
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_action_on_a_running_saga_leaves_its_lease_alone() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Hang, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = MemoryIndex::new();
    let o = orchestrator(&store, &index, vec![def.clone()]);
    o.start("trip", id("busy"), json!({}), None).await.unwrap();
    for act in [
        o.retry(&id("busy"), "ada", "why").await,
        o.resolve(&id("busy"), "ada", "why").await,
    ] {
        assert!(
            matches!(
                act,
                Err(SagaError::NotStuck {
                    status: SagaStatus::Running,
                    ..
                })
            ),
            "{act:?}"
        );
    }
    // Still leased to its driver: another orchestrator takes nothing.
    let other = Orchestrator::builder("test")
        .store(store)
        .index(index)
        .saga(def)
        .owner("test-2")
        .build()
        .unwrap();
    let took = tokio::time::timeout(SECOND, other.recover()).await;
    assert_eq!(took.expect("nothing taken, nothing driven").unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_operator_retry_that_succeeds_compensates_the_rest() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("flight", Act::Ok, Act::FailFirst(2))
                .compensation_retry(Attempts::new(2, Backoff::Constant(SECOND))),
        )
        .step(ledger.step("hotel", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let o = fresh(def);
    assert_eq!(
        o.run("trip", id("s-2"), json!({})).await.unwrap().status,
        SagaStatus::Stuck
    );
    let out = o.retry(&id("s-2"), "ada", "fixed").await.unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(ledger.undone("s-2"), ["flight"]);
    let keys = ledger.count("s-2", "flight", Phase::Compensation);
    assert_eq!(keys, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_after_completion_changes_nothing() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .deadline(10 * SECOND)
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = MemoryIndex::new();
    let o = orchestrator(&store, &index, vec![def.clone()]);
    assert!(
        o.run("trip", id("d-1"), json!({}))
            .await
            .unwrap()
            .is_completed()
    );
    let before = o.history(&id("d-1")).await.unwrap();
    tokio::time::advance(60 * SECOND).await;
    // A restarted orchestrator finds nothing to do.
    let again = orchestrator(&store, &index, vec![def]);
    assert_eq!(again.recover().await.unwrap(), 0);
    assert_eq!(again.history(&id("d-1")).await.unwrap(), before);
    assert!(ledger.undone("d-1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_mid_saga_compensates_what_took_effect() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .step(ledger.step("hotel", Act::Hang, Act::Ok))
        .build()
        .unwrap();
    let o = fresh(def);
    let t0 = tokio::time::Instant::now();
    o.start("trip", id("d-2"), json!({}), Some(5 * SECOND))
        .await
        .unwrap();
    let out = o.outcome(&id("d-2")).await.unwrap();
    assert_eq!(t0.elapsed(), 5 * SECOND);
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(out.reason.as_deref(), Some("deadline passed"));
    assert_eq!(out.failed_step, None);
    assert_eq!(ledger.undone("d-2"), ["flight"]);
    // The hotel's call, unanswered at the deadline, is logged as an unknown outcome.
    let log = o.history(&id("d-2")).await.unwrap();
    assert!(log.iter().any(|e| e.event
        == SagaEvent::StepFailed {
            step: "hotel".into(),
            attempt: 1,
            error: "deadline passed".into(),
            refused: false
        }));
}

/// The deadline is in the log: an orchestrator that died with the saga in flight is replaced
/// by one that compensates when the deadline has passed.
#[test]
fn a_deadline_survives_a_restart() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .step(ledger.step("hotel", Act::Hang, Act::Ok))
        .deadline(30 * SECOND)
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = MemoryIndex::new();
    {
        // The first orchestrator, in a runtime that is dropped with the saga in flight.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (store, index, def) = (store.clone(), index.clone(), def.clone());
        rt.block_on(async move {
            let o = orchestrator(&store, &index, vec![def]);
            o.start("trip", id("d-3"), json!({}), None).await.unwrap();
            while !o
                .history(&id("d-3"))
                .await
                .unwrap()
                .iter()
                .any(|e| matches!(&e.event, SagaEvent::StepStarted { step, .. } if step == "hotel"))
            {
                tokio::task::yield_now().await;
            }
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let o = Orchestrator::builder("test")
            .store(store)
            .index(index)
            .saga(def)
            .owner("test-2")
            .build()
            .unwrap();
        // Before the lease expires, nothing is taken.
        assert_eq!(o.recover().await.unwrap(), 0);
        tokio::time::advance(31 * SECOND).await;
        assert_eq!(o.recover().await.unwrap(), 1);
        let out = o.outcome(&id("d-3")).await.unwrap();
        assert_eq!(
            (out.status, out.reason.as_deref()),
            (SagaStatus::Compensated, Some("deadline passed"))
        );
        let log = o.history(&id("d-3")).await.unwrap();
        assert!(log.iter().any(|e| e.event
            == SagaEvent::SagaResumed {
                owner: "test-2".into()
            }));
        // The hotel's outcome was unknown: it is compensated too (it found nothing to undo).
        assert!(log.iter().any(|e| e.event
            == SagaEvent::StepCompensated {
                step: "hotel".into()
            }));
    });
    assert_eq!(ledger.undone("d-3"), ["flight"]);
}

#[tokio::test(start_paused = true)]
async fn a_start_retried_with_the_same_id_runs_once_and_answers_the_same_outcome() {
    let ledger = Ledger::in_memory();
    let o = fresh(trip(&ledger, &[]));
    let mut svc = o.service("trip").unwrap();
    let a = svc
        .ready()
        .await
        .unwrap()
        .call(StartSaga::new(id("same"), json!({})))
        .await
        .unwrap();
    let b = svc
        .call(StartSaga::new(id("same"), json!({ "other": 1 })))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(ledger.most_per_step(), 1);
    assert_eq!(
        kinds(&o, "same")
            .await
            .iter()
            .filter(|k| **k == "SagaStarted")
            .count(),
        1
    );
    assert!(matches!(o.service("boat"), Err(SagaError::UnknownType(_))));
    assert!(matches!(
        o.run("boat", id("x"), json!({})).await,
        Err(SagaError::UnknownType(_))
    ));
    assert!(matches!(
        o.outcome(&id("never")).await,
        Err(SagaError::NotFound(_))
    ));
    assert!(matches!(
        o.start("trip", id("z"), json!({}), Some(Duration::ZERO))
            .await,
        Err(SagaError::Invalid(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_handle_reports_counts() {
    use tower_patterns_core::observe::{Health, StateHandle as _};
    let ledger = Ledger::in_memory();
    let o = fresh(order_saga(&ledger, Some("inventory")));
    let h = o.handle();
    assert_eq!(h.health(), Health::Ready);
    o.run("order", id("h-1"), json!({})).await.unwrap();
    let r = h.report();
    assert_eq!((r.pattern, &*r.name), ("saga", "test"));
    assert_eq!(r.value("started"), Some(1.0));
    assert_eq!(r.value("compensated"), Some(1.0));
    assert_eq!(r.value("completed"), Some(0.0));
    assert_eq!(h.owner(), "test-1");
    assert_eq!(h.count("nothing"), None);
}

#[test]
fn metrics_count_ends_by_outcome_and_start_at_zero() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let ledger = Ledger::in_memory();
            let o = Orchestrator::builder("metered")
                .store(Arc::new(InMemoryStore::new()))
                .index(MemoryIndex::new())
                .saga(order_saga(&ledger, Some("payment")))
                .build()
                .unwrap();
            o.run("order", id("m-1"), json!({})).await.unwrap();
        });
    });
    let counters: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let outcome = key
                .labels()
                .find(|l| l.key() == "outcome")
                .map(|l| l.value().to_owned());
            match value {
                DebugValue::Counter(n) => {
                    Some((format!("{}/{}", key.name(), outcome.unwrap_or_default()), n))
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        counters.get("tower_patterns_saga_ended_total/compensated"),
        Some(&1)
    );
    assert_eq!(
        counters.get("tower_patterns_saga_ended_total/completed"),
        Some(&0)
    );
    assert_eq!(
        counters.get("tower_patterns_saga_ended_total/stuck"),
        Some(&0)
    );
    assert_eq!(counters.get("tower_patterns_saga_resumed_total/"), Some(&0));
}

#[test]
fn the_builder_checks_its_settings() {
    let ledger = Ledger::in_memory();
    let store = Arc::new(InMemoryStore::new());
    let base = || {
        Orchestrator::builder("o")
            .store(store.clone())
            .index(MemoryIndex::new())
    };
    let field = |r: Result<Orch, tower_patterns_core::ConfigError>| r.unwrap_err().field();
    assert_eq!(field(base().build()), "sagas");
    let trip = trip(&ledger, &[]);
    assert_eq!(
        field(base().saga(trip.clone()).saga(trip.clone()).build()),
        "sagas"
    );
    assert_eq!(
        field(
            base()
                .saga(trip.clone())
                .lease(Duration::from_millis(99))
                .build()
        ),
        "lease"
    );
    assert!(
        base()
            .saga(trip.clone())
            .lease(Duration::from_millis(100))
            .build()
            .is_ok()
    );
    assert_eq!(
        field(base().saga(trip.clone()).poll(Duration::ZERO).build()),
        "poll"
    );
    assert_eq!(
        field(base().saga(trip.clone()).max_running(0).build()),
        "max_running"
    );
    let o = base().saga(trip.clone()).owner("host-1").build().unwrap();
    assert_eq!((o.name(), o.owner()), ("o", "host-1"));
    let default_owner = base().saga(trip).build().unwrap();
    assert!(
        default_owner
            .owner()
            .starts_with(&format!("o-{}-", std::process::id())),
        "{}",
        default_owner.owner()
    );
    assert!(format!("{o:?}").contains("host-1"));
}
