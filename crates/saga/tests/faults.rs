//! The orchestrator when things around it fail: the index misses a saga's end, another
//! writer wins the log, renewals fail, two starts race, the log is down at the start or in the
//! middle, a start is slower than its lease. In memory, with paused time.

mod support;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::json;
use support::{Act, FlakyIndex, Ledger, SECOND, Tap, gated};
use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, InMemoryStore};
use tower_patterns_saga::{
    Orchestrator, SagaDefinition, SagaError, SagaEvent, SagaId, SagaStatus,
    index::{MemoryIndex, SagaIndex},
};

fn id(s: &str) -> SagaId {
    SagaId::new(s).unwrap()
}

fn build<S: EventStore, I: SagaIndex>(
    store: &Arc<S>,
    index: I,
    def: &SagaDefinition,
    owner: &str,
) -> Orchestrator<S, I> {
    Orchestrator::builder("faults")
        .store(store.clone())
        .index(index)
        .saga(def.clone())
        .owner(owner)
        .lease(3 * SECOND)
        .build()
        .unwrap()
}

/// Yields until `id`'s log holds an event `pred` accepts.
async fn until_logged<S: EventStore, I: SagaIndex>(
    o: &Orchestrator<S, I>,
    id: &SagaId,
    pred: impl Fn(&SagaEvent) -> bool,
) {
    for _ in 0..10_000 {
        if o.history(id)
            .await
            .map(|h| h.iter().any(|e| pred(&e.event)))
            .unwrap_or(false)
        {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{id}: never logged");
}

fn step_started(name: &'static str) -> impl Fn(&SagaEvent) -> bool {
    move |e| matches!(e, SagaEvent::StepStarted { step, .. } if step == name)
}

#[tokio::test(start_paused = true)]
async fn a_deadline_after_completion_changes_nothing_even_when_the_index_missed_the_end() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .deadline(10 * SECOND)
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = FlakyIndex::default();
    index.drop_ended.store(true, Ordering::SeqCst);
    let a = build(&store, index.clone(), &def, "a");
    assert!(
        a.run("trip", id("d"), json!({}))
            .await
            .unwrap()
            .is_completed()
    );
    let before = a.history(&id("d")).await.unwrap();
    // The index still says open: the saga is claimed again after its lease, its deadline
    // long past.
    tokio::time::advance(60 * SECOND).await;
    index.drop_ended.store(false, Ordering::SeqCst);
    let b = build(&store, index.clone(), &def, "b");
    assert_eq!(b.recover().await.unwrap(), 1);
    assert_eq!(
        b.outcome(&id("d")).await.unwrap().status,
        SagaStatus::Completed
    );
    assert_eq!(
        b.history(&id("d")).await.unwrap(),
        before,
        "nothing logged after the end"
    );
    assert!(ledger.undone("d").is_empty());
    assert_eq!(
        index.list("completed", 10).await.unwrap().len(),
        1,
        "the index settled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_driver_that_loses_the_log_to_another_writer_gives_its_lease_back() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let def = SagaDefinition::builder("trip")
        .step(gated("flight", gate.clone()))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = MemoryIndex::new();
    let a = build(&store, index.clone(), &def, "a");
    a.start("trip", id("race"), json!({}), None).await.unwrap();
    until_logged(&a, &id("race"), step_started("flight")).await;
    // Another writer appends to the saga's log behind the driver's back.
    let foreign = EventData::json(
        "SagaResumed",
        &json!({ "type": "SagaResumed", "owner": "x" }),
    )
    .unwrap();
    store
        .append(&id("race").stream(), ExpectedVersion::Any, vec![foreign])
        .await
        .unwrap();
    gate.add_permits(2);
    while a.handle().count("running") != Some(0) {
        tokio::task::yield_now().await;
    }
    assert_eq!(a.handle().count("lease_lost"), Some(1));
    // Its lease was given back: another takes the saga at once, not a lease later.
    let b = build(&store, index, &def, "b");
    assert_eq!(b.recover().await.unwrap(), 1);
    assert!(b.outcome(&id("race")).await.unwrap().is_completed());
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_for_two_thirds_of_a_lease_stop_the_driver_and_its_calls() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let def = SagaDefinition::builder("trip")
        .step(gated("flight", gate.clone()))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = FlakyIndex::default();
    let a = build(&store, index.clone(), &def, "a");
    a.start("trip", id("cut"), json!({}), None).await.unwrap();
    until_logged(&a, &id("cut"), step_started("flight")).await;
    index.fail_renew.store(true, Ordering::SeqCst);
    // Renewals every second fail; at two seconds (two thirds of the lease) the driver stops.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(a.handle().count("running"), Some(1), "not yet");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(a.handle().count("running"), Some(0));
    assert_eq!(a.handle().count("lease_lost"), Some(1));
    // The call in flight was dropped: opening the gate now completes nothing.
    gate.add_permits(1);
    tokio::task::yield_now().await;
    let state = a.state(&id("cut")).await.unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Running);
    assert!(!state.outputs.contains_key("flight"));
}

#[tokio::test(start_paused = true)]
async fn two_starts_of_one_id_at_once_run_it_once() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let o = build(&store, MemoryIndex::new(), &def, "a");
    let (x, y) = tokio::join!(
        o.start("trip", id("twice"), json!({}), None),
        o.start("trip", id("twice"), json!({}), None)
    );
    x.unwrap();
    y.unwrap();
    assert!(o.outcome(&id("twice")).await.unwrap().is_completed());
    assert_eq!(o.handle().count("started"), Some(1));
    assert_eq!(o.handle().count("lease_lost"), Some(0));
    assert_eq!(ledger.most_per_step(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_whose_log_is_down_answers_that_the_log_is_unavailable() {
    let def = SagaDefinition::builder("trip")
        .step(Ledger::in_memory().step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(Tap::new(InMemoryStore::new(), None));
    store.fail_appends.store(100, Ordering::SeqCst);
    let o = build(&store, MemoryIndex::new(), &def, "a");
    let err = o
        .start("trip", id("down"), json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, SagaError::Log(_)), "{err:?}");
    let err: tower_patterns_core::BoxError = err.into();
    let res: http::Response<String> = tower_patterns_core::http::error_response(&*err);
    assert_eq!(res.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_awaited_here_takes_its_saga_back_after_its_driver_failed() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let def = SagaDefinition::builder("trip")
        .step(gated("flight", gate.clone()))
        .build()
        .unwrap();
    let store = Arc::new(Tap::new(InMemoryStore::new(), None));
    let o = build(&store, MemoryIndex::new(), &def, "a");
    o.start("trip", id("again"), json!({}), None).await.unwrap();
    until_logged(&o, &id("again"), step_started("flight")).await;
    let waiting = tokio::spawn({
        let o = o.clone();
        async move { o.outcome(&id("again")).await }
    });
    tokio::task::yield_now().await;
    // The log refuses the step's outcome four times (tried again after 100, 200 and 400 ms):
    // the driver gives up.
    store.fail_appends.store(4, Ordering::SeqCst);
    let t0 = tokio::time::Instant::now();
    gate.add_permits(2);
    let out = tokio::time::timeout(60 * SECOND, waiting)
        .await
        .expect("the outcome came")
        .unwrap()
        .unwrap();
    assert!(out.is_completed());
    assert_eq!(o.handle().count("errors"), Some(1));
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
}

/// A start of saga `slow` (one step) by orchestrator "a", its first append held (until
/// `store.hold` is cleared and `store.release` notified) past its lease.
struct SlowStart<I> {
    ledger: Ledger,
    def: SagaDefinition,
    store: Arc<Tap<InMemoryStore>>,
    a: Orchestrator<Tap<InMemoryStore>, I>,
    starting: tokio::task::JoinHandle<Result<(), tower_patterns_saga::SagaError>>,
}

async fn slow_start<I: SagaIndex + Clone>(index: &I) -> SlowStart<I> {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(Tap::new(InMemoryStore::new(), None));
    let a = build(&store, index.clone(), &def, "a");
    store.hold.store(true, Ordering::SeqCst);
    let starting = tokio::spawn({
        let a = a.clone();
        async move { a.start("trip", id("slow"), json!({}), None).await }
    });
    tokio::task::yield_now().await;
    tokio::time::advance(4 * SECOND).await;
    SlowStart {
        ledger,
        def,
        store,
        a,
        starting,
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_slower_than_its_lease_registers_again() {
    let index = MemoryIndex::new();
    let SlowStart {
        ledger: _,
        def,
        store,
        a,
        starting,
    } = slow_start(&index).await;
    // Another orchestrator finds the entry without a log, its lease expired, and removes it.
    let b = build(&store, index.clone(), &def, "b");
    b.recover().await.unwrap();
    assert!(index.list("open", 10).await.unwrap().is_empty());
    // The slow start then lands: it registers again, and the saga ends.
    store.hold.store(false, Ordering::SeqCst);
    store.release.notify_waiters();
    starting.await.unwrap().unwrap();
    // Its driver may have stopped meanwhile (its lease was gone when it renewed); the entry
    // is back, so a worker takes the saga over.
    let _worker = b.spawn_worker();
    let out = tokio::time::timeout(60 * SECOND, a.outcome(&id("slow")))
        .await
        .expect("an outcome")
        .unwrap();
    assert!(out.is_completed());
    assert_eq!(index.list("completed", 10).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_log_that_cannot_be_read_is_stuck_and_a_log_that_is_down_waits() {
    let def = SagaDefinition::builder("trip")
        .step(Ledger::in_memory().step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(Tap::new(InMemoryStore::new(), None));
    let index = MemoryIndex::new();
    // Two sagas left open by a process that died; one log holds an event no saga wrote.
    for (saga, payload) in [
        ("bad", json!({ "not": "a saga event" })),
        (
            "good",
            json!({ "type": "SagaStarted", "saga_type": "trip", "input": {}, "deadline_ms": null, "owner": "x" }),
        ),
    ] {
        assert!(index.register(&id(saga), "trip", "x", 0, 1).await.unwrap());
        let event = EventData::json("SagaStarted", &payload).unwrap();
        store
            .append(&id(saga).stream(), ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
    }
    let o = build(&store, index.clone(), &def, "a");
    // The log is down for the first read: that saga is given back, not marked stuck, and
    // recover's second round (expired leases) takes it again.
    store.fail_reads.store(1, Ordering::SeqCst);
    assert_eq!(o.recover().await.unwrap(), 3);
    let stuck = o.stuck(10).await.unwrap();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(
        (stuck[0].id.as_str(), stuck[0].error.as_str()),
        ("bad", "the saga log cannot be read")
    );
    assert!(o.outcome(&id("good")).await.unwrap().is_completed());
    assert!(o.handle().count("errors").unwrap() >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_finds_its_log_written_already_is_busy() {
    let def = SagaDefinition::builder("trip")
        .step(Ledger::in_memory().step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    // Someone else wrote the stream; the index has no entry.
    let event = EventData::json(
        "SagaResumed",
        &json!({ "type": "SagaResumed", "owner": "x" }),
    )
    .unwrap();
    store
        .append(
            &id("taken").stream(),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .unwrap();
    let o = build(&store, MemoryIndex::new(), &def, "a");
    let err = o
        .start("trip", id("taken"), json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, SagaError::LeaseLost(_)), "{err:?}");
    assert_eq!(o.handle().count("lease_lost"), Some(1));
    assert_eq!(o.handle().count("errors"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_its_backoff_unless_the_deadline_comes_first() {
    use tower_patterns_saga::{Attempts, Backoff};
    let ledger = Ledger::in_memory();
    let backoff = |ms| Attempts::new(3, Backoff::Constant(Duration::from_millis(ms)));
    // Backoff well inside the deadline: retried after 200 ms, completed.
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("flight", Act::FailFirst(1), Act::Ok)
                .retry(backoff(200)),
        )
        .deadline(60 * SECOND)
        .build()
        .unwrap();
    let o = build(
        &Arc::new(InMemoryStore::new()),
        MemoryIndex::new(),
        &def,
        "a",
    );
    let t0 = tokio::time::Instant::now();
    assert!(
        o.run("trip", id("soon"), json!({}))
            .await
            .unwrap()
            .is_completed()
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    // The deadline before the backoff's end: compensated at the deadline, not after the backoff.
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("hotel", Act::FailFirst(1), Act::Ok)
                .retry(backoff(10_000)),
        )
        .deadline(SECOND)
        .build()
        .unwrap();
    let o = build(
        &Arc::new(InMemoryStore::new()),
        MemoryIndex::new(),
        &def,
        "a",
    );
    let t0 = tokio::time::Instant::now();
    let out = o.run("trip", id("late"), json!({})).await.unwrap();
    assert_eq!(
        (out.status, out.reason.as_deref()),
        (SagaStatus::Compensated, Some("deadline passed"))
    );
    assert_eq!(t0.elapsed(), SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_driver_whose_lease_was_taken_stops_at_the_next_renewal() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let def = SagaDefinition::builder("trip")
        .step(gated("flight", gate.clone()))
        .build()
        .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let index = MemoryIndex::new();
    let a = build(&store, index.clone(), &def, "a");
    let b = build(&store, index.clone(), &def, "b");
    a.start("trip", id("moved"), json!({}), None).await.unwrap();
    until_logged(&a, &id("moved"), step_started("flight")).await;
    // The lease moves to b (as after a's lease expired while a was cut off).
    index.release(&id("moved"), "a").await.unwrap();
    assert_eq!(b.recover().await.unwrap(), 1);
    assert_eq!(a.handle().count("running"), Some(1));
    // a's next renewal (every second) finds the saga b's: a stops, its call dropped; b goes on.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(a.handle().count("running"), Some(0));
    assert_eq!(a.handle().count("lease_lost"), Some(1));
    assert_eq!(
        b.handle().count("running"),
        Some(1),
        "b keeps its own lease"
    );
    gate.add_permits(1);
    assert!(b.outcome(&id("moved")).await.unwrap().is_completed());
    assert_eq!(b.handle().count("lease_lost"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn retry_keeps_the_keys_and_retry_with_new_keys_moves_to_the_next_generation() {
    use tower_patterns_saga::{Attempts, Backoff};
    let ledger = Ledger::in_memory();
    let once = Attempts::new(1, Backoff::Constant(Duration::ZERO));
    let def = SagaDefinition::builder("trip")
        .step(
            ledger
                .step("flight", Act::Ok, Act::FailFirst(2))
                .compensation_retry(once),
        )
        .step(ledger.step("hotel", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let o = build(
        &Arc::new(InMemoryStore::new()),
        MemoryIndex::new(),
        &def,
        "a",
    );
    assert_eq!(
        o.run("trip", id("k"), json!({})).await.unwrap().status,
        SagaStatus::Stuck
    );
    assert_eq!(
        o.retry(&id("k"), "ada", "again").await.unwrap().status,
        SagaStatus::Stuck
    );
    let out = o
        .retry_with_new_keys(&id("k"), "ada", "the service cached its failure")
        .await
        .unwrap();
    assert_eq!(out.status, SagaStatus::Compensated);
    assert_eq!(
        ledger.keys("k", "flight"),
        ["k/flight/do/0", "k/flight/undo/1"]
    );
    let generations: Vec<u32> = o
        .history(&id("k"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            SagaEvent::SagaRetried { generation, .. } => Some(generation),
            _ => None,
        })
        .collect();
    assert_eq!(generations, [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_saga_being_retried_is_open_in_the_index_so_a_crash_mid_retry_recovers_it() {
    use std::sync::atomic::AtomicBool;
    use tower_patterns_saga::{Attempts, Backoff, Step, StepRequest};
    let failing = Arc::new(AtomicBool::new(true));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let undo = {
        let (failing, gate) = (failing.clone(), gate.clone());
        tower::service_fn(move |_r: StepRequest| {
            let (failing, gate) = (failing.clone(), gate.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    return Err::<serde_json::Value, tower_patterns_core::BoxError>("down".into());
                }
                gate.acquire().await.unwrap().forget();
                Ok(json!(null))
            }
        })
    };
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(
            Step::new("flight", ledger.service(Act::Ok))
                .compensate_with(undo)
                .compensation_retry(Attempts::new(1, Backoff::Constant(Duration::ZERO))),
        )
        .step(ledger.step("hotel", Act::Refuse, Act::Ok))
        .build()
        .unwrap();
    let index = MemoryIndex::new();
    let o = build(&Arc::new(InMemoryStore::new()), index.clone(), &def, "a");
    assert_eq!(
        o.run("trip", id("r"), json!({})).await.unwrap().status,
        SagaStatus::Stuck
    );
    assert_eq!(index.list("stuck", 10).await.unwrap().len(), 1);
    failing.store(false, Ordering::SeqCst);
    let retrying = tokio::spawn({
        let o = o.clone();
        async move { o.retry(&id("r"), "ada", "the airline is back").await }
    });
    until_logged(&o, &id("r"), |e| {
        matches!(e, SagaEvent::StepCompensationStarted { attempt: 1, .. })
    })
    .await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let open = index.list("open", 10).await.unwrap();
    assert_eq!(
        open.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["r"],
        "open while retried"
    );
    gate.add_permits(1);
    assert_eq!(
        retrying.await.unwrap().unwrap().status,
        SagaStatus::Compensated
    );
}

/// The other order: the slow start lands, and registers again, after the recovery read its
/// empty log but before it removed the entry (so the second registration found the
/// recovery's entry and changed nothing). The recovery puts the entry back in the
/// starter's name, and the saga ends.
#[tokio::test(start_paused = true)]
async fn a_start_that_lands_while_a_recovery_removes_its_entry_is_not_lost() {
    let index = FlakyIndex::default();
    let SlowStart {
        ledger,
        def,
        store,
        a,
        starting,
    } = slow_start(&index).await;
    // Another orchestrator claims the entry (its lease expired) and reads no log. Just before
    // it removes the entry, the start lands: logged, and registered again (a no-op: b's
    // entry is there).
    *index.before_remove.lock().unwrap() = Some(Box::pin({
        let store = store.clone();
        async move {
            store.hold.store(false, Ordering::SeqCst);
            store.release.notify_waiters();
            starting.await.unwrap().unwrap();
        }
    }));
    let b = build(&store, index.clone(), &def, "b");
    b.recover().await.unwrap();
    assert!(index.before_remove.lock().unwrap().is_none(), "removed");
    let open = index.inner.list("open", 10).await.unwrap();
    assert_eq!(
        open.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["slow"],
        "the entry is back"
    );
    let _worker = b.spawn_worker();
    let out = tokio::time::timeout(60 * SECOND, a.outcome(&id("slow")))
        .await
        .expect("an outcome")
        .unwrap();
    assert!(out.is_completed());
    assert_eq!(ledger.done("slow"), ["flight"]);
}

#[tokio::test(start_paused = true)]
async fn a_start_of_an_id_a_dead_process_registered_without_a_log_begins_it() {
    let ledger = Ledger::in_memory();
    let def = SagaDefinition::builder("trip")
        .step(ledger.step("flight", Act::Ok, Act::Ok))
        .build()
        .unwrap();
    let index = MemoryIndex::new();
    // Registered by "x", which died before logging the start; its lease long expired.
    assert!(
        index
            .register(&id("orphan"), "trip", "x", 0, 1)
            .await
            .unwrap()
    );
    let o = build(&Arc::new(InMemoryStore::new()), index, &def, "a");
    o.start("trip", id("orphan"), json!({}), None)
        .await
        .unwrap();
    assert!(o.outcome(&id("orphan")).await.unwrap().is_completed());
    assert_eq!(ledger.done("orphan"), ["flight"]);
}
