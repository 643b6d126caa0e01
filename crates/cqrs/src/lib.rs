//! CQRS for tower services: read models kept by checkpointed projections of the event store's
//! global log, a layer that sends commands to the write side and queries to the read side, and
//! an event bus (in process, or NATS JetStream through a transactional outbox).
//!
//! (The full guide, with a runnable example, is written last: see `docs/patterns/cqrs.md`.)
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_patterns_cqrs_applied_total` | counter | `name` |
//! | `tower_patterns_cqrs_retries_total` | counter | `name` |
//! | `tower_patterns_cqrs_dead_letters_total` | counter | `name` |
//! | `tower_patterns_cqrs_lag_events` | gauge | `name` |
//! | `tower_patterns_cqrs_lag_seconds` | gauge | `name` |

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
    ApplyError, ExternalProjection, FailurePolicy, Lag, Projection, ProjectionBuilder,
    ProjectionError, ProjectionHandle, Status, Tables,
};
