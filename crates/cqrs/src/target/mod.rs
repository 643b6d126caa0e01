//! Where a projection's effects and checkpoint live: one internal interface that the runner
//! drives, implemented for a SQLite read model (`sqlite.rs`), a PostgreSQL read model with the
//! one-runner lease (`postgres.rs`) and an external effect with a separate checkpoint store
//! (`external.rs`).
//!
//! A *slot* is one copy of the read model: the live one, or the one a rebuild fills. Each slot
//! has its own checkpoint row (`name` for the live copy, `name#rebuild` for a rebuild) and its
//! own tables (`Tables` with the slot's version).

// The items are `pub` inside this private module: a sealed trait that `build()` can name in
// its bounds without exposing it.
#![allow(unreachable_pub)]

use std::future::Future;

use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use crate::projection::{ApplyError, ProjectionError, Tables};

pub(crate) mod external;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// One copy of the read model.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The checkpoint row's name: the projection's name, or `name#rebuild`.
    pub checkpoint: String,
    /// The tables of this copy.
    pub tables: Tables,
}

/// A stored checkpoint: where a slot has applied up to, and which table version is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub position: GlobalPosition,
    pub version: u32,
}

/// What `apply` did with a batch.
#[derive(Debug)]
pub struct Applied {
    /// How many events from the front of the batch were applied and checkpointed (committed).
    pub count: usize,
    /// The error of event `count`, which was rolled back (with nothing after it applied);
    /// `None` when the whole batch was applied.
    pub failed: Option<ApplyError>,
}

/// The operations the runner needs from a target. Every method that writes checks the slot's
/// stored checkpoint against `expected` in the same transaction (compare-and-set) and fails
/// with [`ProjectionError::Fenced`] when another runner moved it: two runners can never both
/// apply an event in the same-transaction modes.
pub trait Target: Send + 'static {
    /// Waits until this process may drive the projection (the PostgreSQL lease); other targets
    /// return `Ok(())` at once. Called before `open` and again after `Fenced` or a lost
    /// connection.
    fn acquire(&mut self, name: &str) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// The slot's checkpoint, creating the checkpoint row (at `GlobalPosition::START`,
    /// version `tables.version()`) and the slot's tables (the projection's `create`) when
    /// missing.
    fn open(&mut self, slot: &Slot)
    -> impl Future<Output = Result<Stored, ProjectionError>> + Send;

    /// Applies `events` in order in one transaction and stores the checkpoint of the last one
    /// applied in the same transaction. On the first failing event, rolls that event back
    /// (a savepoint), commits those before it, and reports the error.
    fn apply(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<Applied, ProjectionError>> + Send;

    /// Records `event` in the dead-letter table with `error` and the attempts made, and moves
    /// the slot's checkpoint past it, in one transaction.
    fn dead_letter(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        event: &RecordedEvent,
        error: &ApplyError,
        attempts: u32,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Makes `rebuilt` the live copy: the live checkpoint row takes the rebuilt one's
    /// position and version, the rebuild row is deleted (or reset) and the old tables are
    /// dropped. Only called when both slots stand at the same position.
    ///
    /// The SQLite and PostgreSQL targets do all of it in one transaction. The external
    /// target has no tables and its [`CheckpointStore`](crate::CheckpointStore) writes one
    /// checkpoint at a time, so it writes two in turn: the live checkpoint first (the swap
    /// is then made), then the rebuild's reset. A crash between the two leaves only the
    /// rebuild's row, which the next start discards as it discards any interrupted rebuild.
    fn swap(
        &mut self,
        live: &Slot,
        rebuilt: &Slot,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Drops the tables of an abandoned rebuild and its checkpoint row. The SQL targets
    /// refuse, in the same transaction, to drop a version the live checkpoint row holds
    /// (another runner swapped it in): [`ProjectionError::Fenced`], and the runner reloads.
    fn discard(&mut self, slot: &Slot) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}
