//! The outbox relay when a publish fails in the middle of a batch (it retries from the first
//! unacknowledged event and goes on, never fenced by its own checkpoint, and sends the events
//! behind it again once, not at every retry), and against
//! PostgreSQL with an append left open in the caller's transaction (nothing uncommitted is
//! published, nothing after it either until it ends; a rolled-back event never is).
#![cfg(feature = "nats")]

mod nats_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{header::NATS_MESSAGE_ID, jetstream};
use nats_support::{fresh_stream, nats};
use serde_json::json;
use tower_patterns_core::backoff::Backoff;
use tower_patterns_cqrs::{
    CheckpointStore, MemoryCheckpoints,
    bus::{self, BusError, OutboxRelayHandle},
};
use tower_patterns_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore, RecordedEvent,
};

const WAIT: Duration = Duration::from_secs(20);

/// The `Nats-Msg-Id` of every message of `stream`, in stream order.
async fn stored_ids(stream: &mut jetstream::stream::Stream) -> Vec<String> {
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut all = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        all.push(m.headers.get(NATS_MESSAGE_ID).unwrap().to_string());
    }
    all
}

fn ids(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

fn event(i: u64) -> EventData {
    EventData::json("PriceUpdated", &json!({ "sku": i, "price": i * 10 })).unwrap()
}

/// Waits until the relay's checkpoint reaches `position`; fails at once if the relay stops.
async fn reaches(
    handle: &OutboxRelayHandle,
    task: &mut tokio::task::JoinHandle<Result<(), BusError>>,
    position: GlobalPosition,
) {
    tokio::select! {
        reached = handle.wait_for(position, WAIT) => assert!(
            reached,
            "relay at {} of {position}; last error {:?}",
            handle.position(),
            handle.last_error()
        ),
        stopped = task => panic!("the relay stopped: {stopped:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_failing_mid_batch_is_retried_and_the_relay_goes_on() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "MIDBATCH").await;
    let store = Arc::new(InMemoryStore::new());
    for i in 0..40 {
        store
            .append(
                &format!("product-{}", i % 5),
                ExpectedVersion::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let events = store.read_all(GlobalPosition::START, 1_000).await.unwrap();
    // Batches of 10: the 7th event of the second batch goes, once, to a subject no stream
    // captures (JetStream answers "no responders"); the six before it are acknowledged.
    let failing = events[16].position;
    let failed = Arc::new(AtomicBool::new(false));
    let f = failed.clone();
    let nowhere = format!("tp_nowhere_{}.x", uuid::Uuid::now_v7().simple());
    let checkpoints = MemoryCheckpoints::new();
    let name = format!("midbatch-{}", uuid::Uuid::now_v7().simple());
    let (handle, mut task) = bus::OutboxRelay::builder(name.as_str())
        .source(store.clone())
        .checkpoints(checkpoints.clone())
        .jetstream(js.clone())
        .subject(move |e| {
            if e.position == failing && !f.swap(true, Ordering::SeqCst) {
                return nowhere.clone();
            }
            format!("{prefix}.{}", e.event_type)
        })
        .batch(10)
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_millis(50),
        )
        .build()
        .unwrap()
        .spawn();
    let last = events.last().unwrap().position;
    reaches(&handle, &mut task, last).await;
    assert!(failed.load(Ordering::SeqCst), "the failure happened");
    assert_eq!(handle.errors(), 1, "one failure, one retry");

    // Every event once. The failed one was stored on its retry, after the three events of
    // its batch that had already been published behind it (JetStream dropped their repeats).
    let mut expected = ids(&events);
    let moved = expected.remove(16);
    expected.insert(19, moved);
    assert_eq!(stored_ids(&mut stream).await, expected);
    assert_eq!((handle.published(), handle.duplicates()), (40, 3));
    let cp = checkpoints
        .load(&format!("outbox:{name}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.position, last);

    // Still live: a later event is published.
    store
        .append("product-9", ExpectedVersion::Any, vec![event(99)])
        .await
        .unwrap();
    let more = store.read_all(last, 10).await.unwrap();
    reaches(&handle, &mut task, more[0].position).await;
    assert_eq!(stored_ids(&mut stream).await.len(), 41);
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_failure_do_not_resend_the_rest_of_the_batch_each_time() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "RETRIES").await;
    let store = Arc::new(InMemoryStore::new());
    for i in 0..20 {
        store
            .append(
                &format!("product-{}", i % 5),
                ExpectedVersion::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let events = store.read_all(GlobalPosition::START, 1_000).await.unwrap();
    // Batches of 10: the 4th event of the second batch goes four times to a subject no
    // stream captures. Every publish of each event is counted (the relay asks its subject
    // once per publish).
    const FAILURES: u32 = 4;
    let failing = events[13].position;
    let sends: Arc<std::sync::Mutex<std::collections::HashMap<GlobalPosition, u32>>> =
        Arc::default();
    let s = sends.clone();
    let nowhere = format!("tp_nowhere_{}.x", uuid::Uuid::now_v7().simple());
    let name = format!("retries-{}", uuid::Uuid::now_v7().simple());
    let (handle, mut task) = bus::OutboxRelay::builder(name.as_str())
        .source(store.clone())
        .checkpoints(MemoryCheckpoints::new())
        .jetstream(js.clone())
        .subject(move |e| {
            let mut sends = s.lock().unwrap();
            let n = sends.entry(e.position).or_default();
            *n += 1;
            if e.position == failing && *n <= FAILURES {
                return nowhere.clone();
            }
            format!("{prefix}.{}", e.event_type)
        })
        .batch(10)
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_millis(50),
        )
        .build()
        .unwrap()
        .spawn();
    reaches(&handle, &mut task, events.last().unwrap().position).await;
    assert_eq!(handle.errors(), u64::from(FAILURES));
    let sends = sends.lock().unwrap().clone();
    for (i, e) in events.iter().enumerate() {
        let expected = match i {
            13 => FAILURES + 1,
            // Sent behind the first failure, then once more after the retry got through.
            14..20 => 2,
            _ => 1,
        };
        assert_eq!(sends[&e.position], expected, "publishes of event {i}");
    }
    // Every event stored once; the repeats of the six behind the failed one were dropped.
    assert_eq!(stored_ids(&mut stream).await.len(), 20);
    assert_eq!((handle.published(), handle.duplicates()), (20, 6));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_uncommitted_is_published_nor_anything_after_it() {
    use tower_patterns_eventstore::postgres::PostgresStore;

    let Some(js) = nats().await else { return };
    let Some(url) = tower_patterns_testkit::fresh_postgres("relay_open").await else {
        return;
    };
    let (mut stream, prefix) = fresh_stream(&js, "OPEN").await;
    let store = Arc::new(PostgresStore::connect(&url, 4).await.unwrap());
    let append = |stream: &'static str, i: u64| {
        let store = store.clone();
        async move {
            store
                .append(stream, ExpectedVersion::Any, vec![event(i)])
                .await
                .unwrap()
                .positions[0]
        }
    };
    for i in 0..3 {
        append("product-0", i).await;
    }
    let first = store.read_all(GlobalPosition::START, 10).await.unwrap();
    let (handle, mut task) = bus::OutboxRelay::builder("open")
        .source(store.clone())
        .checkpoints(MemoryCheckpoints::new())
        .jetstream(js.clone())
        .subject(move |e| format!("{prefix}.{}", e.event_type))
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_millis(50),
        )
        .build()
        .unwrap()
        .spawn();
    reaches(&handle, &mut task, first[2].position).await;

    // A: appended in the caller's transaction, left open; B: a later append, committed.
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let a = store
        .append_in(&tx, "product-a", ExpectedVersion::Any, vec![event(100)])
        .await
        .unwrap();
    let pb = append("product-b", 101).await;
    assert!(a.positions[0] < pb, "A holds the earlier position");
    assert!(
        !handle.wait_for(pb, Duration::from_secs(2)).await,
        "B published while A is open"
    );
    assert_eq!(stored_ids(&mut stream).await, ids(&first));

    // A rolled back: never published; B is.
    tx.rollback().await.unwrap();
    reaches(&handle, &mut task, pb).await;
    let b = store.read_all(first[2].position, 10).await.unwrap();
    assert_eq!(b.len(), 1, "A is not in the log");
    let mut expected = ids(&first);
    expected.extend(ids(&b));
    assert_eq!(stored_ids(&mut stream).await, expected);

    // C: open again, D committed after it; C committed: both published once, in log order.
    let tx = conn.transaction().await.unwrap();
    let c = store
        .append_in(&tx, "product-c", ExpectedVersion::Any, vec![event(102)])
        .await
        .unwrap();
    let pd = append("product-d", 103).await;
    assert!(c.positions[0] < pd);
    assert!(
        !handle.wait_for(pd, Duration::from_secs(2)).await,
        "D published while C is open"
    );
    assert_eq!(stored_ids(&mut stream).await, expected);
    tx.commit().await.unwrap();
    reaches(&handle, &mut task, pd).await;
    let cd = store.read_all(pb, 10).await.unwrap();
    assert_eq!(
        cd.iter().map(|e| e.position).collect::<Vec<_>>(),
        [c.positions[0], pd]
    );
    expected.extend(ids(&cd));
    assert_eq!(stored_ids(&mut stream).await, expected);
    assert_eq!((handle.published(), handle.duplicates()), (6, 0));
    handle.stop();
    task.await.unwrap().unwrap();
}
