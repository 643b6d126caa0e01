//! Aggregates on every store: the bank account, snapshots, time travel, upcasting, bad
//! data, commands as a tower `Service` under contention, and a property: snapshot and
//! no-snapshot loads agree.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{Account, AccountCommand as C, AccountError, AccountEvent};
use proptest::prelude::*;
use serde_json::json;
use tower::ServiceExt;
use tower_patterns_eventstore::{
    Aggregate, Command, CommandService, Error, EventData, EventStore, ExpectedVersion,
    InMemoryStore, Metadata, Repository, RepositoryError, Snapshot,
};

/// The one event of the small aggregates below: a tick.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Ticked {
    Tick,
}

impl tower_patterns_eventstore::DomainEvent for Ticked {
    fn event_type(&self) -> &'static str {
        "Tick"
    }
}

async fn bank_account<S: EventStore>(store: Arc<S>, clock: Arc<AtomicU64>) {
    let repo =
        Repository::<Account, S>::new(store.clone(), "account-").upcasters(common::upcasters());
    let t = |secs: u64| clock.store(secs * 1_000_000, Ordering::SeqCst);
    t(1_000);
    repo.execute(
        "1",
        &C::Open {
            owner: "ada".into(),
        },
        Metadata::default().for_tenant("acme"),
    )
    .await
    .unwrap();
    t(2_000);
    repo.execute("1", &C::Deposit { amount: 100 }, Metadata::default())
        .await
        .unwrap();
    t(3_000);
    let done = repo
        .execute("1", &C::Withdraw { amount: 30 }, Metadata::default())
        .await
        .unwrap();
    assert_eq!(done.version, 3);
    // Insufficient funds is the domain's answer, and stores nothing.
    match repo
        .execute("1", &C::Withdraw { amount: 100 }, Metadata::default())
        .await
    {
        Err(RepositoryError::Domain(AccountError::InsufficientFunds {
            balance: 70,
            wanted: 100,
        })) => {}
        other => panic!("{other:?}"),
    }
    let now = repo.load("1").await.unwrap();
    assert_eq!((now.state.balance, now.version), (70, 3));

    // Time travel: by version, and by date (the balance on a date).
    assert_eq!(
        repo.state_at_version("1", 2).await.unwrap().state.balance,
        100
    );
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    assert_eq!(
        repo.state_at("1", at(2_500)).await.unwrap().state.balance,
        100
    );
    assert_eq!(repo.state_at("1", at(999)).await.unwrap().version, 0);
    assert_eq!(
        repo.state_at("1", at(3_000)).await.unwrap().state.balance,
        70
    );

    let history = repo.history("1").await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.event.clone()).collect::<Vec<_>>(),
        [
            AccountEvent::Opened {
                owner: "ada".into()
            },
            AccountEvent::Deposited { amount: 100 },
            AccountEvent::Withdrew { amount: 30 },
        ]
    );
    assert_eq!(history[0].metadata.tenant_id.as_deref(), Some("acme"));
    assert_eq!(history[1].metadata.recorded_at(), at(2_000));

    // Upcasting: an old `Deposited` v1 written by an earlier release.
    let v1 = EventData::json("Deposited", &json!({ "cents": 2_500 })).unwrap();
    store
        .append("account-1", ExpectedVersion::Exact(3), vec![v1])
        .await
        .unwrap();
    assert_eq!(repo.load("1").await.unwrap().state.balance, 95);

    // Bad data: a payload that is not an account event is a typed error naming the event.
    let bad = EventData::json("Deposited", &json!({ "Deposited": { "amount": "lots" } }))
        .unwrap()
        .with_schema_version(2);
    store
        .append("account-2", ExpectedVersion::NoStream, vec![bad])
        .await
        .unwrap();
    match repo.load("2").await {
        Err(Error::Corrupt {
            stream,
            version: 1,
            reason,
            ..
        }) => {
            assert_eq!(stream, "account-2");
            assert!(reason.contains("invalid type"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let unknown = EventData::json("Frozen", &json!({ "Frozen": {} })).unwrap();
    store
        .append("account-3", ExpectedVersion::NoStream, vec![unknown])
        .await
        .unwrap();
    assert!(matches!(
        repo.load("3").await,
        Err(Error::UnknownEventType { ref stream, version: 1, ref event_type, .. }) if stream == "account-3" && event_type == "Frozen"
    ));
}

/// Events are decoded by the type and schema version stored with them, never by the shape of
/// their payload: a disagreement is a typed error naming the event, and nothing is applied.
async fn decoding_by_stored_type<S: EventStore>(store: Arc<S>) {
    let repo =
        Repository::<Account, S>::new(store.clone(), "typed-").upcasters(common::upcasters());
    // An open account with 100, then one stored event `(type, schema version, payload)`:
    // returns the load's answer and the event's position.
    let after = |id: &'static str, event_type: &'static str, schema: u32, payload| {
        let (repo, store) = (repo.clone(), store.clone());
        async move {
            repo.execute(id, &C::Open { owner: "ed".into() }, Metadata::default())
                .await
                .unwrap();
            repo.execute(id, &C::Deposit { amount: 100 }, Metadata::default())
                .await
                .unwrap();
            let odd = EventData::json(event_type, &payload)
                .unwrap()
                .with_schema_version(schema);
            let done = store
                .append(&repo.stream(id), ExpectedVersion::Exact(2), vec![odd])
                .await
                .unwrap();
            (repo.load(id).await, done.positions[0])
        }
    };

    // Stored as `Frozen`, shaped like a withdrawal: an unknown type, not a withdrawal.
    let (got, at) = after(
        "frozen",
        "Frozen",
        1,
        json!({ "Withdrew": { "amount": 30 } }),
    )
    .await;
    match got {
        Err(Error::UnknownEventType {
            stream,
            version: 3,
            position,
            event_type,
        }) => {
            assert_eq!(
                (stream.as_str(), position, event_type.as_str()),
                ("typed-frozen", at, "Frozen")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        repo.history("frozen").await,
        Err(Error::UnknownEventType { .. })
    ));
    assert!(matches!(
        repo.state_at("frozen", SystemTime::now() + Duration::from_secs(3_600))
            .await,
        Err(Error::UnknownEventType { .. })
    ));
    // Stored as `Frozen` with a payload of no known shape: still the stored type that is unknown.
    let (got, _) = after("frozen-2", "Frozen", 1, json!({ "reason": "fraud" })).await;
    assert!(
        matches!(got, Err(Error::UnknownEventType { ref event_type, .. }) if event_type == "Frozen"),
        "{got:?}"
    );

    // Stored as a known type, with another type's payload: a mismatch, naming the event.
    let (got, at) = after(
        "swapped",
        "Deposited",
        2,
        json!({ "Withdrew": { "amount": 30 } }),
    )
    .await;
    match got {
        Err(Error::Mismatch {
            stream,
            version: 3,
            position,
            event_type,
            schema_version: 2,
            found,
        }) => {
            assert_eq!(
                (stream.as_str(), position, event_type.as_str()),
                ("typed-swapped", at, "Deposited")
            );
            assert!(found.contains("Withdrew"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    let (got, _) = after(
        "swapped-2",
        "Withdrew",
        1,
        json!({ "Deposited": { "amount": 30 } }),
    )
    .await;
    assert!(
        matches!(got, Err(Error::Mismatch { version: 3, .. })),
        "{got:?}"
    );
    // A misspelt tag on a known type is a mismatch, not an unknown type (whatever serde says).
    let (got, _) = after(
        "typo",
        "Deposited",
        2,
        json!({ "Depositd": { "amount": 30 } }),
    )
    .await;
    assert!(
        matches!(got, Err(Error::Mismatch { ref found, .. }) if found.contains("Depositd")),
        "{got:?}"
    );

    // A schema version the reader does not have (a newer writer's `Withdrew` v3): refused.
    let (got, at) = after(
        "newer",
        "Withdrew",
        3,
        json!({ "Withdrew": { "amount": 30 } }),
    )
    .await;
    match got {
        Err(Error::Mismatch {
            version: 3,
            position,
            schema_version: 3,
            found,
            ..
        }) => {
            assert_eq!(position, at);
            assert!(found.contains("schema version 1"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    // An old `Deposited` v1 shaped like v2 is not read as v2: the upcaster runs, and refuses it.
    let (got, _) = after(
        "old",
        "Deposited",
        1,
        json!({ "Deposited": { "amount": 30 } }),
    )
    .await;
    assert!(
        matches!(got, Err(Error::Corrupt { version: 3, .. })),
        "{got:?}"
    );
    let bare = Repository::<Account, S>::new(store.clone(), "typed-");
    assert!(
        matches!(
            bare.load("old").await,
            Err(Error::Mismatch {
                schema_version: 1,
                ..
            })
        ),
        "without the upcaster, v1 is not taken for v2"
    );

    // The error names the event in its message too.
    let err = repo.load("swapped").await.unwrap_err().to_string();
    assert!(
        err.contains("typed-swapped") && err.contains("version 3"),
        "{err}"
    );
}

async fn snapshots<S: EventStore>(store: Arc<S>) {
    let repo = Repository::<Account, S>::new(store.clone(), "snap-").snapshot_every(10);
    repo.execute("a", &C::Open { owner: "bo".into() }, Metadata::default())
        .await
        .unwrap();
    for i in 1..=24 {
        repo.execute("a", &C::Deposit { amount: i }, Metadata::default())
            .await
            .unwrap();
    }
    let snap = store
        .load_snapshot("snap-a")
        .await
        .unwrap()
        .expect("snapshots were taken");
    assert_eq!(snap.version, 20);
    let with = repo.load("a").await.unwrap();
    let without = repo.load_from_events("a").await.unwrap();
    assert_eq!(with, without);
    assert_eq!(with.state.balance, (1..=24).sum::<u64>());

    // A snapshot of another shape version is ignored, not trusted.
    store
        .save_snapshot(
            "snap-a",
            Snapshot {
                version: 25,
                snapshot_version: 99,
                state: serde_json::value::to_raw_value(
                    &json!({ "owner": "mallory", "balance": 1, "transactions": 1 }),
                )
                .unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(repo.load("a").await.unwrap(), without);

    // A snapshot taken on demand is used, and agrees.
    assert_eq!(repo.take_snapshot("a").await.unwrap(), 25);
    let snap = store.load_snapshot("snap-a").await.unwrap().unwrap();
    assert_eq!((snap.version, snap.snapshot_version), (25, 1));
    assert_eq!(repo.load("a").await.unwrap(), without);
}

async fn commands_as_a_service<S: EventStore>(store: Arc<S>) {
    let repo = Repository::<Account, S>::new(store, "svc-").max_retries(100);
    let svc = CommandService::new(repo.clone());
    svc.clone()
        .oneshot(Command::new("x", C::Open { owner: "cy".into() }))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(
                svc.clone()
                    .oneshot(Command::new("x", C::Deposit { amount: 1 })),
            )
        })
        .collect();
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap().unwrap().retries;
    }
    let state = repo.load("x").await.unwrap();
    assert_eq!(
        (state.state.balance, state.version),
        (20, 21),
        "no deposit lost ({retries} retries)"
    );
    // An idempotent command: the retry after a lost answer stores nothing twice and answers
    // the first run, even though deciding again would now be refused (the balance is gone).
    let key = uuid::Uuid::now_v7();
    let withdraw_all = || Command::new("x", C::Withdraw { amount: 20 }).idempotent(key);
    let first = svc.clone().oneshot(withdraw_all()).await.unwrap();
    let retry = svc.clone().oneshot(withdraw_all()).await.unwrap();
    assert_eq!(
        (retry.version, &retry.positions),
        (first.version, &first.positions)
    );
    let state = repo.load("x").await.unwrap();
    assert_eq!((state.state.balance, state.version), (0, 22));
    // The same key on another aggregate is refused, not silently reused.
    let other = svc
        .clone()
        .oneshot(
            Command::new(
                "y",
                C::Open {
                    owner: "dee".into(),
                },
            )
            .idempotent(key),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            other,
            RepositoryError::Store(Error::DuplicateElsewhere { .. })
        ),
        "{other}"
    );
    // A domain refusal comes back through the service, typed.
    let err = svc
        .oneshot(Command::new("x", C::Withdraw { amount: 21 }))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Domain(AccountError::InsufficientFunds { .. })
    ));
}

/// `snapshot_every(0)` turns snapshots off (no division by zero); events of a type that keeps
/// the default schema version are stored as version 1.
#[tokio::test]
async fn zero_means_no_snapshots_and_versions_start_at_one() {
    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Counter(u64);
    impl Aggregate for Counter {
        type Command = ();
        type Event = Ticked;
        type Error = std::convert::Infallible;
        fn handle(&self, (): &()) -> Result<Vec<Ticked>, Self::Error> {
            Ok(vec![Ticked::Tick])
        }
        fn apply(&mut self, _: &Ticked) {
            self.0 += 1;
        }
    }

    let store = Arc::new(InMemoryStore::new());
    let repo = Repository::<Counter, _>::new(store.clone(), "c-").snapshot_every(0);
    for _ in 0..3 {
        repo.execute("1", &(), Metadata::default()).await.unwrap();
    }
    assert!(store.load_snapshot("c-1").await.unwrap().is_none());
    assert_eq!(repo.load("1").await.unwrap().state.0, 3);
    let stored = store
        .read_stream("c-1", 1, tower_patterns_eventstore::Direction::Forward, 9)
        .await
        .unwrap();
    assert!(stored.iter().all(|e| e.schema_version == 1));
    // A hand-written v1 event decodes for a reader at the default version.
    store
        .append(
            "c-1",
            ExpectedVersion::Exact(3),
            vec![EventData::json("Tick", &json!("Tick")).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(repo.load("1").await.unwrap().state.0, 4);
}

/// Streams longer than a page (1,000 events) load, travel and list whole.
#[tokio::test]
async fn long_streams_are_read_page_by_page() {
    let store = Arc::new(InMemoryStore::new());
    let repo = Repository::<Account, _>::new(store.clone(), "long-");
    repo.execute("1", &C::Open { owner: "lu".into() }, Metadata::default())
        .await
        .unwrap();
    // 2,099 deposits of 1: the stream ends at version 2,100, pages of 1,000, 1,000 and 100,
    // with a page boundary exactly at 1,000 and 2,000.
    let deposit = || {
        EventData::json("Deposited", &AccountEvent::Deposited { amount: 1 })
            .unwrap()
            .with_schema_version(2)
    };
    for _ in 0..21 {
        let v = store.stream_version("long-1").await.unwrap();
        let n = if v == 1 { 99 } else { 100 };
        store
            .append(
                "long-1",
                ExpectedVersion::Exact(v),
                (0..n).map(|_| deposit()).collect(),
            )
            .await
            .unwrap();
    }
    assert_eq!(store.stream_version("long-1").await.unwrap(), 2_100);
    let now = repo.load("1").await.unwrap();
    assert_eq!((now.version, now.state.balance), (2_100, 2_099));
    assert_eq!(repo.load_from_events("1").await.unwrap(), now);
    let then = repo.state_at_version("1", 1_500).await.unwrap();
    assert_eq!((then.version, then.state.balance), (1_500, 1_499));
    let history = repo.history("1").await.unwrap();
    assert_eq!(history.len(), 2_100);
    assert!(
        history
            .iter()
            .enumerate()
            .all(|(i, h)| h.version == i as u64 + 1)
    );
}

/// A snapshot of the current shape version is used as it is (events after it are folded on
/// top): the repository does not rebuild from events when it has one.
#[tokio::test]
async fn a_snapshot_of_the_current_shape_is_used() {
    let store = Arc::new(InMemoryStore::new());
    let repo = Repository::<Account, _>::new(store.clone(), "used-");
    repo.execute("1", &C::Open { owner: "mo".into() }, Metadata::default())
        .await
        .unwrap();
    repo.execute("1", &C::Deposit { amount: 5 }, Metadata::default())
        .await
        .unwrap();
    // A snapshot at version 1 that says 1,000 (events say 0 at version 1).
    let state = Account {
        owner: Some("mo".into()),
        balance: 1_000,
        transactions: 1,
    };
    store
        .save_snapshot(
            "used-1",
            Snapshot {
                version: 1,
                snapshot_version: 1,
                state: serde_json::value::to_raw_value(&state).unwrap(),
            },
        )
        .await
        .unwrap();
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (2, 1_005));
    assert_eq!(repo.load_from_events("1").await.unwrap().state.balance, 5);
}

#[test]
fn errors_and_handles_describe_themselves() {
    use std::error::Error as _;
    let domain: RepositoryError<AccountError> = RepositoryError::Domain(AccountError::ZeroAmount);
    assert_eq!(domain.to_string(), "command refused: ZeroAmount");
    assert!(
        domain
            .source()
            .unwrap()
            .downcast_ref::<AccountError>()
            .is_some()
    );
    let store: RepositoryError<AccountError> = Error::Invalid("empty".into()).into();
    assert_eq!(store.to_string(), "invalid argument: empty");
    assert!(store.source().unwrap().downcast_ref::<Error>().is_some());
    let conflict: RepositoryError<AccountError> = RepositoryError::Conflict {
        stream: "s".into(),
        attempts: 4,
    };
    assert_eq!(
        conflict.to_string(),
        "stream \"s\": concurrent writers won all 4 attempts"
    );
    assert!(conflict.source().is_none());
    let backend = Error::Backend("the disk is on fire".into());
    assert_eq!(backend.source().unwrap().to_string(), "the disk is on fire");
    assert!(Error::Invalid("x".into()).source().is_none());

    let repo = Repository::<Account, _>::new(Arc::new(InMemoryStore::new()), "acc-")
        .snapshot_every(10)
        .max_retries(7);
    let debug = format!("{repo:?}");
    assert!(
        debug.contains("prefix: \"acc-\"")
            && debug.contains("snapshot_every: Some(10)")
            && debug.contains("max_retries: 7"),
        "{debug}"
    );
    let debug = format!("{:?}", CommandService::new(repo));
    assert!(
        debug.starts_with("CommandService") && debug.contains("max_retries: 7"),
        "{debug}"
    );
}

/// A store where another writer gets in first `races` times (each append is preceded by a
/// competing one), and whose appends fail outright while `down` is set.
struct Racing {
    inner: InMemoryStore,
    races: std::sync::atomic::AtomicU32,
    down: std::sync::atomic::AtomicBool,
    appends: std::sync::atomic::AtomicU32,
}

impl Racing {
    fn new(races: u32) -> Self {
        Self {
            inner: InMemoryStore::new(),
            races: races.into(),
            down: false.into(),
            appends: 0.into(),
        }
    }
}

impl EventStore for Racing {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<tower_patterns_eventstore::AppendResult, Error> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Backend("the disk is on fire".into()));
        }
        if self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok()
        {
            let other = EventData::json("Deposited", &AccountEvent::Deposited { amount: 1 })
                .unwrap()
                .with_schema_version(2);
            self.inner
                .append(stream, ExpectedVersion::Any, vec![other])
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: tower_patterns_eventstore::Direction,
        max: usize,
    ) -> Result<Vec<tower_patterns_eventstore::RecordedEvent>, Error> {
        self.inner.read_stream(stream, from, direction, max).await
    }
    async fn read_all(
        &self,
        after: tower_patterns_eventstore::GlobalPosition,
        max: usize,
    ) -> Result<Vec<tower_patterns_eventstore::RecordedEvent>, Error> {
        self.inner.read_all(after, max).await
    }
    async fn find_event(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<tower_patterns_eventstore::RecordedEvent>, Error> {
        self.inner.find_event(id).await
    }
    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        self.inner.stream_version(stream).await
    }
    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        self.inner.stream_metadata(stream).await
    }
    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        self.inner.set_stream_metadata(stream, metadata).await
    }
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        self.inner.save_snapshot(stream, snapshot).await
    }
    async fn wait_for_events(&self, after: tower_patterns_eventstore::GlobalPosition) {
        self.inner.wait_for_events(after).await;
    }
}

/// Conflicts are retried up to `max_retries` times, counted in `retries`, then reported as
/// `Conflict`; other store errors are not retried; a command that decides nothing appends
/// nothing and reports no retries.
#[tokio::test]
async fn conflicts_are_retried_up_to_the_bound_and_nothing_else_is() {
    let open = || C::Open { owner: "ri".into() };
    let deposit = C::Deposit { amount: 10 };

    // Two other writers get in first: the third attempt wins.
    let store = Arc::new(Racing::new(0));
    let repo = Repository::<Account, _>::new(store.clone(), "r-").max_retries(2);
    repo.execute("1", &open(), Metadata::default())
        .await
        .unwrap();
    store.races.store(2, Ordering::SeqCst);
    let done = repo
        .execute("1", &deposit, Metadata::default())
        .await
        .unwrap();
    assert_eq!((done.version, done.retries), (4, 2));
    assert_eq!(repo.load("1").await.unwrap().state.balance, 12);

    // Three: the bound (2 retries, 3 attempts) is spent.
    store.races.store(3, Ordering::SeqCst);
    store.appends.store(0, Ordering::SeqCst);
    match repo.execute("1", &deposit, Metadata::default()).await {
        Err(RepositoryError::Conflict {
            stream,
            attempts: 3,
        }) => assert_eq!(stream, "r-1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.appends.load(Ordering::SeqCst), 3);
    assert_eq!(
        repo.load("1").await.unwrap().state.balance,
        15,
        "the others' only"
    );

    // No retries at all: the first conflict is final.
    let strict = Repository::<Account, _>::new(store.clone(), "r-").max_retries(0);
    store.races.store(1, Ordering::SeqCst);
    assert!(matches!(
        strict.execute("1", &deposit, Metadata::default()).await,
        Err(RepositoryError::Conflict { attempts: 1, .. })
    ));

    // A failing store is not a conflict, and is not retried.
    store.down.store(true, Ordering::SeqCst);
    store.appends.store(0, Ordering::SeqCst);
    match repo.execute("1", &deposit, Metadata::default()).await {
        Err(RepositoryError::Store(Error::Backend(e))) => {
            assert_eq!(e.to_string(), "the disk is on fire");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.appends.load(Ordering::SeqCst), 1);
}

/// A command that decides no events appends nothing and reports the loaded version.
#[tokio::test]
async fn a_command_that_decides_nothing_appends_nothing() {
    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct UpTo3(u64);
    impl Aggregate for UpTo3 {
        type Command = ();
        type Event = Ticked;
        type Error = std::convert::Infallible;
        fn handle(&self, (): &()) -> Result<Vec<Ticked>, Self::Error> {
            Ok(if self.0 < 3 {
                vec![Ticked::Tick]
            } else {
                vec![]
            })
        }
        fn apply(&mut self, _: &Ticked) {
            self.0 += 1;
        }
    }
    let store = Arc::new(Racing::new(0));
    let repo = Repository::<UpTo3, _>::new(store.clone(), "n-");
    for _ in 0..3 {
        repo.execute("1", &(), Metadata::default()).await.unwrap();
    }
    store.appends.store(0, Ordering::SeqCst);
    let done = repo.execute("1", &(), Metadata::default()).await.unwrap();
    assert_eq!(
        done,
        tower_patterns_eventstore::Committed {
            version: 3,
            positions: vec![],
            retries: 0
        }
    );
    assert_eq!(store.appends.load(Ordering::SeqCst), 0);
}

/// An idempotent command deciding several events stores each once under its own id, whatever
/// the key's bits (all ones, all zeros), and its retry answers the first run.
#[tokio::test]
async fn idempotent_commands_of_several_events_get_distinct_ids() {
    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Ticks(u64);
    impl Aggregate for Ticks {
        type Command = usize;
        type Event = Ticked;
        type Error = std::convert::Infallible;
        fn handle(&self, n: &usize) -> Result<Vec<Ticked>, Self::Error> {
            Ok(vec![Ticked::Tick; *n])
        }
        fn apply(&mut self, _: &Ticked) {
            self.0 += 1;
        }
    }
    let store = Arc::new(InMemoryStore::new());
    let repo = Repository::<Ticks, _>::new(store.clone(), "k-");
    for (id, key) in [
        ("ones", uuid::Uuid::from_u128(u128::MAX)),
        ("zeros", uuid::Uuid::from_u128(0)),
        (
            "mixed",
            uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        ),
    ] {
        let first = repo
            .execute_idempotent(id, &3, Metadata::default(), key)
            .await
            .unwrap();
        assert_eq!((first.version, first.positions.len()), (3, 3), "{id}");
        let again = repo
            .execute_idempotent(id, &3, Metadata::default(), key)
            .await
            .unwrap();
        assert_eq!(again, first, "{id}");
        let stored = store
            .read_stream(
                &repo.stream(id),
                1,
                tower_patterns_eventstore::Direction::Forward,
                9,
            )
            .await
            .unwrap();
        let ids: std::collections::HashSet<_> = stored.iter().map(|e| e.id).collect();
        assert_eq!((stored.len(), ids.len()), (3, 3), "{id}");
        assert!(!ids.contains(&key), "{id}: an event id is the key itself");
    }
}

fn clock() -> (
    Arc<AtomicU64>,
    impl Fn() -> SystemTime + Send + Sync + 'static,
) {
    let c = Arc::new(AtomicU64::new(0));
    let c2 = c.clone();
    (c, move || {
        UNIX_EPOCH + Duration::from_micros(c2.load(Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    let (c, f) = clock();
    bank_account(Arc::new(InMemoryStore::new().with_clock(f)), c).await;
    decoding_by_stored_type(Arc::new(InMemoryStore::new())).await;
    snapshots(Arc::new(InMemoryStore::new())).await;
    commands_as_a_service(Arc::new(InMemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    use tower_patterns_eventstore::sqlite::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let (c, f) = clock();
    bank_account(
        Arc::new(
            SqliteStore::open(dir.path().join("a.db"))
                .unwrap()
                .with_clock(f),
        ),
        c,
    )
    .await;
    snapshots(Arc::new(
        SqliteStore::open(dir.path().join("b.db")).unwrap(),
    ))
    .await;
    decoding_by_stored_type(Arc::new(
        SqliteStore::open(dir.path().join("d.db")).unwrap(),
    ))
    .await;
    commands_as_a_service(Arc::new(
        SqliteStore::open(dir.path().join("c.db")).unwrap(),
    ))
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    use tower_patterns_eventstore::postgres::PostgresStore;
    let Some(url) = common::fresh_postgres("agg").await else {
        return;
    };
    let (c, f) = clock();
    bank_account(
        Arc::new(PostgresStore::connect(&url, 8).await.unwrap().with_clock(f)),
        c,
    )
    .await;
    let Some(url) = common::fresh_postgres("agg").await else {
        return;
    };
    snapshots(Arc::new(PostgresStore::connect(&url, 8).await.unwrap())).await;
    let Some(url) = common::fresh_postgres("agg").await else {
        return;
    };
    decoding_by_stored_type(Arc::new(PostgresStore::connect(&url, 8).await.unwrap())).await;
    let Some(url) = common::fresh_postgres("agg").await else {
        return;
    };
    commands_as_a_service(Arc::new(PostgresStore::connect(&url, 8).await.unwrap())).await;
}

fn command() -> impl Strategy<Value = C> {
    prop_oneof![
        Just(C::Open { owner: "p".into() }),
        (0u64..50).prop_map(|amount| C::Deposit { amount }),
        (0u64..80).prop_map(|amount| C::Withdraw { amount }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn snapshot_and_event_loads_agree(commands in proptest::collection::vec(command(), 1..60), every in 1u64..7) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let store = Arc::new(InMemoryStore::new());
            let repo = Repository::<Account, _>::new(store, "p-").snapshot_every(every);
            // The model: the same commands folded in memory.
            let mut model = Account::default();
            for c in &commands {
                match (repo.execute("1", c, Metadata::default()).await, model.handle(c)) {
                    (Ok(_), Ok(events)) => events.iter().for_each(|e| model.apply(e)),
                    (Err(RepositoryError::Domain(a)), Err(b)) => prop_assert_eq!(a, b),
                    (a, b) => prop_assert!(false, "store {:?} vs model {:?}", a.map(|_| ()), b.map(|_| ())),
                }
            }
            let with = repo.load("1").await.unwrap();
            let without = repo.load_from_events("1").await.unwrap();
            prop_assert_eq!(&with, &without);
            prop_assert_eq!(with.state, model);
            Ok(())
        })?;
    }
}
