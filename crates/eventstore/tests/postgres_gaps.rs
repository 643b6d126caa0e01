//! Gap safety on PostgreSQL: a reader following the global log never skips an event whose
//! transaction committed after a later one. Needs the test command's PostgreSQL (skipped with a
//! printed reason under plain `cargo test`).
#![cfg(feature = "postgres")]

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use serde_json::json;
use tower_patterns_core::rng::SplitMix64;
use tower_patterns_eventstore::{
    Direction, EventData, EventStore, ExpectedVersion, GlobalPosition, postgres::PostgresStore,
    subscribe,
};

fn ev(n: u64) -> EventData {
    EventData::json("E", &json!({ "n": n })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_not_skipped() {
    let Some(url) = common::fresh_postgres("gap").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 4).await.unwrap();

    // Transaction A appends first (lower sequence number) and stays open.
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let a = store
        .append_in(&tx, "gap-a", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    // B appends after it and commits first.
    let b = store
        .append("gap-b", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    assert!(
        a.positions[0].index < b.positions[0].index,
        "A took the lower sequence number"
    );

    // The trap is real: by sequence number alone, B is visible and A is not.
    let (peek, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let visible: Vec<i64> = peek
        .query("SELECT seq FROM tp_events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(visible, [i64::try_from(b.positions[0].index).unwrap()]);

    // The store's reader shows neither while A is open: it cannot know A's fate yet.
    assert!(
        store
            .read_all(GlobalPosition::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Nor does the gated read for SQL readers.
    let in_sql: i64 = peek
        .query_one("SELECT count(*) FROM tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_sql, 0);
    // Nor do the lag measures: B is not counted while A may still take the place before it.
    assert!(store.head().await.unwrap().is_none());
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        0
    );
    tx.commit().await.unwrap();
    // Both now (the commit's reply comes after its locks are gone), and never B before A.
    let mut log = Vec::new();
    for _ in 0..200 {
        log = store.read_all(GlobalPosition::START, 10).await.unwrap();
        assert!(
            log.first().is_none_or(|e| e.stream_id == "gap-a"),
            "B before A"
        );
        if log.len() == 2 {
            break;
        }
        store
            .wait_for_events(log.last().map_or(GlobalPosition::START, |e| e.position))
            .await;
    }
    assert_eq!(
        log.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(),
        ["gap-a", "gap-b"],
        "A, then B: nothing skipped"
    );
    assert!(log[0].position < log[1].position);
    let in_sql: Vec<i64> = peek
        .query("SELECT r_seq FROM tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        in_sql,
        [log[0].position.index as i64, log[1].position.index as i64]
    );
}

/// How a writer of the follower test appends: alone, in its own transaction (committed or
/// rolled back), or twice in one transaction.
#[derive(Clone, Copy, Debug)]
enum Write {
    Append,
    InTx,
    RolledBack,
    TwiceInTx,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_every_event_once_under_concurrent_writers() {
    follow_concurrent_writers("gapfollow", Duration::ZERO).await;
}

/// The same with the gate reused for up to 2 ms: reads may wait a little longer, never skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reusing_the_gate_sees_every_event_once() {
    follow_concurrent_writers("gapreuse", Duration::from_millis(2)).await;
}

async fn follow_concurrent_writers(tag: &str, reuse: Duration) {
    let Some(url) = common::fresh_postgres(tag).await else {
        return;
    };
    let store = Arc::new(
        PostgresStore::connect(&url, 12)
            .await
            .unwrap()
            .with_gate_reuse(reuse),
    );
    const WRITERS: u64 = 8;
    const EACH: u64 = 20;
    let plans: Vec<Vec<Write>> = (0..WRITERS)
        .map(|w| {
            let mut rng = SplitMix64::new(1_000 + w);
            (0..EACH)
                .map(|_| match rng.next_u64() % 4 {
                    0 => Write::Append,
                    1 => Write::InTx,
                    2 => Write::RolledBack,
                    _ => Write::TwiceInTx,
                })
                .collect()
        })
        .collect();
    let expected: u64 = plans
        .iter()
        .flatten()
        .map(|p| match p {
            Write::Append | Write::InTx => 1,
            Write::RolledBack => 0,
            Write::TwiceInTx => 2,
        })
        .sum();
    assert!(
        plans
            .iter()
            .flatten()
            .any(|p| matches!(p, Write::RolledBack)),
        "the plan rolls some appends back"
    );
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut sub = Box::pin(subscribe(store, GlobalPosition::START));
            while (seen.len() as u64) < expected {
                let e = tokio::time::timeout(Duration::from_secs(20), sub.next())
                    .await
                    .expect("the follower keeps up")
                    .unwrap()
                    .unwrap();
                seen.push(e);
            }
            seen
        })
    };
    // Positions in the order their transactions committed.
    let committed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rolled_back = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let writers: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(w, plan)| {
            let store = store.clone();
            let committed = committed.clone();
            let rolled_back = rolled_back.clone();
            tokio::spawn(async move {
                let mut rng = SplitMix64::new(w as u64);
                let stream = format!("w{w}");
                for (i, how) in plan.into_iter().enumerate() {
                    let n = w as u64 * 100 + i as u64;
                    if let Write::Append = how {
                        let done = store
                            .append(&stream, ExpectedVersion::Any, vec![ev(n)])
                            .await
                            .unwrap();
                        committed.lock().unwrap().extend(done.positions);
                        continue;
                    }
                    let mut client = store.pool().get().await.unwrap();
                    let tx = client.transaction().await.unwrap();
                    let mut positions = store
                        .append_in(&tx, &stream, ExpectedVersion::Any, vec![ev(n)])
                        .await
                        .unwrap()
                        .positions;
                    if let Write::TwiceInTx = how {
                        positions.extend(
                            store
                                .append_in(
                                    &tx,
                                    &format!("{stream}-b"),
                                    ExpectedVersion::Any,
                                    vec![ev(n + 50)],
                                )
                                .await
                                .unwrap()
                                .positions,
                        );
                    }
                    // Hold the transaction open a little, so commits interleave out of order.
                    let ms = rng.next_u64() % 5;
                    tx.batch_execute(&format!("SELECT pg_sleep({})", ms as f64 / 1000.0))
                        .await
                        .unwrap();
                    if let Write::RolledBack = how {
                        tx.rollback().await.unwrap();
                        rolled_back.lock().unwrap().extend(positions);
                    } else {
                        tx.commit().await.unwrap();
                        committed.lock().unwrap().extend(positions);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let seen = follower.await.unwrap();
    let ids: HashSet<_> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len() as u64, expected, "every event exactly once");
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "in order"
    );
    let rolled_back = std::mem::take(&mut *rolled_back.lock().unwrap());
    assert!(
        seen.iter().all(|e| !rolled_back.contains(&e.position)),
        "nothing rolled back is read"
    );
    let all = store.read_all(GlobalPosition::START, 10_000).await.unwrap();
    assert_eq!(all.len() as u64, expected);
    assert_eq!(
        store
            .count_after(GlobalPosition::START, 10_000)
            .await
            .unwrap(),
        expected
    );
    assert_eq!(
        store.head().await.unwrap().map(|e| e.position),
        seen.last().map(|e| e.position)
    );
    // The transactions committed out of append order at least once (else the test proves
    // little): the follower was held back behind an open append.
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    assert!(
        committed.windows(2).any(|w| w[0] > w[1]),
        "the writers committed out of append order at least once"
    );
}

/// Append numbers compare as numbers: 9 comes before 10 and 100, whatever order the rows were
/// written in. (The first layout kept transaction ids and once sorted them as text: a follower
/// went backwards when the ids crossed 1,000.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_order_numerically_across_digit_boundaries() {
    let Some(url) = common::fresh_postgres("digits").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 2).await.unwrap();
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Rows as appends 9, 10 and 100 would have written them, inserted out of order, then the
    // sequence moved past them as those appends would have left it.
    for (commit, n) in [(100i64, 2), (9, 0), (10, 1)] {
        raw.execute(
            "INSERT INTO tp_events (commit_no, stream_id, version, event_id, event_type, \
             schema_version, payload, metadata, recorded_at) \
             VALUES ($1, 's', $2, gen_random_uuid(), 'E', 1, '{}', '{}', 0)",
            &[&commit, &(n + 1i64)],
        )
        .await
        .unwrap();
    }
    raw.execute("SELECT setval('tp_commit_seq', 100)", &[])
        .await
        .unwrap();
    let all = store.read_all(GlobalPosition::START, 10).await.unwrap();
    let commits: Vec<u64> = all.iter().map(|e| e.position.commit).collect();
    assert_eq!(commits, [9, 10, 100]);
    let after_first = store.read_all(all[0].position, 10).await.unwrap();
    assert_eq!(after_first.len(), 2);
    let back = store
        .read_stream(
            "s",
            u64::MAX,
            tower_patterns_eventstore::Direction::Backward,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
}
/// Reads until `n` events after `after` are readable, or `within` passes (then `None`).
async fn readable_within(
    store: &PostgresStore,
    after: GlobalPosition,
    n: usize,
    within: Duration,
) -> Option<Vec<tower_patterns_eventstore::RecordedEvent>> {
    tokio::time::timeout(within, async {
        loop {
            let page = store.read_all(after, 100).await.unwrap();
            if page.len() >= n {
                return page;
            }
            store
                .wait_for_events(page.last().map_or(after, |e| e.position))
                .await;
        }
    })
    .await
    .ok()
}

/// An open writing transaction in another database of the cluster (a plain table, and an
/// append to that database's own event store) does not hold back this store's readers: the
/// photo feed keeps moving while a batch job elsewhere keeps its transaction open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_writer_in_another_database_does_not_delay_reads() {
    let Some(url) = common::fresh_postgres("gateown").await else {
        return;
    };
    let other_url = common::fresh_postgres("gateother").await.unwrap();
    let store = PostgresStore::connect(&url, 4).await.unwrap();
    let other = PostgresStore::connect(&other_url, 2).await.unwrap();

    let mut client = other.pool().get().await.unwrap();
    client
        .batch_execute("CREATE TABLE batch_job (n int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO batch_job VALUES (1)", &[])
        .await
        .unwrap();
    other
        .append_in(&tx, "elsewhere", ExpectedVersion::Any, vec![ev(0)])
        .await
        .unwrap();
    let xid: String = tx
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!xid.is_empty(), "the other transaction has written");

    let done = store
        .append("feed-1", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let log = readable_within(&store, GlobalPosition::START, 1, Duration::from_secs(1))
        .await
        .expect("the append is readable while the other database's transaction stays open");
    assert_eq!(log[0].position, done.positions[0]);
    tx.rollback().await.unwrap();
}

/// The same for an open writing transaction in the store's own database that touches no table
/// of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_open_writer_in_the_same_database_does_not_delay_reads() {
    let Some(url) = common::fresh_postgres("gatesame").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 4).await.unwrap();
    let mut client = store.pool().get().await.unwrap();
    client
        .batch_execute("CREATE TABLE unrelated (n int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO unrelated VALUES (1)", &[])
        .await
        .unwrap();

    let done = store
        .append("feed-1", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let log = readable_within(&store, GlobalPosition::START, 1, Duration::from_secs(1))
        .await
        .expect("the append is readable while the unrelated transaction stays open");
    assert_eq!(log[0].position, done.positions[0]);
    tx.commit().await.unwrap();
}

/// The old layout's append, as the first store called it: (stream, expected, ids, types,
/// schema versions, payloads, metadata, recorded at).
const OLD_APPEND: &str = "SELECT * FROM tp_append($1, -1, ARRAY[$2::uuid], ARRAY['E'], ARRAY[1], \
                          ARRAY[$3], ARRAY['{\"recorded_at_micros\":1}'], 1)";

async fn old_append(c: &impl tokio_postgres::GenericClient, stream: &str, n: u64) {
    let payload = serde_json::json!({ "n": n }).to_string();
    c.execute(OLD_APPEND, &[&stream, &uuid::Uuid::now_v7(), &payload])
        .await
        .unwrap();
}

/// A database the first layout wrote (positions were transaction ids, reads gated on the
/// cluster's oldest transaction) is migrated on connect: the log reads back in the same order,
/// with append numbers as positions, and later appends come after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_first_layout_is_migrated_in_order() {
    let Some(url) = common::fresh_postgres("migrate").await else {
        return;
    };
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let mut first = connect().await;
    let second = connect().await;
    first
        .batch_execute(include_str!("fixtures/postgres_schema_v1.sql"))
        .await
        .unwrap();
    // Transaction T1 takes its id first but appends last; T2 appends in between and commits
    // first. The first layout orders by transaction id: T1's events (higher sequence numbers)
    // before T2's.
    let t1 = first.transaction().await.unwrap();
    t1.execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    old_append(&second, "b", 1).await;
    for n in [1, 2] {
        old_append(&t1, "a", n).await;
    }
    t1.commit().await.unwrap();
    old_append(&second, "c", 1).await;
    let old: Vec<(String, i64, i64)> = second
        .query(
            "SELECT stream_id, version, seq FROM tp_events ORDER BY tx_id, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        old.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
        ["a", "a", "b", "c"],
        "the first layout's order differs from the sequence's"
    );
    assert!(
        old[0].2 > old[2].2,
        "T1's events have the higher sequence numbers"
    );

    let store = PostgresStore::connect(&url, 2).await.unwrap();
    let log = store.read_all(GlobalPosition::START, 10).await.unwrap();
    let read: Vec<(String, i64, i64)> = log
        .iter()
        .map(|e| {
            (
                e.stream_id.clone(),
                e.version as i64,
                e.position.index as i64,
            )
        })
        .collect();
    assert_eq!(read, old, "same events, same order, same sequence numbers");
    assert_eq!(
        log.iter().map(|e| e.position.commit).collect::<Vec<_>>(),
        [1, 1, 2, 3],
        "one append number per old transaction, in their order"
    );
    assert_eq!(log[1].payload.get(), r#"{"n":2}"#);
    // Later appends come after every migrated event; a second connect changes nothing.
    let done = store
        .append("d", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    assert!(done.positions[0] > log[3].position);
    let again = PostgresStore::connect(&url, 2).await.unwrap();
    let all = again.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[..4].iter().map(|e| e.id).collect::<Vec<_>>(),
        log.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(all[4].position, done.positions[0]);
    let tx_id_left: bool = second
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'tp_events'::regclass \
             AND attname = 'tx_id' AND NOT attisdropped)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!tx_id_left, "the transaction id column is gone");
}

/// Sessions whose default isolation is above READ COMMITTED cannot gate and read in one call
/// (one snapshot would predate the gate): `tp_read_all` refuses; the store, which computes the
/// gate and reads in two autocommit statements, still never passes an open append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_gap_safe_when_sessions_default_to_repeatable_read() {
    let Some(url) = common::fresh_postgres("isolation").await else {
        return;
    };
    let db = url.rsplit_once('/').unwrap().1.to_owned();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_isolation = 'repeatable read'"
        ))
        .await
        .unwrap();
    let store = PostgresStore::connect(&url, 4).await.unwrap();
    let mut client = store.pool().get().await.unwrap();
    let refused = client
        .query("SELECT * FROM tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("TP001"), "{refused}");

    let tx = client.transaction().await.unwrap();
    let a = store
        .append_in(&tx, "iso-a", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let b = store
        .append("iso-b", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    assert!(
        store
            .read_all(GlobalPosition::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.head().await.unwrap().is_none());
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        0
    );
    tx.commit().await.unwrap();
    let log = readable_within(&store, GlobalPosition::START, 2, Duration::from_secs(5))
        .await
        .expect("both readable once A commits");
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        [a.positions[0], b.positions[0]]
    );
    assert_eq!(
        store.head().await.unwrap().unwrap().position,
        b.positions[0]
    );
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        2
    );
}

/// Two appends open at once (one of them appending twice in its transaction): the older one
/// holds back everything after its place, whichever commits first; nothing shows out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_open_append_holds_back_later_positions() {
    let Some(url) = common::fresh_postgres("oldest").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 6).await.unwrap();
    let streams = |log: &[tower_patterns_eventstore::RecordedEvent]| {
        log.iter().map(|e| e.stream_id.clone()).collect::<Vec<_>>()
    };
    let read = || async { store.read_all(GlobalPosition::START, 100).await.unwrap() };
    store
        .append("e0", ExpectedVersion::Any, vec![ev(0)])
        .await
        .unwrap();
    let mut ca = store.pool().get().await.unwrap();
    let a = ca.transaction().await.unwrap();
    store
        .append_in(&a, "a", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    store
        .append("x", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    let mut cb = store.pool().get().await.unwrap();
    let b = cb.transaction().await.unwrap();
    store
        .append_in(&b, "b", ExpectedVersion::Any, vec![ev(3)])
        .await
        .unwrap();
    store
        .append("y", ExpectedVersion::Any, vec![ev(4)])
        .await
        .unwrap();
    // A appends again in the same transaction, after the others.
    store
        .append_in(&a, "a2", ExpectedVersion::Any, vec![ev(5)])
        .await
        .unwrap();
    assert_eq!(
        streams(&read().await),
        ["e0"],
        "A, open, holds back x, b and y"
    );
    b.commit().await.unwrap();
    assert_eq!(
        streams(&read().await),
        ["e0"],
        "B committed first: A still holds back x, b and y"
    );
    assert_eq!(
        store.count_after(GlobalPosition::START, 100).await.unwrap(),
        1
    );
    a.commit().await.unwrap();
    assert_eq!(
        streams(&read().await),
        ["e0", "a", "x", "b", "y", "a2"],
        "all, in append order"
    );
    assert_eq!(store.head().await.unwrap().unwrap().stream_id, "a2");
}

/// A transaction's appends announce themselves once (its first append's locks hold back the
/// rest), so a transaction of many appends takes three locks, not one per append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appends_in_one_transaction_take_the_gate_locks_once() {
    let Some(url) = common::fresh_postgres("manyappends").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 4).await.unwrap();
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    for n in 0..50 {
        store
            .append_in(&tx, &format!("bulk-{n}"), ExpectedVersion::Any, vec![ev(n)])
            .await
            .unwrap();
        // Another append commits in between, so each of ours sees a new sequence value.
        store
            .append("between", ExpectedVersion::Any, vec![ev(n)])
            .await
            .unwrap();
    }
    let locks: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND classid IN (7403525, 7403526, 7403529)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 3);
    assert!(
        store
            .read_all(GlobalPosition::START, 200)
            .await
            .unwrap()
            .is_empty(),
        "the first append holds back all that follow"
    );
    tx.commit().await.unwrap();
    let log = store.read_all(GlobalPosition::START, 200).await.unwrap();
    assert_eq!(log.len(), 100);
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
}

/// An append in a savepoint that is rolled back takes its locks with it; the transaction's next
/// append announces itself again and still holds back later appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_a_rolled_back_savepoint_still_holds_back_later_ones() {
    let Some(url) = common::fresh_postgres("savepoint").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 4).await.unwrap();
    let mut client = store.pool().get().await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    {
        let sp = tx.savepoint("first").await.unwrap();
        store
            .append_in(&sp, "gone", ExpectedVersion::Any, vec![ev(0)])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
    }
    let kept = store
        .append_in(&tx, "kept", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let later = store
        .append("later", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    assert!(kept.positions[0] < later.positions[0]);
    assert!(
        store
            .read_all(GlobalPosition::START, 10)
            .await
            .unwrap()
            .is_empty(),
        "the open append holds back the later one"
    );
    tx.commit().await.unwrap();
    let log = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(),
        ["kept", "later"]
    );
}

/// A store in schema `schema` of the database at `url` (its own tables, sequence and functions,
/// reached through the connection's `search_path`).
async fn store_in_schema(url: &str, schema: &str) -> PostgresStore {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap();
    PostgresStore::connect(&format!("{url}?options=-csearch_path%3D{schema}"), 4)
        .await
        .unwrap()
}

/// One transaction (on a connection of the store in schema `a`) appends to that store, then to
/// the store in schema `b`, whose sequence is far behind `a`'s. Each store's first append in the
/// transaction announces itself in that store's numbers: `b`'s readers are held back by the open
/// append to `b`, not let past it by the bound `a`'s append announced, and see it once it
/// commits, before what `b` appended after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_appending_to_two_schemas_holds_back_each_stores_readers() {
    two_schemas_in_one_transaction("twoschemas", false).await;
}

/// The same where both schemas still have the append of a release whose transaction-local marker
/// every schema shared: connecting replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_replaces_an_append_whose_marker_every_schema_shared() {
    two_schemas_in_one_transaction("oldmarker", true).await;
}

async fn two_schemas_in_one_transaction(tag: &str, old_appends_first: bool) {
    let Some(url) = common::fresh_postgres(tag).await else {
        return;
    };
    let mut a = store_in_schema(&url, "a").await;
    let mut b = store_in_schema(&url, "b").await;
    if old_appends_first {
        for (store, schema) in [(&a, "a"), (&b, "b")] {
            let client = store.pool().get().await.unwrap();
            client
                .batch_execute(include_str!("fixtures/postgres_append_shared_marker.sql"))
                .await
                .unwrap();
            let src: String = client
                .query_one(
                    &format!(
                        "SELECT prosrc FROM pg_proc WHERE oid = '{schema}.tp_append'::regproc"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                src.contains("'tp.append_floor'"),
                "the old append is in {schema}"
            );
        }
        a = store_in_schema(&url, "a").await;
        b = store_in_schema(&url, "b").await;
    }
    // Schema a's numbers far ahead of b's.
    a.pool()
        .get()
        .await
        .unwrap()
        .batch_execute("SELECT setval('a.tp_commit_seq', 1000)")
        .await
        .unwrap();

    let mut client = a.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let in_a = a
        .append_in(&tx, "in-a", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let in_b = b
        .append_in(&tx, "in-b", ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap();
    assert!(
        in_a.positions[0].commit > 1000 && in_b.positions[0].commit < 1000,
        "each store appends to its own schema, numbered by its own sequence: {in_a:?} {in_b:?}"
    );
    // Each store once more in the same transaction (no more locks: counted below).
    a.append_in(&tx, "in-a", ExpectedVersion::Any, vec![ev(3)])
        .await
        .unwrap();
    let in_b2 = b
        .append_in(&tx, "in-b", ExpectedVersion::Any, vec![ev(4)])
        .await
        .unwrap();

    // b appends after the open transaction and commits first.
    let later = b
        .append("later", ExpectedVersion::Any, vec![ev(5)])
        .await
        .unwrap();
    assert!(later.positions[0] > in_b2.positions[0]);
    assert!(
        b.read_all(GlobalPosition::START, 10)
            .await
            .unwrap()
            .is_empty(),
        "b's reader does not pass b's open append"
    );
    assert!(b.head().await.unwrap().is_none());
    assert_eq!(b.count_after(GlobalPosition::START, 10).await.unwrap(), 0);
    let (peek, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let in_sql: i64 = peek
        .query_one("SELECT count(*) FROM b.tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_sql, 0, "nor does b's reader in SQL");
    let locks: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND classid IN (7403525, 7403526, 7403529)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // (7403529, 0); a's floor 1000 and b's 0 share the high half (7403525, 0); the low halves
    // (7403526, 1000) and (7403526, 0). A store's second append takes none.
    assert_eq!(locks, 4, "the gate's locks, once per store");

    tx.commit().await.unwrap();
    let log = readable_within(&b, GlobalPosition::START, 3, Duration::from_secs(5))
        .await
        .expect("b's events readable once the transaction commits");
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        [in_b.positions[0], in_b2.positions[0], later.positions[0]],
        "nothing skipped, in append order"
    );
    let log_a = a.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(log_a.len(), 2);
    assert_eq!(log_a[0].position, in_a.positions[0]);
}

/// A role that owns a schema with a store of its own (the default `search_path`, `"$user",
/// public`, finds it first) appends through the store in `public` and reads it in SQL: the event
/// goes to `public`'s log, numbered by `public`'s sequence, and the read is `public`'s; the
/// role's store is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_owning_a_store_reaches_the_store_it_calls() {
    let Some(url) = common::fresh_postgres("callerrole").await else {
        return;
    };
    // The database's name: unique, so a role of the same name is too (roles are the cluster's).
    let role = url.rsplit('/').next().unwrap().to_owned();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role}; CREATE SCHEMA {role} AUTHORIZATION {role}"
        ))
        .await
        .unwrap();
    // The checks in a task of their own, so the role is dropped (it is the cluster's) also when
    // one fails.
    let outcome = tokio::spawn(role_calls_public(url.clone(), role.clone())).await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {role} CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn role_calls_public(url: String, role: String) {
    let public = PostgresStore::connect(&url, 2).await.unwrap();
    let own = PostgresStore::connect(&format!("{url}?options=-csearch_path%3D{role}"), 2)
        .await
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA public TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA public, {role} TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public, {role} TO {role};
             SELECT setval('{role}.tp_commit_seq', 1000)"
        ))
        .await
        .unwrap();

    let (mut caller, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    caller
        .batch_execute(&format!("SET ROLE {role}"))
        .await
        .unwrap();
    let tx = caller.transaction().await.unwrap();
    let appended = public
        .append_in(&tx, "s", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        appended.positions[0].commit < 1000,
        "numbered by public's sequence, not the role's: {appended:?}"
    );
    let log = public.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        appended.positions,
        "the event is in public's log"
    );
    assert!(
        own.read_all(GlobalPosition::START, 10)
            .await
            .unwrap()
            .is_empty(),
        "and not in the role's"
    );
    let in_sql: i64 = caller
        .query_one("SELECT count(*) FROM public.tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_sql, 1,
        "public's reader in SQL reads public's log for the role too"
    );
}

/// A store in a schema whose name needs quoting (a double quote, a dollar quote) is set up, its
/// functions pinned to that schema; functions an earlier release created without the setting
/// get it back at the next connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_name_that_needs_quoting_is_set_up_and_pinned() {
    let Some(url) = common::fresh_postgres("oddschema").await else {
        return;
    };
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(r#"CREATE SCHEMA "odd""$$name""#)
        .await
        .unwrap();
    // search_path="odd""$$name"
    let odd_url = format!("{url}?options=-csearch_path%3D%22odd%22%22%24%24name%22");
    let pinned = || async {
        admin
            .query(
                "SELECT p.proname, array_to_string(p.proconfig, ';') FROM pg_proc p \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'odd\"$$name' ORDER BY p.proname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
            .collect::<Vec<_>>()
    };
    let expected = |append_extra: &str| {
        let path = r#"search_path="odd""$$name", pg_temp"#;
        vec![
            (
                "tp_append".to_owned(),
                Some(format!("{append_extra}{path}")),
            ),
            ("tp_gate".to_owned(), Some(path.to_owned())),
            ("tp_gate_alone".to_owned(), Some(path.to_owned())),
            ("tp_read_all".to_owned(), Some(path.to_owned())),
        ]
    };

    let store = PostgresStore::connect(&odd_url, 2).await.unwrap();
    assert_eq!(
        pinned().await,
        expected("plan_cache_mode=force_custom_plan;")
    );
    let appended = store
        .append("s", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    let log = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        appended.positions
    );

    // As an earlier release left them: no search_path of their own.
    admin
        .batch_execute(
            r#"ALTER FUNCTION "odd""$$name".tp_append RESET search_path;
               ALTER FUNCTION "odd""$$name".tp_gate RESET search_path;
               ALTER FUNCTION "odd""$$name".tp_gate_alone RESET search_path;
               ALTER FUNCTION "odd""$$name".tp_read_all RESET search_path"#,
        )
        .await
        .unwrap();
    assert_ne!(
        pinned().await,
        expected("plan_cache_mode=force_custom_plan;")
    );
    drop(store);
    PostgresStore::connect(&odd_url, 2).await.unwrap();
    assert_eq!(
        pinned().await,
        expected("plan_cache_mode=force_custom_plan;"),
        "connecting pins them again"
    );
}

/// A temporary table named `tp_events` in the session that appends (temporary tables are found
/// first unless the `search_path` places them) captures neither the append nor a read in SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_tp_events_captures_no_append() {
    let Some(url) = common::fresh_postgres("temptable").await else {
        return;
    };
    let store = PostgresStore::connect(&url, 2).await.unwrap();
    let (mut caller, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    caller
        .batch_execute("CREATE TEMP TABLE tp_events (LIKE public.tp_events INCLUDING ALL)")
        .await
        .unwrap();
    let tx = caller.transaction().await.unwrap();
    let appended = store
        .append_in(&tx, "s", ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let temp: i64 = caller
        .query_one("SELECT count(*) FROM pg_temp.tp_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp, 0, "the temporary table took no event");
    let log = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        appended.positions,
        "the event is in the store's log"
    );
    let in_sql: i64 = caller
        .query_one("SELECT count(*) FROM tp_read_all(0, 0, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_sql, 1,
        "the reader in SQL reads the store's log, not the temporary table"
    );
}

/// A connection of the store's own pool given a temporary `tp_events` (with an event of its
/// own) still reads and writes the store: its statements name the store's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_tp_events_on_the_stores_connection_captures_no_read() {
    let Some(url) = common::fresh_postgres("temppool").await else {
        return;
    };
    // One connection, so every statement below runs on the one with the temporary table.
    let store = PostgresStore::connect(&url, 1).await.unwrap();
    store
        .pool()
        .get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TEMP TABLE tp_events (LIKE public.tp_events INCLUDING ALL);
             INSERT INTO tp_events (commit_no, stream_id, version, event_id, event_type,
                                    schema_version, payload, metadata, recorded_at)
             VALUES (1, 's', 1, gen_random_uuid(), 'Bogus', 1, '{}', '{}', 0)",
        )
        .await
        .unwrap();
    let appended = store
        .append("s", ExpectedVersion::NoStream, vec![ev(1)])
        .await
        .unwrap();
    let pos = appended.positions[0];

    let log = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|e| (e.position, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [(pos, "E")],
        "read_all reads the store's log"
    );
    let head = store.head().await.unwrap().unwrap();
    assert_eq!((head.position, head.event_type.as_str()), (pos, "E"));
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        1
    );
    let stream = store
        .read_stream("s", 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(
        stream
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["E"],
        "read_stream too"
    );
    let temp: i64 = store
        .pool()
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM pg_temp.tp_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp, 1, "the temporary table took no event");
}
