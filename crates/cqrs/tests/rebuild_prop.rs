//! A rebuilt projection equals the incrementally built one, and both equal what the events
//! say: a property test over random sequences of the product catalog's and the photo feed's
//! events. The read models are the examples' own (`examples/catalog`, `examples/feed`),
//! compared as table dumps ordered by key, with a reference model computed in plain Rust from
//! the log as the oracle.
//!
//! The sequences mix in:
//! - duplicate appends (the same event id: the store keeps one) and duplicate contents under
//!   new ids (a like repeated by the same user, a follow repeated, a product created twice,
//!   the same price set twice): the read models must be idempotent by content;
//! - runner restarts between transactions, and crashes inside a batch (the model panics after
//!   applying an event, the batch's transaction rolls back, a new runner starts from the
//!   checkpoint and the events before it in the batch are delivered again);
//! - transient failures under a retry policy (the model fails after applying an event: its
//!   savepoint rolls back and the event is applied again alone);
//! - rebuilds asked for while appends go on (the appends land while the rebuild runs, then it
//!   swaps), then a fresh build from position 0 and a last rebuild once the log is still.
//!
//! An external effect with the inbox, crashed between applying a batch and storing its
//! checkpoint, takes each event once.

#![cfg(feature = "sqlite")]
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
    collections::{BTreeMap, BTreeSet, HashMap, btree_map::Entry},
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use rusqlite::{Connection, Transaction, types::ValueRef};
use tokio::{sync::Notify, task::JoinError};
use tower_patterns_core::{BoxError, backoff::Backoff};
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, ExternalProjection, FailurePolicy, MemoryCheckpoints,
    Projection, ProjectionError, ProjectionHandle, SqliteProjection, Status, Tables, inbox::Inbox,
};
use tower_patterns_eventstore::{
    DomainEvent, EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore,
    RecordedEvent,
};
use uuid::Uuid;

use catalog::ProductEvent;
use feed::FeedEvent;

const WAIT: Duration = Duration::from_secs(30);

/// What the generated sequences exercised, over all cases: each must have happened.
#[derive(Debug)]
struct Seen {
    /// Events delivered twice to the external effect (a crash before its checkpoint).
    external_redelivered: AtomicUsize,
    /// Likes of a post by a user who had liked it already (a new event id).
    repeated_likes: AtomicUsize,
    /// Follows of an author already followed.
    repeated_follows: AtomicUsize,
    /// Products created again while listed.
    repeated_creates: AtomicUsize,
    /// Prices set to the price a product already had.
    repeated_prices: AtomicUsize,
    /// Runners crashed inside a batch, and started again.
    crashes: AtomicUsize,
    /// Events delivered again to the same copy of the tables after a crash rolled back the
    /// batch they were in (the event that crashed not counted).
    batch_redelivered: AtomicUsize,
    /// Events that failed once (transiently, after their effects) and were applied again.
    retried: AtomicUsize,
    /// Appends made while a rebuild was under way.
    appends_during_rebuild: AtomicUsize,
    /// Rebuilds asked for among the appends that swapped in.
    swaps: AtomicUsize,
}

static SEEN: Seen = Seen {
    external_redelivered: AtomicUsize::new(0),
    repeated_likes: AtomicUsize::new(0),
    repeated_follows: AtomicUsize::new(0),
    repeated_creates: AtomicUsize::new(0),
    repeated_prices: AtomicUsize::new(0),
    crashes: AtomicUsize::new(0),
    batch_redelivered: AtomicUsize::new(0),
    retried: AtomicUsize::new(0),
    appends_during_rebuild: AtomicUsize::new(0),
    swaps: AtomicUsize::new(0),
};

fn count(counter: &AtomicUsize, n: usize) {
    counter.fetch_add(n, Ordering::SeqCst);
}

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

/// A failure to inject, once, into the event appended next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The model applies the event, then fails with a transient error: the event's savepoint
    /// rolls back, the retry policy applies it again.
    Transient,
    /// The model applies the event, then the runner crashes (a panic): the batch's
    /// transaction rolls back and a new runner delivers its events again.
    Crash,
}

/// The payload of an injected crash (the panic hook keeps it quiet).
#[derive(Debug)]
struct InjectedCrash;

/// Faults to inject by event id, and every delivery seen.
#[derive(Debug, Default)]
struct Faults {
    pending: Mutex<HashMap<Uuid, Fault>>,
    fired: Mutex<HashMap<Uuid, Fault>>,
    /// The runners (numbered from 0, one more per start) that delivered each event to each
    /// copy of the tables (by version), rolled-back deliveries included.
    delivered: Mutex<HashMap<(u32, Uuid), Vec<u32>>>,
    /// The runners that crashed applying the live copy, with its version.
    live_crashes: Mutex<BTreeSet<(u32, u32)>>,
}

/// Both models for the runner numbered `runner`, failing once on the events that carry a
/// fault.
struct Flaky {
    faults: Arc<Faults>,
    runner: u32,
    /// Its handle (which names the live copy).
    handle: Arc<OnceLock<ProjectionHandle>>,
}

impl SqliteProjection for Flaky {
    fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        Both.create(tx, t)
    }

    fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
        Both.apply(tx, t, e)?;
        let faults = &self.faults;
        faults
            .delivered
            .lock()
            .unwrap()
            .entry((t.version(), e.id))
            .or_default()
            .push(self.runner);
        let fault = faults.pending.lock().unwrap().remove(&e.id);
        if let Some(fault) = fault {
            faults.fired.lock().unwrap().insert(e.id, fault);
            match fault {
                Fault::Transient => return Err(ApplyError::transient("injected: busy")),
                Fault::Crash => {
                    if self.handle.get().map(|h| h.tables()) == Some(t.clone()) {
                        faults
                            .live_crashes
                            .lock()
                            .unwrap()
                            .insert((self.runner, t.version()));
                    }
                    std::panic::panic_any(InjectedCrash)
                }
            }
        }
        Ok(())
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
    /// Append an earlier event's content again, under a new id.
    Again(usize),
    /// Stop the same-transaction runner and start another from its checkpoint.
    Restart,
    /// Ask for a rebuild; the appends after it go on while it runs.
    Rebuild,
    /// The next event appended fails once, with this fault.
    Fault(Fault),
}

const WORDS: [&str; 4] = ["kettle", "teapot", "mug", "toaster"];

fn op() -> impl Strategy<Value = Op> {
    let id = 0..4u8;
    prop_oneof![
        3 => (id.clone(), 0..4u8, 0..8i64).prop_map(|(p, w, c)| Op::Create(p, w, c * 250)),
        // Few prices: a price is often set again, and search results tie on price.
        3 => (id.clone(), 0..8i64).prop_map(|(p, c)| Op::Price(p, c * 250)),
        2 => (id.clone(), 0..4u8).prop_map(|(p, w)| Op::Rename(p, w)),
        1 => id.clone().prop_map(Op::Delete),
        3 => (id.clone(), id.clone()).prop_map(|(a, b)| Op::Follow(a, b)),
        2 => (id.clone(), id.clone()).prop_map(|(a, b)| Op::Unfollow(a, b)),
        3 => (0..8u8, id.clone(), 0..6i64).prop_map(|(p, a, at)| Op::Post(p, a, at)),
        3 => (0..8u8, id).prop_map(|(p, u)| Op::Like(p, u)),
        1 => any::<usize>().prop_map(Op::Duplicate),
        4 => any::<usize>().prop_map(Op::Again),
        1 => Just(Op::Restart),
        2 => Just(Op::Rebuild),
        1 => Just(Op::Fault(Fault::Transient)),
        2 => Just(Op::Fault(Fault::Crash)),
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

/// The event an op appends, under a new id (none for the ops that append no new event).
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
        Op::Duplicate(_) | Op::Again(_) | Op::Restart | Op::Rebuild | Op::Fault(_) => {
            return None;
        }
    })
}

/// Each logical table's rows, every column as text, ordered by all columns (keys first), and
/// the ids the search index finds for each word.
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

/// A product row of the reference model.
#[derive(Clone, Debug)]
struct Listed {
    name: String,
    description: String,
    price_cents: i64,
    version: u64,
}

/// What the read models must hold after `events`, computed in plain Rust from what each event
/// means: a product is listed once (a second creation changes nothing), a change applies only
/// over an older stream version, follows and likes are sets (a repeated like counts once), a
/// post reaches the feeds of its author's followers at the time, an unfollow takes the
/// author's posts out of the follower's feed. Counts the repeats it met in `SEEN`.
fn reference(events: &[RecordedEvent]) -> Dump {
    let mut products: BTreeMap<String, Listed> = BTreeMap::new();
    let mut follows: BTreeSet<(String, String)> = BTreeSet::new();
    let mut feed: BTreeMap<(String, i64, String), String> = BTreeMap::new();
    let mut liked: BTreeSet<(String, String)> = BTreeSet::new();
    let mut likes: BTreeMap<String, i64> = BTreeMap::new();
    for e in events {
        if e.stream_id.starts_with(catalog::PRODUCT_PREFIX) {
            match e.decode_event::<ProductEvent>().unwrap() {
                ProductEvent::ProductCreated {
                    id,
                    name,
                    description,
                    price_cents,
                } => match products.entry(id) {
                    Entry::Occupied(_) => count(&SEEN.repeated_creates, 1),
                    Entry::Vacant(v) => {
                        v.insert(Listed {
                            name,
                            description,
                            price_cents,
                            version: e.version,
                        });
                    }
                },
                ProductEvent::PriceUpdated { id, price_cents } => {
                    if let Some(p) = products.get_mut(&id).filter(|p| p.version < e.version) {
                        if p.price_cents == price_cents {
                            count(&SEEN.repeated_prices, 1);
                        }
                        p.price_cents = price_cents;
                        p.version = e.version;
                    }
                }
                ProductEvent::Renamed {
                    id,
                    name,
                    description,
                } => {
                    if let Some(p) = products.get_mut(&id).filter(|p| p.version < e.version) {
                        p.name = name;
                        p.description = description;
                        p.version = e.version;
                    }
                }
                ProductEvent::Deleted { id } => {
                    products.remove(&id);
                }
            }
        } else {
            match e.decode_event::<FeedEvent>().unwrap() {
                FeedEvent::PostCreated { post, author, at } => {
                    for (_, follower) in follows.iter().filter(|(a, _)| *a == author) {
                        feed.entry((follower.clone(), at, post.clone()))
                            .or_insert_with(|| author.clone());
                    }
                }
                FeedEvent::Followed { follower, author } => {
                    if !follows.insert((author, follower)) {
                        count(&SEEN.repeated_follows, 1);
                    }
                }
                FeedEvent::Unfollowed { follower, author } => {
                    follows.remove(&(author.clone(), follower.clone()));
                    feed.retain(|(user, _, _), a| !(*user == follower && *a == author));
                }
                FeedEvent::Liked { post, user } => {
                    if liked.insert((post.clone(), user)) {
                        *likes.entry(post).or_default() += 1;
                    } else {
                        count(&SEEN.repeated_likes, 1);
                    }
                }
            }
        }
    }
    let mut out = Dump::new();
    out.insert(
        "products",
        products
            .iter()
            .map(|(id, p)| {
                vec![
                    id.clone(),
                    p.name.clone(),
                    p.description.clone(),
                    p.price_cents.to_string(),
                    p.version.to_string(),
                ]
            })
            .collect(),
    );
    out.insert(
        "products_fts",
        products
            .iter()
            .map(|(id, p)| vec![id.clone(), p.name.clone(), p.description.clone()])
            .collect(),
    );
    out.insert(
        "follows",
        follows
            .iter()
            .map(|(a, f)| vec![a.clone(), f.clone()])
            .collect(),
    );
    out.insert(
        "feed",
        feed.iter()
            .map(|((user, at, post), author)| {
                vec![user.clone(), at.to_string(), post.clone(), author.clone()]
            })
            .collect(),
    );
    out.insert(
        "likes",
        likes
            .iter()
            .map(|(p, n)| vec![p.clone(), n.to_string()])
            .collect(),
    );
    out.insert(
        "liked",
        liked
            .iter()
            .map(|(p, u)| vec![p.clone(), u.clone()])
            .collect(),
    );
    // The names are "<word> <n>" or "<word>": a word finds the products named after it,
    // cheapest first.
    for word in WORDS {
        let mut found: Vec<(i64, &String)> = products
            .iter()
            .filter(|(_, p)| p.name.split(' ').next() == Some(word))
            .map(|(id, p)| (p.price_cents, id))
            .collect();
        found.sort();
        out.insert(
            word,
            found.into_iter().map(|(_, id)| vec![id.clone()]).collect(),
        );
    }
    out
}

type Task = tokio::task::JoinHandle<Result<(), ProjectionError>>;

/// Waits until `handle` has applied `head` and is live (its tables exist even for an empty
/// log, and no rebuild is under way); false at once when it stopped.
async fn caught_up(handle: &ProjectionHandle, head: GlobalPosition) -> bool {
    let live = async {
        handle.wait_for(head, WAIT).await
            && handle.wait_for_status(WAIT, |s| *s == Status::Live).await == Status::Live
    };
    let stopped = handle.wait_for_status(WAIT, |s| matches!(s, Status::Stopped { .. }));
    tokio::select! {
        live = live => live,
        _ = stopped => false,
    }
}

async fn head(store: &InMemoryStore) -> GlobalPosition {
    store
        .head()
        .await
        .unwrap()
        .map_or(GlobalPosition::START, |e| e.position)
}

/// A runner that ended by itself must have met an injected crash.
fn crashed(joined: Result<Result<(), ProjectionError>, JoinError>) -> Result<(), TestCaseError> {
    match joined {
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            if payload.is::<InjectedCrash>() {
                count(&SEEN.crashes, 1);
                Ok(())
            } else {
                std::panic::resume_unwind(payload)
            }
        }
        other => Err(TestCaseError::fail(format!("the runner ended: {other:?}"))),
    }
}

/// The same-transaction projection under test, started again after each crash.
struct Incremental {
    store: Arc<InMemoryStore>,
    path: PathBuf,
    batch: usize,
    faults: Arc<Faults>,
    /// The runner's number: one more per start.
    runner: u32,
    handle: ProjectionHandle,
    task: Task,
    /// The live version when a rebuild was last asked for (and seen to start); each new
    /// runner is asked again, as it discards the rebuild its predecessor left.
    rebuild_from: Option<u32>,
}

fn sqlite(
    store: &Arc<InMemoryStore>,
    path: &Path,
    batch: usize,
    projection: impl SqliteProjection,
) -> Projection {
    Projection::builder("both")
        .source(store.clone())
        .sqlite(path, projection)
        .batch(batch)
        // An injected failure passes on the next attempt.
        .policy(FailurePolicy::retry(3).backoff(
            Backoff::Constant(Duration::from_millis(1)),
            Duration::from_millis(1),
        ))
        .build()
        .unwrap()
}

impl Incremental {
    fn start(store: Arc<InMemoryStore>, path: PathBuf, batch: usize) -> Self {
        let faults = Arc::new(Faults::default());
        let (handle, task) = Self::spawn(&store, &path, batch, &faults, 0);
        Self {
            store,
            path,
            batch,
            faults,
            runner: 0,
            handle,
            task,
            rebuild_from: None,
        }
    }

    fn spawn(
        store: &Arc<InMemoryStore>,
        path: &Path,
        batch: usize,
        faults: &Arc<Faults>,
        runner: u32,
    ) -> (ProjectionHandle, Task) {
        let handle = Arc::new(OnceLock::new());
        let flaky = Flaky {
            faults: faults.clone(),
            runner,
            handle: handle.clone(),
        };
        let projection = sqlite(store, path, batch, flaky);
        handle.set(projection.handle()).unwrap();
        projection.spawn()
    }

    /// Starts a new runner on the same file. It discards a rebuild the last one left
    /// unfinished: asks for it again.
    fn respawn(&mut self) {
        self.runner += 1;
        (self.handle, self.task) = Self::spawn(
            &self.store,
            &self.path,
            self.batch,
            &self.faults,
            self.runner,
        );
        if self.rebuild_from.is_some() {
            self.handle.rebuild();
        }
    }

    /// Runs `wait` on the runner's handle; when the runner crashes first, starts another and
    /// runs `wait` on it.
    async fn on_runner<T, F: Future<Output = T>>(
        &mut self,
        wait: impl Fn(ProjectionHandle) -> F,
    ) -> Result<T, TestCaseError> {
        loop {
            tokio::select! {
                out = wait(self.handle.clone()) => return Ok(out),
                joined = &mut self.task => {
                    crashed(joined)?;
                    self.respawn();
                }
            }
        }
    }

    /// Appends one event; counts it when a rebuild is under way.
    async fn append(&mut self, stream: &str, data: EventData) -> bool {
        let r = self
            .store
            .append(stream, ExpectedVersion::Any, vec![data])
            .await
            .unwrap();
        if matches!(self.handle.status(), Status::Rebuilding { .. }) {
            count(&SEEN.appends_during_rebuild, 1);
        }
        r.duplicate
    }

    /// Shuts the runner down between transactions (or finds it crashed) and starts another.
    async fn restart(&mut self) -> Result<(), TestCaseError> {
        self.handle.shutdown();
        match tokio::time::timeout(WAIT, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(joined) => crashed(joined)?,
            Err(_) => {
                return Err(TestCaseError::fail(format!(
                    "the runner did not stop: {:?}",
                    self.handle.status()
                )));
            }
        }
        self.respawn();
        Ok(())
    }

    /// Asks for a rebuild and waits until it has started (or swapped, on a short log).
    async fn rebuild(&mut self) -> Result<(), TestCaseError> {
        // Once the runner has opened the file, its tables are the live version.
        self.on_runner(
            |h| async move { h.wait_for_status(WAIT, |s| *s != Status::Starting).await },
        )
        .await?;
        let from = self.handle.tables().version();
        self.rebuild_from = Some(from);
        self.handle.rebuild();
        let status = self
            .on_runner(|h| async move {
                h.wait_for_status(WAIT, |s| {
                    matches!(s, Status::Rebuilding { .. }) || h.tables().version() > from
                })
                .await
            })
            .await?;
        prop_assert!(
            matches!(status, Status::Rebuilding { .. }) || self.handle.tables().version() > from,
            "the rebuild did not start: {status:?}"
        );
        Ok(())
    }

    /// Waits until the runner has applied `head` and is live, starting it again after each
    /// crash; then the last rebuild asked for has swapped in.
    async fn settle(&mut self, head: GlobalPosition) -> Result<(), TestCaseError> {
        let live = self
            .on_runner(|h| async move { caught_up(&h, head).await })
            .await?;
        prop_assert!(live, "{:?}", self.handle.status());
        if let Some(from) = self.rebuild_from {
            let version = self.handle.tables().version();
            prop_assert!(
                version > from,
                "the rebuild from v{from} swapped: v{version}"
            );
            count(&SEEN.swaps, 1);
        }
        Ok(())
    }

    /// Counts the deliveries the faults caused; every fault must have fired.
    fn tally(&self) -> Result<(), TestCaseError> {
        let pending = self.faults.pending.lock().unwrap().len();
        prop_assert_eq!(pending, 0, "every injected fault fired");
        let fired = self.faults.fired.lock().unwrap();
        let live_crashes = self.faults.live_crashes.lock().unwrap();
        for (&(version, id), runners) in self.faults.delivered.lock().unwrap().iter() {
            for pair in runners.windows(2) {
                if pair[0] == pair[1] && fired.get(&id) == Some(&Fault::Transient) {
                    // Applied, failed, rolled back to its savepoint, applied again.
                    count(&SEEN.retried, 1);
                } else if pair[0] + 1 == pair[1]
                    && live_crashes.contains(&(pair[0], version))
                    && !fired.contains_key(&id)
                {
                    // In the live copy's batch that a crash rolled back, delivered again by
                    // the next runner.
                    count(&SEEN.batch_redelivered, 1);
                }
            }
        }
        Ok(())
    }
}

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
    let mut inc = Incremental::start(store.clone(), dir.path().join("model.db"), batch);
    // Every event appended (its stream, data and op), and the fault for the next one.
    let mut appended: Vec<(String, EventData, Op)> = Vec::new();
    let mut fault = None;
    for op in &ops {
        let new = match op {
            Op::Duplicate(k) if !appended.is_empty() => {
                let (stream, data, _) = appended[k % appended.len()].clone();
                prop_assert!(
                    inc.append(&stream, data).await,
                    "a repeated id is stored once"
                );
                None
            }
            Op::Again(k) if !appended.is_empty() => {
                let again = appended[k % appended.len()].2.clone();
                event(&again).map(|e| (e, again))
            }
            Op::Duplicate(_) | Op::Again(_) => None,
            Op::Restart => {
                inc.restart().await?;
                None
            }
            Op::Rebuild => {
                inc.rebuild().await?;
                None
            }
            Op::Fault(f) => {
                fault = Some(*f);
                None
            }
            op => event(op).map(|e| (e, op.clone())),
        };
        if let Some(((stream, data), op)) = new {
            if let Some(f) = fault.take() {
                inc.faults.pending.lock().unwrap().insert(data.id, f);
            }
            prop_assert!(!inc.append(&stream, data.clone()).await);
            appended.push((stream, data, op));
        }
    }
    let head = head(&store).await;
    inc.settle(head).await?;
    inc.tally()?;
    let events = store
        .read_all(GlobalPosition::START, 100_000)
        .await
        .unwrap();
    let expected = reference(&events);
    let path = inc.path.clone();
    let incremental = dump(
        &tower_patterns_cqrs::projection::sqlite_reader(&path).unwrap(),
        &inc.handle.tables(),
    );
    prop_assert_eq!(
        &incremental,
        &expected,
        "the incremental model says what the events say"
    );

    // A fresh build from position 0.
    let fresh_path = dir.path().join("fresh.db");
    let (fresh, fresh_task) = sqlite(&store, &fresh_path, 1_000, Both).spawn();
    prop_assert!(caught_up(&fresh, head).await);
    let fresh_dump = dump(
        &tower_patterns_cqrs::projection::sqlite_reader(&fresh_path).unwrap(),
        &fresh.tables(),
    );
    prop_assert_eq!(&incremental, &fresh_dump);

    // A rebuild of the still log into the next version of the tables, swapped in.
    let handle = inc.handle.clone();
    let from = handle.tables().version();
    handle.rebuild();
    let status = handle
        .wait_for_status(WAIT, |_| handle.tables().version() > from)
        .await;
    prop_assert!(
        handle.tables().version() > from,
        "the rebuild swapped: {status:?}"
    );
    prop_assert!(caught_up(&handle, head).await, "{:?}", handle.status());
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
            count(&SEEN.external_redelivered, redelivered);
        } else {
            prop_assert!(reached || crashed, "{:?}", ext.status());
        }

        let events = events.len();
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
        prop_assert_eq!(&expected, &dump(&conn, &tables));
    }

    stop(&inc.handle, inc.task).await?;
    stop(&fresh, fresh_task).await
}

#[test]
fn a_rebuilt_projection_equals_the_incremental_one() {
    // The injected crashes are expected: keep their panics quiet.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<InjectedCrash>() {
            report(info);
        }
    }));
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
    let seen = |c: &AtomicUsize| c.load(Ordering::SeqCst);
    eprintln!("{SEEN:?}");
    for (what, n) in [
        (
            "an external effect crashed before its checkpoint",
            seen(&SEEN.external_redelivered),
        ),
        (
            "a like repeated by the same user",
            seen(&SEEN.repeated_likes),
        ),
        ("a follow repeated", seen(&SEEN.repeated_follows)),
        ("a product created twice", seen(&SEEN.repeated_creates)),
        ("the same price set twice", seen(&SEEN.repeated_prices)),
        ("a runner crashed inside a batch", seen(&SEEN.crashes)),
        (
            "a batch delivered again after a crash",
            seen(&SEEN.batch_redelivered),
        ),
        (
            "an event retried after a transient failure",
            seen(&SEEN.retried),
        ),
        (
            "an append while a rebuild ran",
            seen(&SEEN.appends_during_rebuild),
        ),
        ("a rebuild among the appends swapped in", seen(&SEEN.swaps)),
    ] {
        assert!(n > 0, "no case had {what}");
    }
}
