//! A rebuilt projection equals the incrementally built one: a property test over random
//! sequences of the product catalog's and the photo feed's events, with duplicate appends (the
//! store drops a repeated event id), runner restarts in the middle of the log (the
//! same-transaction mode applies nothing twice) and, for an external effect with the inbox, a
//! crash between applying a batch and storing its checkpoint (the events are delivered again
//! and the inbox drops them). The read models are the examples' own (`examples/catalog`,
//! `examples/feed`), compared as table dumps ordered by key.

// The models are written against the facade (`tower_patterns::cqrs`, `::eventstore`): this
// crate stands in for it. Their PostgreSQL half is behind the facade's feature, unknown here.
#![allow(unexpected_cfgs)]

extern crate self as tower_patterns;

/// The facade's `cqrs` module, for the models.
pub mod cqrs {
    pub use tower_patterns_cqrs::*;
}
/// The facade's `eventstore` module, for the models.
pub mod eventstore {
    pub use tower_patterns_eventstore::*;
}

#[path = "../../../examples/catalog/model.rs"]
mod catalog;
#[path = "../../../examples/feed/model.rs"]
mod feed;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use rusqlite::{Connection, Transaction, types::ValueRef};
use tokio::sync::Notify;
use tower_patterns_core::BoxError;
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, ExternalProjection, MemoryCheckpoints, Projection,
    ProjectionHandle, SqliteProjection, Status, Tables, inbox::Inbox,
};
use tower_patterns_eventstore::{
    DomainEvent, EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore,
    RecordedEvent,
};

use catalog::ProductEvent;
use feed::FeedEvent;

const WAIT: Duration = Duration::from_secs(30);

/// Events delivered twice to the external effect, over all cases (some must be).
static REDELIVERED: AtomicUsize = AtomicUsize::new(0);

/// Both read models in one projection (their tables have different names).
struct Both;

impl SqliteProjection for Both {
    fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        catalog::Catalog.create(tx, t)?;
        feed::Feed.create(tx, t)
    }

    fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
        catalog::Catalog.apply(tx, t, e)?;
        feed::Feed.apply(tx, t, e)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8, i64),
    Price(u8, i64),
    Rename(u8, u8),
    Delete(u8),
    Follow(u8, u8),
    Unfollow(u8, u8),
    Post(u8, u8, i64),
    Like(u8, u8),
    /// Append an earlier event again, with its id.
    Duplicate(usize),
    /// Stop the same-transaction runner and start another from its checkpoint.
    Restart,
}

const WORDS: [&str; 4] = ["kettle", "teapot", "mug", "toaster"];

fn op() -> impl Strategy<Value = Op> {
    let id = 0..4u8;
    prop_oneof![
        (id.clone(), 0..4u8, 0..5_000i64).prop_map(|(p, w, c)| Op::Create(p, w, c)),
        (id.clone(), 0..5_000i64).prop_map(|(p, c)| Op::Price(p, c)),
        (id.clone(), 0..4u8).prop_map(|(p, w)| Op::Rename(p, w)),
        id.clone().prop_map(Op::Delete),
        (id.clone(), id.clone()).prop_map(|(a, b)| Op::Follow(a, b)),
        (id.clone(), id.clone()).prop_map(|(a, b)| Op::Unfollow(a, b)),
        (0..8u8, id.clone(), 0..6i64).prop_map(|(p, a, at)| Op::Post(p, a, at)),
        (0..8u8, id).prop_map(|(p, u)| Op::Like(p, u)),
        any::<usize>().prop_map(Op::Duplicate),
        Just(Op::Restart),
    ]
}

fn product(p: u8, e: &ProductEvent) -> (String, EventData) {
    (
        format!("product-{p}"),
        EventData::json(e.event_type(), e).unwrap(),
    )
}

fn social(stream: String, e: &FeedEvent) -> (String, EventData) {
    (stream, EventData::json(e.event_type(), e).unwrap())
}

/// The event an op appends (none for `Duplicate` and `Restart`).
fn event(op: &Op) -> Option<(String, EventData)> {
    let s = |n: u8| format!("u{n}");
    Some(match op.clone() {
        Op::Create(p, w, price_cents) => product(
            p,
            &ProductEvent::ProductCreated {
                id: s(p),
                name: format!("{} {p}", WORDS[w as usize]),
                description: "steel".into(),
                price_cents,
            },
        ),
        Op::Price(p, price_cents) => product(
            p,
            &ProductEvent::PriceUpdated {
                id: s(p),
                price_cents,
            },
        ),
        Op::Rename(p, w) => product(
            p,
            &ProductEvent::Renamed {
                id: s(p),
                name: WORDS[w as usize].into(),
                description: "glass".into(),
            },
        ),
        Op::Delete(p) => product(p, &ProductEvent::Deleted { id: s(p) }),
        Op::Follow(f, a) => social(
            format!("member-{f}"),
            &FeedEvent::Followed {
                follower: s(f),
                author: s(a),
            },
        ),
        Op::Unfollow(f, a) => social(
            format!("member-{f}"),
            &FeedEvent::Unfollowed {
                follower: s(f),
                author: s(a),
            },
        ),
        Op::Post(p, a, at) => social(
            format!("post-{p}"),
            &FeedEvent::PostCreated {
                post: format!("p{p}"),
                author: s(a),
                at,
            },
        ),
        Op::Like(p, u) => social(
            format!("post-{p}"),
            &FeedEvent::Liked {
                post: format!("p{p}"),
                user: s(u),
            },
        ),
        Op::Duplicate(_) | Op::Restart => return None,
    })
}

/// Each logical table's rows, every column as text, ordered by all columns (keys first).
type Dump = BTreeMap<&'static str, Vec<Vec<String>>>;

fn dump(conn: &Connection, t: &Tables) -> Dump {
    let queries: [(&str, String); 6] = [
        (
            "products",
            format!(
                "SELECT id, name, description, price_cents, version FROM {} ORDER BY id",
                t.name("products")
            ),
        ),
        (
            "products_fts",
            format!(
                "SELECT p.id, f.name, f.description FROM {} f JOIN {} p ON p.seq = f.rowid ORDER BY p.id",
                t.name("products_fts"),
                t.name("products")
            ),
        ),
        (
            "follows",
            format!("SELECT * FROM {} ORDER BY 1, 2", t.name("follows")),
        ),
        (
            "feed",
            format!("SELECT * FROM {} ORDER BY 1, 2, 3", t.name("feed")),
        ),
        (
            "likes",
            format!("SELECT * FROM {} ORDER BY 1", t.name("likes")),
        ),
        (
            "liked",
            format!("SELECT * FROM {} ORDER BY 1, 2", t.name("liked")),
        ),
    ];
    let mut out = Dump::new();
    for (name, sql) in queries {
        let mut stmt = conn.prepare(&sql).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => "null".to_owned(),
                            ValueRef::Integer(v) => v.to_string(),
                            ValueRef::Real(v) => v.to_string(),
                            ValueRef::Text(v) | ValueRef::Blob(v) => {
                                String::from_utf8_lossy(v).into_owned()
                            }
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        out.insert(name, rows);
    }
    // The search index answers as the rows say.
    for word in WORDS {
        let q = catalog::Search {
            text: word.into(),
            limit: Some(100),
            ..Default::default()
        };
        let ids = catalog::search_sqlite(conn, t, &q)
            .unwrap()
            .into_iter()
            .map(|r| vec![r.id])
            .collect();
        out.insert(word, ids);
    }
    out
}

fn start(
    store: &Arc<InMemoryStore>,
    path: &std::path::Path,
    batch: usize,
) -> (
    ProjectionHandle,
    tokio::task::JoinHandle<Result<(), tower_patterns_cqrs::ProjectionError>>,
) {
    Projection::builder("both")
        .source(store.clone())
        .sqlite(path, Both)
        .batch(batch)
        .build()
        .unwrap()
        .spawn()
}

/// Waits until `handle` has applied `head` and is live (its tables exist even for an empty log).
async fn caught_up(handle: &ProjectionHandle, head: GlobalPosition) -> bool {
    handle.wait_for(head, WAIT).await
        && handle.wait_for_status(WAIT, |s| *s == Status::Live).await == Status::Live
}

async fn head(store: &InMemoryStore) -> GlobalPosition {
    store
        .head()
        .await
        .unwrap()
        .map_or(GlobalPosition::START, |e| e.position)
}

/// Checkpoints that "crash" at one save: the save never finishes (the runner is then aborted,
/// as a process killed between applying a batch and storing its checkpoint would be).
#[derive(Clone)]
struct CrashingCheckpoints {
    inner: MemoryCheckpoints,
    crash_at: Arc<AtomicU32>,
    crashed: Arc<Notify>,
}

impl CheckpointStore for CrashingCheckpoints {
    fn load(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, BoxError>> + Send {
        self.inner.load(name)
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        if self.crash_at.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.save(name, expected, new).await
    }

    fn dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send {
        self.inner
            .dead_letter(name, event, error, attempts, expected, new)
    }
}

/// Both models in a database of their own, each event once through the inbox; counts every
/// delivery.
#[derive(Clone)]
struct Effect {
    conn: Arc<Mutex<Connection>>,
    inbox: Inbox,
    tables: Tables,
    deliveries: Arc<AtomicUsize>,
}

impl ExternalProjection for Effect {
    async fn apply(&self, e: &RecordedEvent) -> Result<(), ApplyError> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        if self.inbox.first_sqlite(&tx, e.id)? {
            Both.apply(&tx, &self.tables, e)?;
            tx.execute(
                "INSERT INTO applied (id, n) VALUES (?1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1",
                [e.id.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

async fn check(ops: Vec<Op>, batch: usize, crash_at: u32) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let path = dir.path().join("model.db");
    let (mut handle, mut task) = start(&store, &path, batch);
    let mut appended: Vec<(String, EventData)> = Vec::new();
    for op in &ops {
        match op {
            Op::Duplicate(k) if !appended.is_empty() => {
                let (stream, data) = appended[k % appended.len()].clone();
                let r = store
                    .append(&stream, ExpectedVersion::Any, vec![data])
                    .await
                    .unwrap();
                prop_assert!(r.duplicate, "a repeated id is stored once");
            }
            Op::Duplicate(_) => {}
            Op::Restart => {
                stop(&handle, task).await?;
                (handle, task) = start(&store, &path, batch);
            }
            op => {
                let (stream, data) = event(op).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![data.clone()])
                    .await
                    .unwrap();
                appended.push((stream, data));
            }
        }
    }
    let head = head(&store).await;
    prop_assert!(caught_up(&handle, head).await, "{:?}", handle.status());
    let incremental = dump(
        &tower_patterns_cqrs::projection::sqlite_reader(&path).unwrap(),
        &handle.tables(),
    );

    // A fresh build from position 0.
    let fresh_path = dir.path().join("fresh.db");
    let (fresh, fresh_task) = start(&store, &fresh_path, 1_000);
    prop_assert!(caught_up(&fresh, head).await);
    let fresh_dump = dump(
        &tower_patterns_cqrs::projection::sqlite_reader(&fresh_path).unwrap(),
        &fresh.tables(),
    );
    prop_assert_eq!(&incremental, &fresh_dump);

    // A rebuild into the next version of the tables, swapped in.
    handle.rebuild();
    let mut swapped = false;
    for _ in 0..6_000 {
        if handle.tables().version() == 2 {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    prop_assert!(swapped, "the rebuild swapped: {:?}", handle.status());
    prop_assert!(handle.wait_for(head, WAIT).await);
    let rebuilt = dump(
        &tower_patterns_cqrs::projection::sqlite_reader(&path).unwrap(),
        &handle.tables(),
    );
    prop_assert_eq!(&incremental, &rebuilt);

    // An external effect with the inbox, crashed between a batch's effects and its
    // checkpoint, then restarted: every event takes effect once.
    let conn = Connection::open_in_memory().unwrap();
    let tables = Tables::new("ext", 1);
    {
        let mut conn = conn;
        Inbox::create_sqlite(&conn).unwrap();
        conn.execute_batch("CREATE TABLE applied (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            .unwrap();
        let tx = conn.transaction().unwrap();
        Both.create(&tx, &tables).unwrap();
        tx.commit().unwrap();
        let effect = Effect {
            conn: Arc::new(Mutex::new(conn)),
            inbox: Inbox::new("ext"),
            tables: tables.clone(),
            deliveries: Arc::default(),
        };
        let checkpoints = CrashingCheckpoints {
            inner: MemoryCheckpoints::new(),
            crash_at: Arc::new(AtomicU32::new(crash_at)),
            crashed: Arc::new(Notify::new()),
        };
        let run = |c: CrashingCheckpoints| {
            Projection::builder("ext")
                .source(store.clone())
                .external(c, effect.clone())
                .batch(batch)
                .build()
                .unwrap()
                .spawn()
        };
        let (ext, ext_task) = run(checkpoints.clone());
        let reached = tokio::select! {
            () = checkpoints.crashed.notified() => false,
            reached = ext.wait_for(head, WAIT) => reached,
        };
        // Killed: at its crash (a save that never finishes), or once caught up.
        ext_task.abort();
        let _ = ext_task.await;
        let crashed = checkpoints.crash_at.load(Ordering::SeqCst) == 0;
        let crashed_behind = !reached && ext.position() < head;
        let mut redelivered = 0;
        if crashed_behind {
            let delivered = effect.deliveries.load(Ordering::SeqCst);
            let stored = checkpoints.inner.load("ext").await.unwrap();
            let checkpointed = stored.map_or(0, |c| c.position.index);
            let (ext, task) = run(checkpoints.clone());
            prop_assert!(ext.wait_for(head, WAIT).await);
            task.abort();
            let _ = task.await;
            // The restart delivers everything after the stored checkpoint again.
            let total = usize::try_from(head.index - checkpointed).unwrap() + delivered;
            prop_assert_eq!(effect.deliveries.load(Ordering::SeqCst), total);
            redelivered = delivered - usize::try_from(checkpointed).unwrap();
            REDELIVERED.fetch_add(redelivered, Ordering::SeqCst);
        } else {
            prop_assert!(reached || crashed, "{:?}", ext.status());
        }

        let events = store
            .read_all(GlobalPosition::START, 100_000)
            .await
            .unwrap()
            .len();
        prop_assert_eq!(
            effect.deliveries.load(Ordering::SeqCst),
            events + redelivered
        );
        let conn = effect.conn.lock().unwrap();
        let inbox: usize = conn
            .query_row("SELECT count(*) FROM tp_inbox", [], |r| r.get(0))
            .unwrap();
        prop_assert_eq!(inbox, events);
        let (applied, most): (usize, Option<i64>) = conn
            .query_row("SELECT count(*), max(n) FROM applied", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        prop_assert_eq!(
            (applied, most.unwrap_or(1)),
            (events, 1),
            "each event took effect once"
        );
        prop_assert_eq!(&incremental, &dump(&conn, &tables));
    }

    stop(&handle, task).await?;
    stop(&fresh, fresh_task).await
}

type Task = tokio::task::JoinHandle<Result<(), tower_patterns_cqrs::ProjectionError>>;

/// Shuts a runner down and waits (bounded) for it to return `Ok`.
async fn stop(handle: &ProjectionHandle, task: Task) -> Result<(), TestCaseError> {
    handle.shutdown();
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "the runner did not stop: {other:?}, {:?}",
            handle.status()
        ))),
    }
}

#[test]
fn a_rebuilt_projection_equals_the_incremental_one() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (prop::collection::vec(op(), 0..60), 1..8usize, 1..5u32);
    runner
        .run(&strategy, |(ops, batch, crash_at)| {
            rt.block_on(check(ops, batch, crash_at))
        })
        .unwrap();
    assert!(
        REDELIVERED.load(Ordering::SeqCst) > 0,
        "some crash fell between effects and their checkpoint"
    );
}
