//! Dual writes for a migration: a service that commits every write on the primary store and
//! delivers it to the secondary asynchronously, with retries, and a reconciler that finds and
//! repairs what differs between the two.
//!
//! While traffic is split between a monolith and the service replacing it, each keeps its
//! own database, and a write on either side must reach both. [`DualWrite`] is a tower
//! [`Service`](tower_service::Service) of [`Write`]s (put a value under a key, or delete a
//! key):
//!
//! 1. **On the primary, synchronously**: the row and an *outbox entry* are committed in one
//!    transaction, then the call answers with the row's new version ([`Written`]). A process
//!    that dies right after the answer loses nothing: the entry is in the primary's
//!    database, and the next dual write built on it delivers it.
//! 2. **To the secondary, asynchronously**: a worker reads due entries, sends each key's
//!    current row to the secondary (a batch per transaction) and deletes the entries it
//!    delivered. A failure defers the entries with backoff; the worker goes on with the
//!    others, so writes are never held up by the secondary, and catches up when it returns.
//! 3. **The version guard**: the secondary keeps a row only if its version is higher than
//!    the one it holds, so a late retry never overwrites a newer row, deliveries may land in
//!    any order, and delivering twice is harmless (a crash between delivering and deleting
//!    the entry, two workers on one outbox).
//! 4. **Missed writes**: an entry still undelivered after
//!    [`missed_after`](DualWriteBuilder::missed_after) attempts, or refused with an error
//!    retrying will not cure, is recorded as missed in the outbox, listed by
//!    [`DualWriteHandle::missed`], counted and logged. It is still retried; its delivery,
//!    or a [`Reconciler`]'s repair of its key, clears the record.
//!
//! # The row model
//!
//! Both stores hold a table `(key TEXT PRIMARY KEY, value BLOB/BYTEA, version INTEGER)` of
//! [`Row`]s; a primary has the outbox `<table>_dual_outbox` beside it. Values are bytes
//! (JSON or anything else: [`Write::put_json`], [`Row::json`]). **A delete leaves a
//! tombstone** (a row whose value is NULL) rather than removing the row: its version is what
//! stops an older write, delivered late, from bringing the row back. Read a tombstone as no
//! row ([`Row::is_tombstone`]).
//!
//! **Versions are hybrid timestamps**: a write's version is the larger of the row's version
//! plus one and the current Unix time in microseconds. One side's writes to a key are
//! strictly ordered, and when writes go both ways (a `DualWrite` from the monolith's
//! database to the service's and another back, for a 50/50 split) the later write wins on
//! both sides. A reconciler, though, takes its primary as the truth: run it from the side
//! that is.
//!
//! | store | for |
//! |---|---|
//! | `SqliteRows` (feature `sqlite`) | a SQLite file (or memory), calls on Tokio's blocking threads |
//! | `PostgresRows` (feature `postgres`) | PostgreSQL through a deadpool pool; keys in byte order (`COLLATE "C"`) |
//! | your own | implement [`RowStore`] (a secondary) and [`OutboxStore`] (a primary) |
//!
//! Table names are checked ([`TableName`]): a name that is not a plain identifier is a
//! [`DualError::InvalidTable`], never SQL.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower::ServiceExt;
//! use tower_patterns_core::backoff::Backoff;
//! use tower_patterns_strangler::dual::{DualWrite, Reconciler, RowStore, SqliteRows, Write};
//!
//! let dir = tempfile::tempdir()?;
//! let monolith = SqliteRows::open(dir.path().join("monolith.db"), "users")?;
//! let service = SqliteRows::open(dir.path().join("users.db"), "users")?;
//!
//! // The defaults: retries from 100 ms doubling to 30 s, missed after 5 attempts.
//! let dual = DualWrite::builder("users").primary(monolith.clone()).secondary(service.clone()).build()?;
//! let written = dual.clone().oneshot(Write::put_json("user:1", &serde_json::json!({"name": "Ada"}))?).await?;
//! dual.clone().oneshot(Write::delete("user:2")).await?;
//!
//! // The write is on the primary at once, and on the secondary once the worker delivered it.
//! assert_eq!(monolith.get("user:1").await?.unwrap().version, written.version);
//! assert!(dual.handle().wait_idle(Duration::from_secs(5)).await);
//! assert_eq!(service.get("user:1").await?, monolith.get("user:1").await?);
//! assert!(service.get("user:2").await?.unwrap().is_tombstone());
//!
//! // A reconciler compares both tables, and with repair on makes the secondary's rows the
//! // primary's (here there is nothing to repair).
//! let reconciler = Reconciler::builder("users").primary(monolith.clone()).secondary(service.clone())
//!     .repair(true)
//!     .build()?;
//! assert!(reconciler.run_once().await?.is_clean());
//!
//! // Customised: quicker retries, missed after 3 attempts, and a reconciliation every hour.
//! let quick = DualWrite::builder("users-quick")
//!     .primary(monolith.clone())
//!     .secondary(service.clone())
//!     .backoff(Backoff::Exponential { base: Duration::from_millis(20), multiplier: 2.0 }, Duration::from_secs(5))
//!     .missed_after(3)
//!     .batch(500)
//!     .build()?;
//! let hourly = Reconciler::builder("users-hourly").primary(monolith).secondary(service)
//!     .repair(true)
//!     .every(Duration::from_secs(3_600))
//!     .build()?;
//! let task = hourly.spawn();
//! hourly.handle().stop();
//! task.await?;
//! # drop(quick);
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Metrics
//!
//! Labelled `name`, registered at `build()`:
//!
//! | metric | what |
//! |---|---|
//! | `tower_patterns_strangler_dual_applied_total` | rows delivered to the secondary |
//! | `tower_patterns_strangler_dual_superseded_total` | deliveries the secondary already had at that version or newer |
//! | `tower_patterns_strangler_dual_failures_total` | failed deliveries, each deferred with backoff |
//! | `tower_patterns_strangler_dual_missed_total` | writes recorded as missed |
//! | `tower_patterns_strangler_dual_pending` | outbox entries waiting (gauge) |
//! | `tower_patterns_strangler_dual_missed` | outbox entries recorded as missed (gauge) |
//! | `tower_patterns_strangler_dual_reconcile_runs_total` | reconciliations run |
//! | `tower_patterns_strangler_dual_reconcile_differences_total` | differences found, by `kind` (`missing`, `extra`, `differs`) |
//! | `tower_patterns_strangler_dual_reconcile_repaired_total` | differences repaired |
//!
//! # When not to use dual writes
//!
//! - **When one database can serve both sides**: a shared database (or the new service
//!   reading the monolith's through a view) needs no copying at all.
//! - **When the secondary must be up to date at once**: delivery is asynchronous. A read on
//!   the secondary right after a write on the primary may not see it; route a user's reads
//!   to the side that took their writes (the traffic split is sticky for that reason).
//! - **When writes are not whole rows**: dual writes copy a key's latest row. Increments,
//!   appends and cross-row invariants need change data capture or events that each side
//!   applies with its own logic (the CQRS crate's outbox relay).
//! - **For long**: two copies drift in ways a key-value comparison cannot see (derived
//!   columns, triggers). Keep the dual-write phase short, reconcile often, and retire the
//!   old side.

mod error;
mod future;
mod handle;
mod policy;
pub mod reconcile;
mod row;
mod service;
mod store;
mod worker;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod conformance;

pub use error::DualError;
pub use future::ResponseFuture;
pub use handle::{DualStatus, DualWriteHandle};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresRows;
pub use reconcile::{
    Difference, DifferenceKind, ReconcileReport, Reconciler, ReconcilerBuilder, ReconcilerHandle,
};
pub use row::{MAX_KEY_BYTES, MAX_TABLE_NAME, Row, TableName, Write, Written, check_key};
pub use service::{DualWrite, DualWriteBuilder, NoPrimary, NoSecondary};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteRows;
pub use store::{Deferral, MissedWrite, OutboxCounts, OutboxStore, Pending, RowStore};

/// Rows delivered to the secondary.
pub const APPLIED: &str = "tower_patterns_strangler_dual_applied_total";
/// Deliveries the secondary refused as it held that version or a newer one.
pub const SUPERSEDED: &str = "tower_patterns_strangler_dual_superseded_total";
/// Failed deliveries, each deferred with backoff.
pub const FAILURES: &str = "tower_patterns_strangler_dual_failures_total";
/// Writes recorded as missed.
pub const MISSED_TOTAL: &str = "tower_patterns_strangler_dual_missed_total";
/// Outbox entries waiting, as the worker last counted them.
pub const PENDING: &str = "tower_patterns_strangler_dual_pending";
/// Outbox entries recorded as missed, as the worker last counted them.
pub const MISSED: &str = "tower_patterns_strangler_dual_missed";
/// Reconciliations run.
pub const RECONCILE_RUNS: &str = "tower_patterns_strangler_dual_reconcile_runs_total";
/// Differences found by reconciliations, labelled `kind`.
pub const RECONCILE_DIFFERENCES: &str = "tower_patterns_strangler_dual_reconcile_differences_total";
/// Differences repaired by reconciliations.
pub const RECONCILE_REPAIRED: &str = "tower_patterns_strangler_dual_reconcile_repaired_total";
