//! Event sourcing for tower services (the bank account whose balance is
//! the sum of its history), as the base of CQRS and sagas.
//!
//! - [`EventStore`]: streams with optimistic concurrency ([`ExpectedVersion`]), idempotent
//!   appends by event id, stream reads both ways, one global log in order, [`subscribe`]
//!   (catch up, then live), and the log's [`head`](EventStore::head) and
//!   [`count_after`](EventStore::count_after) for a reader's lag. Stores:
//!   `sqlite::SqliteStore` (the embedded default), `postgres::PostgresStore` (feature
//!   `postgres`; gap-safe global reads) and [`InMemoryStore`].
//! - The envelope: [`EventData`] and [`RecordedEvent`], with a time-ordered id (UUID v7), a
//!   type, a schema version, a JSON payload and [`Metadata`] (correlation, causation, tenant,
//!   recorded at). [`Upcasters`] bring old schema versions up to date on read.
//! - [`Aggregate`] and [`Repository`]: load (snapshot + later events), handle a command,
//!   append with the expected version, retry on conflict; snapshots every N events; the state
//!   as of a version or a moment (time travel) and the full history.
//! - [`CommandService`]: commands as a tower `Service`, so breakers, timeouts, bulkheads and
//!   retries stack on them.
//!
//! # The global log: what can hold a reader back
//!
//! A reader of the global log ([`read_all`](EventStore::read_all), [`subscribe`], a CQRS
//! projection) never skips an event: once it has passed a position, nothing appears before it.
//! On SQLite and in memory one writer numbers events in commit order, so nothing ever waits. On
//! PostgreSQL many transactions append at once and may commit out of order, so a reader stops
//! before the first place an append still under way may fill (the gate). Only appends to the
//! event store can hold readers back, for as long as their transaction stays open: an
//! `append_in` inside a long transaction of the caller delays every later event until it
//! commits or rolls back. Open transactions in other databases of the cluster, or in the
//! store's database without an append (a batch job, a report), do not. Each append announces
//! itself with shared advisory locks before it takes its number from a sequence, and a reader
//! looks at those locks before it takes its snapshot (the reasoning is in the `postgres`
//! module's `schema.rs`). A PostgreSQL position's `commit` is that append number.
//!
//! # Errors and HTTP
//!
//! [`Error`] and [`RepositoryError`] implement core's `IntoErrorResponse`, registered when a
//! store ([`InMemoryStore::new`], `SqliteStore::open`, `PostgresStore::connect`) or a
//! [`Repository`] is built, so core's `classify_error`, `error_response` and
//! `ErrorResponseLayer` answer a lost optimistic-concurrency race (an append's
//! `WrongExpectedVersion`, or a repository whose retries all lost) with `409 Conflict`
//! "concurrent update", clashing event ids with `409` "conflicting event ids", a command the
//! aggregate refused with `422` "command refused", and everything else (a corrupt event, a
//! backend failure) with `500`.
//!
//! # No state handle
//!
//! The stores and repositories hold no state worth a health report: the truth is in the
//! database, and a [`subscribe`] stream's position belongs to its consumer, which must store
//! the position of the last event it handled anyway (delivery is at-least-once across
//! restarts); a handle would only repeat that number.
//!
//! ```
//! use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_eventstore::Error> {
//! let store = InMemoryStore::new();
//! let opened = EventData::json("Opened", &serde_json::json!({ "owner": "ada" }))?;
//! store.append("account-1", ExpectedVersion::NoStream, vec![opened]).await?;
//! let deposit = EventData::json("Deposited", &serde_json::json!({ "amount": 100 }))?;
//! store.append("account-1", ExpectedVersion::Exact(1), vec![deposit]).await?;
//!
//! // A stale writer loses: it expected version 1.
//! let late = EventData::json("Deposited", &serde_json::json!({ "amount": 5 }))?;
//! let err = store.append("account-1", ExpectedVersion::Exact(1), vec![late]).await.unwrap_err();
//! assert!(err.is_conflict());
//!
//! let log = store.read_all(GlobalPosition::START, 10).await?;
//! assert_eq!(log.len(), 2);
//! // A reader that has handled the first event is one behind the head.
//! assert_eq!(store.head().await?.map(|e| e.position), Some(log[1].position));
//! assert_eq!(store.count_after(log[0].position, 1_000).await?, 1);
//! # Ok(()) }
//! ```

mod aggregate;
mod decode;
mod error;
mod event;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
mod upcast;

pub use aggregate::{
    Aggregate, Command, CommandService, Committed, DomainEvent, HistoryEntry, Loaded, Repository,
    RepositoryError,
};
pub use error::Error;
pub use event::{
    AppendResult, EventData, ExpectedVersion, GlobalPosition, Metadata, RecordedEvent, Snapshot,
};
pub use memory::InMemoryStore;
pub use store::{Direction, EventStore, subscribe};
pub use upcast::{Upcaster, Upcasters};
