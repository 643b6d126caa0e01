//! CQRS for tower services: read models kept by checkpointed projections of the event store's
//! global log, a layer that sends commands to the write side and queries to the read side, and
//! an event bus (in process, or NATS JetStream through a transactional outbox).
//!
//! The guide, with the trade-offs (when *not* to use CQRS), the guarantees and the tests that
//! back them, is `docs/patterns/cqrs.md`; the product catalog and the photo feed are complete
//! examples (`examples/catalog`, `examples/feed`).
//!
//! # The parts
//!
//! - **Projections** ([`Projection`]): a runner follows the global log from its checkpoint and
//!   applies each event to a read model. A `SqliteProjection` or `PostgresProjection` (feature
//!   `postgres`) writes the model and its checkpoint in one transaction, 256 events at a time:
//!   each event takes effect exactly once. An [`ExternalProjection`] (a search service, a
//!   cache, a bus) is delivered at least once and drops repeats with the [`inbox`]. A
//!   [`FailurePolicy`] per projection retries with backoff, dead-letters or stops; one failing
//!   projection never holds up another. [`ProjectionHandle`] shows the position, status and
//!   lag, waits for a position (read your writes), resumes, rebuilds (fresh tables from
//!   position 0, then a swap in one transaction) and shuts down.
//! - **One runner per projection** on PostgreSQL: a session advisory lock on a connection the
//!   runner owns, standbys taking over from the checkpoint when the holder dies, and a
//!   compare-and-set checkpoint that fences a holder that lost the lock without noticing.
//! - **The layer** ([`layer::CqrsLayer`]): commands to an aggregate's `CommandService`, queries
//!   to the read side, classified by a closure or by HTTP method and route; a command answers
//!   with the global position it reached (`tp-position: v1.<commit>.<index>` over HTTP).
//! - **The bus** ([`bus`]): `LocalBus` in process; with feature `nats`, `OutboxRelay` (the log
//!   is the outbox, published with the event id as `Nats-Msg-Id`) and `JetStreamConsumer`
//!   (durable, acked after handling, `max_deliver`, a dead-letter subject).
//!
//! # Example
//!
//! The product catalog's prices as a read model in SQLite (in memory here; give a file path
//! to `ProjectionBuilder::sqlite` in an application), following an event store:
//!
//! ```
//! use std::{sync::{Arc, Mutex}, time::Duration};
//!
//! use rusqlite::{Connection, Transaction, params};
//! use tower_patterns_cqrs::{ApplyError, Projection, SqliteProjection, Tables};
//! use tower_patterns_eventstore::{
//!     EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent,
//! };
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum ProductEvent {
//!     PriceUpdated { id: String, price_cents: i64 },
//! }
//!
//! /// The price of each product, as the catalog shows it.
//! struct Prices;
//!
//! impl SqliteProjection for Prices {
//!     fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
//!         let prices = t.name("prices"); // through Tables, so a rebuild fills a fresh copy
//!         tx.execute_batch(&format!("CREATE TABLE {prices} (id TEXT PRIMARY KEY, cents INTEGER)"))?;
//!         Ok(())
//!     }
//!
//!     fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
//!         // An event that does not decode is a permanent ApplyError naming stream, version and
//!         // position: the failure policy decides what follows.
//!         let ProductEvent::PriceUpdated { id, price_cents } = e.decode()?;
//!         tx.execute(
//!             &format!("INSERT OR REPLACE INTO {} VALUES (?1, ?2)", t.name("prices")),
//!             params![id, price_cents],
//!         )?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(InMemoryStore::new());
//! let db = Arc::new(Mutex::new(Connection::open_in_memory()?));
//! let (handle, _task) = Projection::builder("catalog_prices")
//!     .source(store.clone())
//!     .sqlite_connection(db.clone(), Prices)
//!     .build()?
//!     .spawn();
//!
//! // The write side appends (in an application: a command through the CQRS layer, which
//! // answers with this position).
//! let event = ProductEvent::PriceUpdated { id: "p1".into(), price_cents: 1999 };
//! let appended = store
//!     .append("product-p1", ExpectedVersion::Any, vec![EventData::json("PriceUpdated", &event)?])
//!     .await?;
//!
//! // Read your write: wait until the read model has applied that position, then query it.
//! assert!(handle.wait_for(appended.positions[0], Duration::from_secs(5)).await);
//! let prices = handle.tables().name("prices");
//! let cents: i64 = db.lock().unwrap().query_row(
//!     &format!("SELECT cents FROM {prices} WHERE id = 'p1'"),
//!     [],
//!     |row| row.get(0),
//! )?;
//! assert_eq!(cents, 1999);
//! assert_eq!(handle.lag().await?.events, 0);
//! handle.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Registered when a projection, layer, relay or consumer is built, so they show at zero.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_patterns_cqrs_applied_total` | counter | `name` |
//! | `tower_patterns_cqrs_retries_total` | counter | `name` |
//! | `tower_patterns_cqrs_dead_letters_total` | counter | `name` |
//! | `tower_patterns_cqrs_lag_events` | gauge | `name` |
//! | `tower_patterns_cqrs_lag_seconds` | gauge | `name` |
//! | `tower_patterns_cqrs_commands_total`, `_queries_total`, `_command_errors_total` | counter | `name` (the layer) |
//! | `tower_patterns_cqrs_outbox_*`, `tower_patterns_cqrs_consumer_*` | see [`bus`] | `name` |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
pub mod checkpoint;
pub mod inbox;
pub mod layer;
mod metrics;
pub mod projection;
mod target;

pub use checkpoint::{Checkpoint, CheckpointStore, DeadLetter, MemoryCheckpoints};
#[cfg(feature = "postgres")]
pub use projection::PostgresProjection;
#[cfg(feature = "sqlite")]
pub use projection::SqliteProjection;
pub use projection::{
    ApplyError, Exhausted, ExternalProjection, FailurePolicy, Lag, Projection, ProjectionBuilder,
    ProjectionError, ProjectionHandle, Status, Tables,
};
