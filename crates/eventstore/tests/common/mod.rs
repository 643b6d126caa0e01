//! What the event store tests share: the bank account, a fresh PostgreSQL database per
//! test, and the conformance suite every store must pass.
#![allow(dead_code, unreachable_pub)]

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_patterns_eventstore::{
    Aggregate, Direction, DomainEvent, Error, EventData, EventStore, ExpectedVersion,
    GlobalPosition, Snapshot, subscribe,
};

// ---------------------------------------------------------------------------------------------
// The bank account

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrew { .. } => "Withdrew",
        }
    }

    /// `Deposited` v1 carried `{"cents": n}`; v2 is the enum's own shape in whole units.
    fn schema_version(&self) -> u32 {
        match self {
            Self::Deposited { .. } => 2,
            _ => 1,
        }
    }
}

/// Brings `Deposited` v1 (`{"cents": n}`) up to v2.
pub fn upcasters() -> tower_patterns_eventstore::Upcasters {
    tower_patterns_eventstore::Upcasters::new().with_fn("Deposited", 1, |p| {
        let cents = p["cents"].as_u64().ok_or("v1 Deposited without cents")?;
        Ok(json!({ "Deposited": { "amount": cents / 100 } }))
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
}

#[derive(Debug, PartialEq, Eq)]
pub enum AccountError {
    AlreadyOpen,
    NotOpen,
    InsufficientFunds { balance: u64, wanted: u64 },
    ZeroAmount,
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for AccountError {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub transactions: u64,
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.owner.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![AccountEvent::Opened {
                    owner: owner.clone(),
                }])
            }
            _ if self.owner.is_none() => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount: 0 } | AccountCommand::Withdraw { amount: 0 } => {
                Err(AccountError::ZeroAmount)
            }
            AccountCommand::Deposit { amount } => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw { amount } if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    wanted: *amount,
                })
            }
            AccountCommand::Withdraw { amount } => {
                Ok(vec![AccountEvent::Withdrew { amount: *amount }])
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.transactions += 1;
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A fresh database on the test command's PostgreSQL, or `None` (skipped) without one.
pub async fn fresh_postgres(tag: &str) -> Option<String> {
    let url = tower_patterns_testkit::server_url(tower_patterns_testkit::Server::Postgres)?;
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(conn);
    let db = format!(
        "tp_es_{tag}_{}_{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create a test database");
    let base = url
        .rsplit_once('/')
        .map_or(url.as_str(), |(b, _)| b)
        .to_owned();
    Some(format!("{base}/{db}"))
}

// ---------------------------------------------------------------------------------------------
// Conformance

fn ev(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &json!({ "n": n })).unwrap()
}

pub async fn appends_and_reads<S: EventStore>(store: &S) {
    let s = "conf-read";
    let r = store
        .append(
            s,
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("B", 2), ev("C", 3)],
        )
        .await
        .unwrap();
    assert_eq!((r.version, r.positions.len(), r.duplicate), (3, 3, false));
    assert!(r.positions.windows(2).all(|w| w[0] < w[1]));
    let fwd = store
        .read_stream(s, 1, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(fwd.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(fwd[1].event_type, "B");
    assert_eq!(fwd[2].payload.get(), r#"{"n":3}"#);
    assert!(
        fwd[0].metadata.recorded_at_micros > 0,
        "the store stamps recorded_at"
    );
    let back = store
        .read_stream(s, u64::MAX, Direction::Backward, 2)
        .await
        .unwrap();
    assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2]);
    let mid = store
        .read_stream(s, 2, Direction::Forward, 1)
        .await
        .unwrap();
    assert_eq!(mid[0].version, 2);
    assert!(
        store
            .read_stream("nothing", 1, Direction::Forward, 9)
            .await
            .unwrap()
            .is_empty()
    );
    let found = store.find_event(fwd[1].id).await.unwrap().unwrap();
    assert_eq!(
        (found.stream_id.as_str(), found.version, found.position),
        (s, 2, fwd[1].position)
    );
    assert!(
        store
            .find_event(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.stream_version(s).await.unwrap(), 3);
    assert_eq!(store.stream_version("nothing").await.unwrap(), 0);
}

pub async fn expectations_are_enforced<S: EventStore>(store: &S) {
    let s = "conf-expect";
    let conflict = |e: Error| assert!(e.is_conflict(), "{e}");
    conflict(
        store
            .append(s, ExpectedVersion::StreamExists, vec![ev("A", 0)])
            .await
            .unwrap_err(),
    );
    conflict(
        store
            .append(s, ExpectedVersion::Exact(1), vec![ev("A", 0)])
            .await
            .unwrap_err(),
    );
    store
        .append(s, ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    conflict(
        store
            .append(s, ExpectedVersion::NoStream, vec![ev("A", 0)])
            .await
            .unwrap_err(),
    );
    store
        .append(s, ExpectedVersion::StreamExists, vec![ev("A", 2)])
        .await
        .unwrap();
    store
        .append(s, ExpectedVersion::Exact(2), vec![ev("A", 3)])
        .await
        .unwrap();
    let err = store
        .append(s, ExpectedVersion::Exact(2), vec![ev("A", 0)])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected version 2, found version 3"),
        "{err}"
    );
    store
        .append(s, ExpectedVersion::Any, vec![ev("A", 4)])
        .await
        .unwrap();
    assert_eq!(
        store.stream_version(s).await.unwrap(),
        4,
        "refused appends stored nothing"
    );
    // Bad arguments are typed errors.
    assert!(matches!(
        store
            .append("", ExpectedVersion::Any, vec![ev("A", 0)])
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.append(s, ExpectedVersion::Any, vec![]).await,
        Err(Error::Invalid(_))
    ));
    let e = ev("A", 0);
    assert!(matches!(
        store
            .append(s, ExpectedVersion::Any, vec![e.clone(), e])
            .await,
        Err(Error::Invalid(_))
    ));
}

pub async fn appends_are_idempotent<S: EventStore>(store: &S) {
    let s = "conf-idem";
    let batch = vec![ev("A", 1), ev("B", 2)];
    let first = store
        .append(s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // The retry after a lost answer: same ids, same (now stale) expectation.
    let again = store
        .append(s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.version, again.positions.clone()),
        (first.version, first.positions.clone())
    );
    assert_eq!(store.stream_version(s).await.unwrap(), 2, "stored once");
    let mixed = vec![batch[0].clone(), ev("C", 3)];
    assert!(matches!(
        store.append(s, ExpectedVersion::Any, mixed).await,
        Err(Error::PartialDuplicate { .. })
    ));
    assert!(matches!(
        store
            .append("conf-other", ExpectedVersion::Any, vec![batch[1].clone()])
            .await,
        Err(Error::DuplicateElsewhere { .. })
    ));
    assert_eq!(store.stream_version(s).await.unwrap(), 2);
}

/// `writers` tasks each append `rounds` events to one stream, each expecting the version it
/// read, retrying on conflict: every version is won by exactly one writer, none is lost.
pub async fn concurrent_writers_lose_no_update<S: EventStore>(
    store: Arc<S>,
    writers: u64,
    rounds: u64,
) {
    let s = "conf-race";
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for r in 0..rounds {
                    loop {
                        let v = store.stream_version(s).await.unwrap();
                        let expected = if v == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(v)
                        };
                        match store
                            .append(s, expected, vec![ev("W", w * 1_000 + r)])
                            .await
                        {
                            Ok(done) => {
                                assert_eq!(done.version, v + 1);
                                break;
                            }
                            Err(e) if e.is_conflict() => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let all = store
        .read_stream(s, 1, Direction::Forward, 100_000)
        .await
        .unwrap();
    assert_eq!(
        all.len() as u64,
        writers * rounds,
        "no update lost ({conflicts} conflicts retried)"
    );
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64 + 1)
    );
    let payloads: HashSet<_> = all.iter().map(|e| e.payload.get().to_owned()).collect();
    assert_eq!(
        payloads.len() as u64,
        writers * rounds,
        "each write stored once"
    );
}

pub async fn the_global_log_and_subscriptions<S: EventStore>(store: Arc<S>) {
    let before = store
        .read_all(GlobalPosition::START, 100_000)
        .await
        .unwrap();
    let start = before.last().map_or(GlobalPosition::START, |e| e.position);
    store
        .append("conf-log-a", ExpectedVersion::Any, vec![ev("A", 1)])
        .await
        .unwrap();
    store
        .append(
            "conf-log-b",
            ExpectedVersion::Any,
            vec![ev("B", 1), ev("B", 2)],
        )
        .await
        .unwrap();
    let log = store.read_all(start, 100).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["A", "B", "B"]
    );
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let page = store.read_all(log[0].position, 1).await.unwrap();
    assert_eq!(page[0].id, log[1].id, "strictly after");

    // Catch up on the three, then receive a live one.
    let mut sub = Box::pin(subscribe(store.clone(), start));
    for expected in &log {
        let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.id, expected.id);
    }
    let live = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        live.append("conf-log-a", ExpectedVersion::Any, vec![ev("Live", 9)])
            .await
            .unwrap();
    });
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.event_type, "Live");
}

pub async fn metadata_and_snapshots<S: EventStore>(store: &S) {
    let s = "conf-meta";
    assert_eq!(store.stream_metadata(s).await.unwrap(), None);
    store
        .set_stream_metadata(s, json!({ "max_age": 3600 }))
        .await
        .unwrap();
    assert_eq!(
        store.stream_metadata(s).await.unwrap(),
        Some(json!({ "max_age": 3600 }))
    );
    assert_eq!(
        store.stream_version(s).await.unwrap(),
        0,
        "metadata is not an event"
    );
    store
        .append(s, ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    assert_eq!(
        store.stream_metadata(s).await.unwrap(),
        Some(json!({ "max_age": 3600 }))
    );

    assert!(store.load_snapshot(s).await.unwrap().is_none());
    let snap = |v: u64| Snapshot {
        version: v,
        snapshot_version: 1,
        state: serde_json::value::to_raw_value(&json!({ "v": v })).unwrap(),
    };
    store.save_snapshot(s, snap(10)).await.unwrap();
    store.save_snapshot(s, snap(5)).await.unwrap(); // older: ignored
    let got = store.load_snapshot(s).await.unwrap().unwrap();
    assert_eq!((got.version, got.state.get()), (10, r#"{"v":10}"#));
}

/// `head` and `count_after` answer what `read_all` shows: nothing on an empty log, the last
/// event, counts strictly after a position, never beyond the limit. Runs on an empty store.
pub async fn head_and_count_after<S: EventStore>(store: &S) {
    assert!(
        store.head().await.unwrap().is_none(),
        "an empty log has no head"
    );
    assert_eq!(
        store.count_after(GlobalPosition::START, 10).await.unwrap(),
        0
    );
    let first = store
        .append(
            "conf-head-a",
            ExpectedVersion::Any,
            vec![ev("A", 1), ev("A", 2)],
        )
        .await
        .unwrap();
    let one = store.head().await.unwrap().unwrap();
    assert_eq!(one.position, first.positions[1]);
    let second = store
        .append(
            "conf-head-b",
            ExpectedVersion::Any,
            vec![ev("B", 1), ev("B", 2), ev("B", 3)],
        )
        .await
        .unwrap();
    let log = store.read_all(GlobalPosition::START, 100).await.unwrap();
    assert_eq!(log.len(), 5);
    let head = store.head().await.unwrap().unwrap();
    assert_eq!(
        (
            head.id,
            head.position,
            head.version,
            head.stream_id.as_str()
        ),
        (log[4].id, second.positions[2], 3, "conf-head-b"),
        "the head is the last event read_all shows"
    );
    assert_eq!(head.payload.get(), r#"{"n":3}"#);
    let count = |after: GlobalPosition, limit: u64| async move {
        store.count_after(after, limit).await.unwrap()
    };
    assert_eq!(count(GlobalPosition::START, 100).await, 5);
    assert_eq!(count(GlobalPosition::START, 5).await, 5);
    assert_eq!(
        count(GlobalPosition::START, 3).await,
        3,
        "the limit is reached"
    );
    assert_eq!(count(GlobalPosition::START, 0).await, 0);
    assert_eq!(count(log[0].position, 100).await, 4, "strictly after");
    assert_eq!(count(log[1].position, 2).await, 2);
    assert_eq!(count(log[3].position, 100).await, 1);
    assert_eq!(count(head.position, 100).await, 0, "at the head");
    let beyond = GlobalPosition::new(head.position.commit, head.position.index + 1_000);
    assert_eq!(count(beyond, 100).await, 0, "after the head");
}

pub async fn run_all<S: EventStore>(store: Arc<S>) {
    head_and_count_after(&*store).await;
    appends_and_reads(&*store).await;
    expectations_are_enforced(&*store).await;
    appends_are_idempotent(&*store).await;
    metadata_and_snapshots(&*store).await;
    the_global_log_and_subscriptions(store.clone()).await;
    concurrent_writers_lose_no_update(store, 8, 25).await;
}
