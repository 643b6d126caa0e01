//! Checkpoints kept apart from the effect they track: for external projections and the
//! outbox relay, on SQLite, PostgreSQL or in memory.
//!
//! A [`CheckpointStore`] keeps, per name, the position of the last event handled and the live
//! version of the read model. Every write is a compare-and-set, so a runner that lost its turn
//! stores nothing. [`MemoryCheckpoints`] starts from scratch each run;
//! `SqliteCheckpoints` (a file, or a connection shared with other code) and `PostgresCheckpoints`
//! (feature `postgres`) survive restarts and keep the dead letters too.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//!
//! use tower_patterns_cqrs::{
//!     ApplyError, ExternalProjection, Projection,
//!     checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpoints, SqliteCheckpoints},
//! };
//! use tower_patterns_eventstore::{
//!     EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore, RecordedEvent,
//! };
//!
//! /// Sends each event to a search service (here: nowhere).
//! struct SearchIndex;
//!
//! impl ExternalProjection for SearchIndex {
//!     async fn apply(&self, _event: &RecordedEvent) -> Result<(), ApplyError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(InMemoryStore::new());
//! let appended = store
//!     .append("product-1", ExpectedVersion::Any, vec![EventData::json("Created", &"lamp")?])
//!     .await?;
//! let position = appended.positions[0];
//!
//! // In memory: the projection starts from the beginning of the log each run.
//! let (handle, task) = Projection::builder("search_scratch")
//!     .source(store.clone())
//!     .external(MemoryCheckpoints::new(), SearchIndex)
//!     .build()?
//!     .spawn();
//! assert!(handle.wait_for(position, Duration::from_secs(5)).await);
//! handle.shutdown();
//! task.await??;
//!
//! // In SQLite (`SqliteCheckpoints::open(path)` in an application): a restart goes on
//! // from the stored checkpoint.
//! let checkpoints = SqliteCheckpoints::in_memory()?;
//! let (handle, task) = Projection::builder("search")
//!     .source(store.clone())
//!     .external(checkpoints.clone(), SearchIndex)
//!     .build()?
//!     .spawn();
//! assert!(handle.wait_for(position, Duration::from_secs(5)).await);
//! handle.shutdown();
//! task.await??;
//! let stored = Checkpoint { position, version: 1 };
//! assert_eq!(checkpoints.load("search").await?, Some(stored));
//!
//! // A write that expects another checkpoint than the stored one stores nothing.
//! let later = GlobalPosition::new(position.commit, position.index + 1);
//! let moved = Checkpoint { position: later, version: 1 };
//! assert!(!checkpoints.save("search", Checkpoint::default(), moved).await?);
//! assert!(checkpoints.save("search", stored, moved).await?);
//! # Ok(())
//! # }
//! ```

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tower_patterns_core::BoxError;
use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteCheckpoints;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::PostgresCheckpoints;

/// A stored checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The position of the last event handled.
    pub position: GlobalPosition,
    /// The live version of the read model's tables (1 before any rebuild).
    pub version: u32,
}

/// Where checkpoints of effects outside their database are kept. Every write is a
/// compare-and-set on the stored position, so a runner that lost its turn cannot move a
/// checkpoint another runner owns.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint named `name`, if stored.
    fn load(&self, name: &str)
    -> impl Future<Output = Result<Option<Checkpoint>, BoxError>> + Send;

    /// Stores `new` for `name` if the stored checkpoint is `expected` (no row counts as
    /// `Checkpoint::default()`); returns false, storing nothing, when it is not.
    fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send;

    /// Records `event` as a dead letter of `name` (with the error and the attempts made),
    /// then stores `new` as [`save`](Self::save) does, in one write where the store can.
    fn dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send;
}

/// A dead letter as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The projection (or relay) that set it aside.
    pub name: String,
    /// The event's position.
    pub position: GlobalPosition,
    /// The event's stream.
    pub stream: String,
    /// The event's version in its stream.
    pub version: u64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's type.
    pub event_type: String,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Checkpoints in memory: for tests, and effects that start from scratch each run.
#[derive(Clone, Debug, Default)]
pub struct MemoryCheckpoints {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    checkpoints: HashMap<String, Checkpoint>,
    dead: Vec<DeadLetter>,
}

impl MemoryCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dead letters recorded so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cas(inner: &mut Inner, name: &str, expected: Checkpoint, new: Checkpoint) -> bool {
        let stored = inner.checkpoints.get(name).copied().unwrap_or_default();
        if stored != expected {
            return false;
        }
        inner.checkpoints.insert(name.to_owned(), new);
        true
    }
}

impl CheckpointStore for MemoryCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, BoxError> {
        Ok(self.lock().checkpoints.get(name).copied())
    }

    async fn save(
        &self,
        name: &str,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        Ok(Self::cas(&mut self.lock(), name, expected, new))
    }

    async fn dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<bool, BoxError> {
        let mut inner = self.lock();
        if !Self::cas(&mut inner, name, expected, new) {
            return Ok(false);
        }
        inner.dead.push(DeadLetter {
            name: name.to_owned(),
            position: event.position,
            stream: event.stream_id.clone(),
            version: event.version,
            event_id: event.id,
            event_type: event.event_type.clone(),
            error: error.to_owned(),
            attempts,
        });
        Ok(true)
    }
}
