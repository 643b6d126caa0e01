//! The saga index: which sagas are open, and which orchestrator holds each one's lease.
//!
//! The log is the truth of each saga; the index only finds the open ones without reading
//! every log, and hands each to one orchestrator at a time. An orchestrator records a saga
//! here (leased to itself) *before* logging its start, and marks it ended *after* logging its
//! end, so a crash between the two leaves at worst an open entry whose log says more: the
//! next orchestrator to claim it reads the log and settles it.
//!
//! | index | for |
//! |---|---|
//! | [`MemoryIndex`] | tests, and sagas that need not survive the process |
//! | `SqliteIndex` (feature `sqlite`) | one orchestrator process on one machine, beside the SQLite event store |
//! | `PostgresIndex` (feature `postgres`) | several orchestrator processes on one PostgreSQL; claims take rows with `FOR UPDATE SKIP LOCKED` |
//!
//! Times are Unix milliseconds from the orchestrator's clock: the processes sharing an index
//! must agree on the time to well within a lease (NTP does).
//!
//! The orchestrator is the index's only caller; what it asks, by hand:
//!
//! ```
//! use tower_patterns_saga::{SagaId, index::{MemoryIndex, SagaIndex}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_core::BoxError> {
//! let index = MemoryIndex::new();
//! let trip = SagaId::new("trip-42").unwrap();
//! // Started by process "a" at t = 1,000 ms, leased until 31,000.
//! assert!(index.register(&trip, "trip", "a", 1_000, 31_000).await?);
//! // "b" finds nothing to take while the lease holds...
//! assert!(index.claim("b", 20_000, 50_000, 10, false).await?.is_empty());
//! // ...and takes the saga once "a" stopped renewing and the lease expired.
//! let taken = index.claim("b", 31_000, 61_000, 10, false).await?;
//! assert_eq!(taken[0].previous_owner.as_deref(), Some("a"));
//! # Ok(()) }
//! ```

use std::future::Future;

use tower_patterns_core::BoxError;

use crate::{SagaId, SagaStatus};

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryIndex;
#[cfg(feature = "postgres")]
pub use postgres::PostgresIndex;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteIndex;

/// A saga an orchestrator has just leased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The saga.
    pub id: SagaId,
    /// The orchestrator that held it before, if another did (a takeover).
    pub previous_owner: Option<String>,
}

/// One saga as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The saga.
    pub id: SagaId,
    /// Its definition's name.
    pub saga_type: String,
    /// `open` (running or compensating), `stuck`, or the ended status's name.
    pub status: String,
    /// The orchestrator holding its lease, if any.
    pub owner: Option<String>,
    /// When the entry last changed (Unix ms).
    pub updated_ms: u64,
}

/// The index's word for a status: `open` for running and compensating sagas.
pub(crate) const fn status_word(status: SagaStatus) -> &'static str {
    match status {
        SagaStatus::Running | SagaStatus::Compensating => "open",
        other => other.as_str(),
    }
}

/// Where open sagas and their leases are kept; see the [module docs](self).
pub trait SagaIndex: Send + Sync + 'static {
    /// Records a new open saga leased to `owner` until `lease_until`; false (changing
    /// nothing) when `id` is known already.
    fn register(
        &self,
        id: &SagaId,
        saga_type: &str,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send;

    /// Leases to `owner`, until `lease_until`, up to `max` open sagas whose lease has
    /// expired (`lease_until <= now`), oldest lease first; with `reclaim_own`, also those
    /// `owner` holds (a restarted process taking back its sagas at once). A saga is never
    /// handed to two claimers at once.
    fn claim(
        &self,
        owner: &str,
        now: u64,
        lease_until: u64,
        max: usize,
        reclaim_own: bool,
    ) -> impl Future<Output = Result<Vec<Claim>, BoxError>> + Send;

    /// Leases saga `id` to `owner` if it is open or stuck and its lease expired or is
    /// `owner`'s already (an operator's retry); `None` when another holds it.
    fn claim_one(
        &self,
        id: &SagaId,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> impl Future<Output = Result<Option<Claim>, BoxError>> + Send;

    /// Extends `owner`'s leases on the open sagas among `ids` (those it drives); returns the
    /// ones it still holds. A lease not renewed expires, so a saga whose driver is gone is
    /// taken over even when its owner lives on.
    fn renew(
        &self,
        owner: &str,
        ids: &[SagaId],
        now: u64,
        lease_until: u64,
    ) -> impl Future<Output = Result<Vec<SagaId>, BoxError>> + Send;

    /// Records the saga's status: open (running, compensating) keeps the lease; stuck and
    /// ended statuses drop it.
    fn set_status(
        &self,
        id: &SagaId,
        status: SagaStatus,
        now: u64,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Forgets saga `id` (registered by a process that died before it logged the start: the
    /// saga never began, and a retried start registers it anew).
    fn remove(&self, id: &SagaId) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Gives `owner`'s lease on `id` back, so another orchestrator may claim it at once.
    fn release(
        &self,
        id: &SagaId,
        owner: &str,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Up to `max` sagas whose status word is `status` (`open`, `stuck`, `completed`, ...),
    /// least recently changed first.
    fn list(
        &self,
        status: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<IndexEntry>, BoxError>> + Send;
}

#[cfg(test)]
pub(crate) mod conformance;
