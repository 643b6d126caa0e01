//! Aggregates on the event store: load, decide, append with optimistic concurrency, retry;
//! snapshots; time travel; commands as a tower `Service`.
//!
//! By role: `model.rs` (what an aggregate is: [`Aggregate`], [`DomainEvent`], [`Loaded`],
//! [`Committed`], [`HistoryEntry`]), `repository.rs` ([`Repository`]: load, fold, execute,
//! snapshots), `command.rs` ([`Command`], [`CommandService`]) and `error.rs`
//! ([`RepositoryError`] and its HTTP mapping).

mod command;
mod error;
mod model;
mod repository;

pub use command::{Command, CommandService};
pub use error::RepositoryError;
pub use model::{Aggregate, Committed, DomainEvent, HistoryEntry, Loaded};
pub use repository::Repository;
