//! Acceptance: "an event the projection cannot decode goes by its failure policy with a typed
//! error naming stream, version and position; nothing lost or silently skipped". Four kinds
//! of bad input in a SQLite store: a payload of another event type than the one stored with
//! it, a payload of the wrong shape, a type the projection's enum does not know, and a row
//! whose metadata was broken behind the store's back (raw SQL: the store cannot read the row
//! at all, so the runner isolates it with smaller pages).

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{path::PathBuf, sync::Arc, time::Duration};

use runner_support::{Ledger, Shop, append, append_n, checkpoint_row, created, seen_at};
use tower_patterns_cqrs::{
    CheckpointStore, FailurePolicy, Projection, ProjectionError, Status, Tables,
    checkpoint::SqliteCheckpoints,
};
use tower_patterns_eventstore::{
    Error as StoreError, EventData, GlobalPosition, sqlite::SqliteStore,
};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    /// Stored as `Created`, the payload is a `Priced`.
    OtherType,
    /// Stored as `Created`, the payload's id is a string.
    WrongShape,
    /// A type the `Shop` enum does not have.
    UnknownType,
    /// A row whose metadata is not JSON.
    BrokenRow,
}

impl Bad {
    const ALL: [Self; 4] = [
        Self::OtherType,
        Self::WrongShape,
        Self::UnknownType,
        Self::BrokenRow,
    ];

    fn stream(self) -> &'static str {
        match self {
            Self::OtherType => "other-type",
            Self::WrongShape => "wrong-shape",
            Self::UnknownType => "unknown-type",
            Self::BrokenRow => "broken-row",
        }
    }

    fn data(self) -> EventData {
        match self {
            Self::OtherType => {
                EventData::json("Created", &Shop::Priced { id: 1, price: 5 }).unwrap()
            }
            Self::WrongShape => EventData::json(
                "Created",
                &serde_json::json!({ "Created": { "id": "one", "name": "x" } }),
            )
            .unwrap(),
            Self::UnknownType => EventData::json(
                "Discontinued",
                &serde_json::json!({ "Discontinued": { "id": 1 } }),
            )
            .unwrap(),
            Self::BrokenRow => created(1),
        }
    }

    /// Whether `e` is the store's typed error for this kind, naming the event.
    fn is_typed(self, e: &StoreError, position: GlobalPosition) -> bool {
        let stream = self.stream();
        match (self, e) {
            (
                Self::OtherType,
                StoreError::Mismatch {
                    stream: s,
                    version: 1,
                    position: p,
                    ..
                },
            )
            | (
                Self::UnknownType,
                StoreError::UnknownEventType {
                    stream: s,
                    version: 1,
                    position: p,
                    ..
                },
            )
            | (
                Self::WrongShape,
                StoreError::Corrupt {
                    stream: s,
                    version: 1,
                    position: p,
                    ..
                },
            ) => s == stream && *p == position,
            (
                Self::BrokenRow,
                StoreError::Corrupt {
                    stream: s,
                    version: 1,
                    position: p,
                    reason,
                },
            ) => s == stream && *p == position && reason.contains("metadata"),
            _ => false,
        }
    }
}

struct Log {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    model: PathBuf,
    /// Each bad event, in log order.
    bad: Vec<(Bad, GlobalPosition)>,
    head: GlobalPosition,
}

/// Ten good events, then each of `bad` followed by `gap` good events, then ten more.
async fn log(bad: &[Bad]) -> Log {
    log_with_gap(bad, 10).await
}

async fn log_with_gap(bad: &[Bad], gap: u32) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.db");
    let store = Arc::new(SqliteStore::open(&events).unwrap());
    let mut head = append_n(&*store, "shop", 10).await;
    let mut positions = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        let p = append(&*store, b.stream(), vec![b.data()]).await;
        if *b == Bad::BrokenRow {
            let raw = rusqlite::Connection::open(&events).unwrap();
            let n = raw
                .execute(
                    "UPDATE tp_events SET metadata = '{broken' WHERE position = ?1",
                    [p.index as i64],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
        positions.push((*b, p));
        head = p;
        if gap > 0 {
            head = append_n(&*store, &format!("after-{i}"), gap).await;
        }
    }
    if gap == 0 {
        head = append_n(&*store, "after", 10).await;
    }
    Log {
        model: dir.path().join("model.db"),
        _dir: dir,
        store,
        bad: positions,
        head,
    }
}

#[tokio::test]
async fn dead_letter_sets_each_bad_event_aside_with_a_row_and_applies_every_other() {
    let log = log(&Bad::ALL).await;
    let (handle, task) = Projection::builder("ledger")
        .source(log.store.clone())
        .sqlite(&log.model, Ledger::default())
        .batch(16)
        .policy(FailurePolicy::dead_letter())
        .build()
        .unwrap()
        .spawn();
    assert!(
        handle.wait_for(log.head, WAIT).await,
        "{:?}",
        handle.status()
    );
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );

    let letters = SqliteCheckpoints::open(&log.model)
        .unwrap()
        .dead_letters("ledger")
        .await
        .unwrap();
    assert_eq!(letters.len(), 4, "{letters:#?}");
    for (letter, (bad, position)) in letters.iter().zip(&log.bad) {
        assert_eq!(
            (letter.stream.as_str(), letter.version, letter.position),
            (bad.stream(), 1, *position),
            "{bad:?}"
        );
        assert!(
            letter.error.contains(&format!("position {position}")),
            "{bad:?}: {}",
            letter.error
        );
        assert_eq!(letter.attempts, 1);
        let want_type = match bad {
            Bad::BrokenRow => "(unreadable)",
            Bad::UnknownType => "Discontinued",
            _ => "Created",
        };
        assert_eq!(letter.event_type, want_type);
        assert_eq!(letter.event_id.is_nil(), *bad == Bad::BrokenRow);
    }

    // Nothing else is missing, nothing is applied twice.
    let bad: Vec<u64> = log.bad.iter().map(|(_, p)| p.index).collect();
    let want: Vec<(u64, u32)> = (1..=log.head.index)
        .filter(|i| !bad.contains(i))
        .map(|i| (i, 1))
        .collect();
    assert_eq!(seen_at(&log.model, &Tables::new("ledger", 1)), want);
    assert_eq!(
        checkpoint_row(&log.model, "ledger"),
        Some((0, log.head.index, 1))
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stop_keeps_the_checkpoint_just_before_each_kind_of_bad_event_with_a_typed_error() {
    for bad in Bad::ALL {
        let log = log(&[bad]).await;
        let (_, position) = log.bad[0];
        let before = GlobalPosition::new(0, position.index - 1);
        let (handle, task) = Projection::builder("ledger")
            .source(log.store.clone())
            .sqlite(&log.model, Ledger::default())
            .batch(16)
            .policy(FailurePolicy::stop())
            .build()
            .unwrap()
            .spawn();
        let status = handle
            .wait_for_status(WAIT, |s| matches!(s, Status::Stopped { .. }))
            .await;
        let Status::Stopped { error } = status else {
            panic!("{bad:?}: {status:?}")
        };
        assert!(
            error.contains(&format!(
                "of stream {} at version 1, position {position}",
                bad.stream()
            )),
            "{bad:?}: {error}"
        );
        // The checkpoint stays just before the bad event: every event before it applied.
        assert_eq!(handle.position(), before, "{bad:?}");
        assert_eq!(
            checkpoint_row(&log.model, "ledger"),
            Some((0, before.index, 1)),
            "{bad:?}"
        );
        assert_eq!(
            seen_at(&log.model, &Tables::new("ledger", 1)),
            (1..position.index).map(|i| (i, 1)).collect::<Vec<_>>(),
            "{bad:?}"
        );
        let checkpoints = SqliteCheckpoints::open(&log.model).unwrap();
        assert!(checkpoints.dead_letters("ledger").await.unwrap().is_empty());
        assert_eq!(
            checkpoints
                .load("ledger")
                .await
                .unwrap()
                .map(|c| c.position),
            Some(before)
        );

        // The typed error: the projection's, naming the event, caused by the store's.
        let last = handle.last_error().expect("the error that stopped it");
        let ProjectionError::Apply {
            stream,
            version,
            position: at,
            ..
        } = &*last
        else {
            panic!("{bad:?}: {last:?}")
        };
        assert_eq!(
            (stream.as_str(), *version, *at),
            (bad.stream(), 1, position)
        );
        let cause = std::error::Error::source(&*last)
            .and_then(std::error::Error::source)
            .and_then(|e| e.downcast_ref::<StoreError>())
            .unwrap_or_else(|| panic!("{bad:?}: no store error under {last:?}"));
        assert!(bad.is_typed(cause, position), "{bad:?}: {cause:?}");

        // Resuming tries it again: it fails again, and stays where it was.
        handle.resume();
        let again = handle
            .wait_for_status(WAIT, |s| matches!(s, Status::Stopped { .. }))
            .await;
        assert!(matches!(again, Status::Stopped { .. }));
        assert_eq!(handle.position(), before, "{bad:?}");
        handle.shutdown();
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_run_of_broken_rows_is_isolated_one_by_one() {
    // Three broken rows one after the other (positions 11 to 13), in the middle of a page.
    let log = log_with_gap(&[Bad::BrokenRow, Bad::BrokenRow, Bad::BrokenRow], 0).await;
    let (handle, task) = Projection::builder("ledger")
        .source(log.store.clone())
        .sqlite(&log.model, Ledger::default())
        .batch(11)
        .policy(FailurePolicy::dead_letter())
        .build()
        .unwrap()
        .spawn();
    assert!(
        handle.wait_for(log.head, WAIT).await,
        "{:?}",
        handle.status()
    );
    let letters = SqliteCheckpoints::open(&log.model)
        .unwrap()
        .dead_letters("ledger")
        .await
        .unwrap();
    let at: Vec<_> = letters.iter().map(|l| l.position).collect();
    let want: Vec<_> = log.bad.iter().map(|(_, p)| *p).collect();
    assert_eq!(at, want);
    assert_eq!(
        seen_at(&log.model, &Tables::new("ledger", 1)).len() as u64,
        log.head.index - 3
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// A name prefixes the read model's tables, and PostgreSQL folds unquoted names to lowercase
/// and cuts them at 63 bytes: `build()` refuses what would not survive that.
#[test]
fn a_name_that_cannot_prefix_tables_everywhere_is_refused_at_build() {
    let build = |name: &str| {
        let conn = Arc::new(std::sync::Mutex::new(
            rusqlite::Connection::open_in_memory().unwrap(),
        ));
        Projection::builder(name.to_owned())
            .source(Arc::new(tower_patterns_eventstore::InMemoryStore::new()))
            .sqlite_connection(conn, Ledger::default())
            .build()
    };
    let longest = "a".repeat(32);
    for name in ["catalog", "photo_feed2", longest.as_str()] {
        assert!(build(name).is_ok(), "{name}");
    }
    let too_long = "a".repeat(33);
    for name in [
        "Catalog",
        "catalogPrices",
        "_catalog",
        "9lives",
        too_long.as_str(),
    ] {
        let err = build(name).expect_err(name);
        assert_eq!(err.field(), "name", "{name}");
    }
}
