//! Projections: read models kept by the event store's global log, checkpointed.
//!
//! A [`Projection`] follows the log from its checkpoint and applies each event to a read
//! model: a `SqliteProjection` or `PostgresProjection` (feature `postgres`) writes the
//! model and the checkpoint in one transaction (each event takes effect once), an
//! [`ExternalProjection`] is delivered at least once. Its [`ProjectionHandle`] waits for a position (read your writes), shows the
//! status and the lag, resumes a stopped projection and rebuilds the model into fresh tables.
//!
//! The number of events of each stream, as a SQLite read model, with the default settings and
//! with a customised batch and failure policy; then a rebuild:
//!
//! ```
//! use std::{sync::{Arc, Mutex}, time::Duration};
//!
//! use rusqlite::{Connection, Transaction};
//! use tower_patterns_cqrs::projection::{
//!     ApplyError, Exhausted, FailurePolicy, Projection, SqliteProjection, Status, Tables,
//! };
//! use tower_patterns_eventstore::{
//!     EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent,
//! };
//!
//! /// Events per stream.
//! struct StreamSizes;
//!
//! impl SqliteProjection for StreamSizes {
//!     fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
//!         let sizes = t.name("sizes");
//!         tx.execute_batch(&format!(
//!             "CREATE TABLE {sizes} (stream TEXT PRIMARY KEY, events INTEGER NOT NULL)"
//!         ))?;
//!         Ok(())
//!     }
//!
//!     fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
//!         tx.execute(
//!             &format!(
//!                 "INSERT INTO {} VALUES (?1, 1) \
//!                  ON CONFLICT (stream) DO UPDATE SET events = events + 1",
//!                 t.name("sizes")
//!             ),
//!             [&e.stream_id],
//!         )?;
//!         Ok(())
//!     }
//! }
//!
//! fn size(db: &Mutex<Connection>, t: &Tables, stream: &str) -> rusqlite::Result<i64> {
//!     let sql = format!("SELECT events FROM {} WHERE stream = ?1", t.name("sizes"));
//!     db.lock().unwrap().query_row(&sql, [stream], |row| row.get(0))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(InMemoryStore::new());
//! let db = Arc::new(Mutex::new(Connection::open_in_memory()?));
//! // The defaults: 256 events per transaction; an event that fails is tried 10 times, then
//! // the projection stops before it.
//! let (sizes, sizes_task) = Projection::builder("stream_sizes")
//!     .source(store.clone())
//!     .sqlite_connection(db.clone(), StreamSizes)
//!     .build()?
//!     .spawn();
//! // Customised: smaller transactions, and an event that fails 3 times is set aside as a
//! // dead letter so the projection goes on.
//! let (audit, audit_task) = Projection::builder("audit")
//!     .source(store.clone())
//!     .sqlite_connection(db.clone(), StreamSizes)
//!     .batch(16)
//!     .policy(FailurePolicy::retry(3).then(Exhausted::DeadLetter))
//!     .build()?
//!     .spawn();
//!
//! let events = vec![EventData::json("Created", &"lamp")?, EventData::json("Priced", &1999)?];
//! let appended = store.append("product-1", ExpectedVersion::Any, events).await?;
//! let last = appended.positions[1];
//! assert!(sizes.wait_for(last, Duration::from_secs(5)).await);
//! assert!(audit.wait_for(last, Duration::from_secs(5)).await);
//! assert_eq!(size(&db, &sizes.tables(), "product-1")?, 2);
//!
//! // A rebuild fills the next version of the tables from the start of the log, then swaps
//! // it in; readers ask the handle which tables are live.
//! sizes.rebuild();
//! sizes.wait_for_status(Duration::from_secs(5), |_| sizes.tables().version() == 2).await;
//! assert_eq!(sizes.tables(), Tables::new("stream_sizes", 2));
//! assert_eq!(size(&db, &sizes.tables(), "product-1")?, 2);
//!
//! sizes.shutdown();
//! audit.shutdown();
//! sizes_task.await??;
//! audit_task.await??;
//! assert_eq!(sizes.status(), Status::ShutDown);
//! # Ok(())
//! # }
//! ```

use std::{error::Error as StdError, fmt, future::Future, sync::Arc};

use tower_patterns_core::BoxError;
use tower_patterns_eventstore::RecordedEvent;

mod builder;
mod error;
mod handle;
mod policy;
pub(crate) mod runner;

pub use builder::{NoSource, NoTarget, Projection, ProjectionBuilder, Source};
pub use error::ProjectionError;
pub use handle::{Lag, ProjectionHandle, Status};
pub use policy::{Action, Exhausted, FailurePolicy};

pub use crate::target::external::ExternalTarget;
#[cfg(feature = "postgres")]
pub use crate::target::postgres::PostgresTarget;
#[cfg(feature = "sqlite")]
pub use crate::target::sqlite::{SqliteTarget, sqlite_reader};

/// The names of one copy of a read model's tables.
///
/// A projection names every table it creates or writes through [`Tables::name`], so a rebuild
/// can fill a fresh copy (the next version) beside the live one and swap them in one
/// transaction. Readers ask the projection's handle ([`ProjectionHandle::tables`]) or, from
/// another process, the checkpoint row, for the live version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    projection: Arc<str>,
    version: u32,
}

impl Tables {
    /// The tables of version `version` of projection `projection` (a name of lowercase
    /// ASCII letters, digits and `_`, at most 32 bytes, checked by the projection's
    /// builder).
    pub fn new(projection: impl Into<Arc<str>>, version: u32) -> Self {
        Self {
            projection: projection.into(),
            version,
        }
    }

    /// The physical name of table `table` in this copy: `{projection}_v{version}_{table}`.
    ///
    /// PostgreSQL cuts identifiers at 63 bytes and folds unquoted ones to lowercase: keep
    /// `table` lowercase and within 18 bytes (what a 32-byte projection name and a 10-digit
    /// version leave), so every copy's names stay distinct and start with its prefix.
    pub fn name(&self, table: &str) -> String {
        format!("{}_v{}_{}", self.projection, self.version, table)
    }

    /// The prefix every table of this copy starts with: `{projection}_v{version}_`.
    pub fn prefix(&self) -> String {
        format!("{}_v{}_", self.projection, self.version)
    }

    /// The projection's name.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// This copy's version (1 for the first build, one more per rebuild).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tables of the next version (what a rebuild fills).
    #[must_use]
    pub fn next(&self) -> Self {
        Self::new(self.projection.clone(), self.version + 1)
    }
}

/// Whether trying again may help: an [`ApplyError`]'s kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyErrorKind {
    /// It may pass on a later attempt (a busy database, a lost connection, a deadlock).
    Transient,
    /// It will fail again (an event that does not decode, a constraint the event breaks):
    /// a retry policy gives up on it at once.
    Permanent,
}

/// Why a projection could not apply an event.
#[derive(Debug)]
pub struct ApplyError {
    kind: ApplyErrorKind,
    source: BoxError,
}

impl ApplyError {
    /// An error that may pass on a later attempt.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ApplyErrorKind::Transient,
            source: source.into(),
        }
    }

    /// An error that will not pass by trying again.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ApplyErrorKind::Permanent,
            source: source.into(),
        }
    }

    /// Whether trying again may help.
    pub fn kind(&self) -> ApplyErrorKind {
        self.kind
    }

    /// True when trying again may help.
    pub fn is_transient(&self) -> bool {
        self.kind == ApplyErrorKind::Transient
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        // tokio-postgres shows a refusal of the server as "db error" alone; a dead letter's
        // text is what an operator reads, so it says what the server said.
        #[cfg(feature = "postgres")]
        if let Some(db) = self
            .source
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            write!(f, ": {} (SQLSTATE {})", db.message(), db.code().code())?;
        }
        Ok(())
    }
}

impl StdError for ApplyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// An event that does not decode will not decode next time: permanent.
impl From<tower_patterns_eventstore::Error> for ApplyError {
    fn from(e: tower_patterns_eventstore::Error) -> Self {
        Self::permanent(e)
    }
}

/// Busy and locked databases are transient; everything else is permanent.
#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        if sqlite_transient(&e) {
            Self::transient(e)
        } else {
            Self::permanent(e)
        }
    }
}

/// Whether a SQLite error may pass on a later attempt: a busy or locked database.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked))
}

/// Whether a PostgreSQL error may pass on a later attempt: no answer from the server, or
/// SQLSTATE class 08, 40, 53 or 57.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(&code.code()[..2], "08" | "40" | "53" | "57"),
    }
}

/// Lost connections, serialization failures, deadlocks and lack of resources are transient
/// (SQLSTATE classes 08, 40, 53, 57); everything else is permanent.
#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        if postgres_transient(&e) {
            Self::transient(e)
        } else {
            Self::permanent(e)
        }
    }
}

/// A read model in a SQLite database: its effects and its checkpoint are written in one
/// transaction, so each event takes effect exactly once.
#[cfg(feature = "sqlite")]
pub trait SqliteProjection: Send + Sync + 'static {
    /// Creates this copy's tables (named through `tables`). Runs once per copy, in the
    /// transaction that creates its checkpoint row.
    ///
    /// # Errors
    ///
    /// Any error of the database; the projection does not start.
    fn create(&self, tx: &rusqlite::Transaction<'_>, tables: &Tables) -> Result<(), ApplyError>;

    /// Applies one event (an event of a type it does not handle is ignored by returning
    /// `Ok`).
    ///
    /// # Errors
    ///
    /// An [`ApplyError`]: its projection's [`FailurePolicy`] decides what follows.
    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;
}

/// A read model in a PostgreSQL database: its effects and its checkpoint are written in one
/// transaction, so each event takes effect exactly once.
#[cfg(feature = "postgres")]
pub trait PostgresProjection: Send + Sync + 'static {
    /// Creates this copy's tables (named through `tables`).
    ///
    /// # Errors
    ///
    /// Any error of the database; the projection does not start.
    fn create(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        tables: &Tables,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Applies one event (an event of a type it does not handle is ignored by returning
    /// `Ok`).
    ///
    /// # Errors
    ///
    /// An [`ApplyError`]: its projection's [`FailurePolicy`] decides what follows.
    fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Applies a batch of events, in log order, in one transaction: by default
    /// [`apply`](Self::apply) for each in turn, one round trip (or more) per event.
    ///
    /// Override it to pipeline the batch: prepare the statements once, then send every
    /// event's statement without waiting for the one before (tokio-postgres sends requests in
    /// the order their futures are first polled, and the server runs them in that order). The
    /// product catalog's read model does this (`examples/catalog/model.rs`); it is what makes
    /// a catch-up several times faster than a round trip per event.
    ///
    /// An override must send each event's statements in log order. The server runs them in
    /// that order, so a statement may read what an earlier one wrote; what a pipeline cannot
    /// do is decide in Rust, from one statement's result, what to send next (keep the default
    /// for such a model, or move the decision into SQL).
    ///
    /// # Errors
    ///
    /// `(k, error)` when `events[k]` failed, `k` the first that did: the runner rolls the
    /// transaction back, applies `events[..k]` again and commits them with the checkpoint,
    /// and `error` goes to the projection's [`FailurePolicy`].
    fn apply_batch(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), (usize, ApplyError)>> + Send {
        async move {
            for (k, event) in events.iter().enumerate() {
                self.apply(tx, tables, event).await.map_err(|e| (k, e))?;
            }
            Ok(())
        }
    }
}

/// An effect outside the checkpoint's database (a search service, a cache, a bus): delivered
/// at least once, so the effect drops repeats itself, with an [`Inbox`](crate::inbox) or by
/// being idempotent.
pub trait ExternalProjection: Send + Sync + 'static {
    /// Applies one event.
    ///
    /// # Errors
    ///
    /// An [`ApplyError`]: its projection's [`FailurePolicy`] decides what follows.
    fn apply(&self, event: &RecordedEvent) -> impl Future<Output = Result<(), ApplyError>> + Send;
}
