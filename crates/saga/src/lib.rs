//! Sagas for tower services: transactions across services without distributed locks, each
//! step undone by a compensating transaction when a later one fails. Both kinds:
//!
//! - **Orchestration** ([`Orchestrator`]): a [`SagaDefinition`] lists the steps in order (and
//!   parallel branches); each [`Step`] has an action and a compensation, both tower
//!   `Service`s, so breakers, retries, timeouts and bulkheads stack on a step as on any call.
//!   The orchestrator logs every transition ([`SagaEvent`]) in the saga's stream of the event
//!   store *before* the call it announces, so a crashed orchestrator's successor resumes each
//!   saga from its log, and every call carries an [`IdempotencyKey`] that stays the same
//!   across retries and restarts.
//! - **Choreography** ([`choreography`]): no coordinator; each service reacts to the event of
//!   the one before and answers with its own, and failure events run the compensations back.
//!
//! # What an orchestrated saga guarantees
//!
//! - **It ends.** `Completed` (every step succeeded), `Compensated` (a step failed and every
//!   step that had begun and has a compensation was undone, newest first), `Failed` (a step
//!   failed and no compensation had to run: no step with one had begun), or `Stuck`: a
//!   compensation failed on every attempt, and an operator [retries](Orchestrator::retry) or
//!   [resolves](Orchestrator::resolve) it, with who and why in the log
//!   ([`Orchestrator::stuck`] lists them). Never retrying for ever, never silently half-done.
//!   A step without a compensation (a notification) is never undone: put such steps last.
//! - **Each effect once**, provided the services honour the key: a step re-run after a crash
//!   or a timeout is sent under the same key. A step whose outcome stayed unknown (a timeout,
//!   a lost connection, retries exhausted) is compensated too: a compensation must accept an
//!   action that never took effect. A [`StepError`] is a definite "no" (no effect): not
//!   retried, not compensated.
//! - **Deadlines are durable**: a saga's deadline is in its log; passing it compensates the
//!   saga, also after a restart, and is ignored once the saga ended.
//! - **One driver at a time**: the index leases each open saga to one orchestrator
//!   ([`index`]); several processes on one PostgreSQL share the sagas, and a dead process's
//!   sagas are taken over when its lease expires. A driver stops, dropping its calls in
//!   flight, when a renewal finds its lease taken or when renewals have failed for two thirds
//!   of a lease; every append expects the log's version, so a transition written by a
//!   process that lost its lease is refused. What this cannot stop is a process frozen
//!   (stopped, swapping) longer than its lease with a call in flight: that call may overlap
//!   the next driver's, under the same idempotency key, which the service must honour.
//!
//! # Example
//!
//! The trip booking: flight, hotel, payment. The payment is refused, so the hotel and then the
//! flight are cancelled.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use serde_json::{json, Value};
//! use tower::service_fn;
//! use tower_patterns_core::BoxError;
//! use tower_patterns_eventstore::InMemoryStore;
//! use tower_patterns_saga::{
//!     Attempts, Orchestrator, SagaDefinition, SagaId, SagaStatus, Step, StepError, StepRequest,
//!     index::MemoryIndex,
//! };
//! use tower_patterns_core::backoff::Backoff;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A service answering every call with its step's name; the payment refuses.
//! let ok = || service_fn(|r: StepRequest| async move { Ok::<_, BoxError>(json!({ "booked": &*r.step })) });
//! let refuse = service_fn(|_: StepRequest| async { Err::<Value, BoxError>(StepError::refused("card declined").into()) });
//!
//! let trip = SagaDefinition::builder("trip")
//!     .step(Step::new("flight", ok()).compensate_with(ok()).timeout(Duration::from_secs(5)))
//!     .step(
//!         Step::new("hotel", ok())
//!             .compensate_with(ok())
//!             // Errors of unknown outcome: three attempts under one key, then compensate.
//!             .retry(Attempts::new(3, Backoff::Exponential { base: Duration::from_millis(100), multiplier: 2.0 })),
//!     )
//!     .step(Step::new("payment", refuse).failure_reason("payment failed"))
//!     .deadline(Duration::from_secs(60))
//!     .build()?;
//!
//! // The log on the event store (SqliteStore or PostgresStore in production).
//! let orchestrator = Orchestrator::builder("bookings")
//!     .store(Arc::new(InMemoryStore::new()))
//!     .index(MemoryIndex::new())
//!     .saga(trip)
//!     .build()?;
//! let outcome = orchestrator.run("trip", SagaId::new("booking-42").unwrap(), json!({ "who": "ada" })).await?;
//! assert_eq!(outcome.status, SagaStatus::Compensated);
//! assert_eq!(outcome.reason.as_deref(), Some("payment failed"));
//!
//! // The timeline, from the log.
//! for entry in orchestrator.history(&outcome.id).await? {
//!     println!("{}", entry.event.describe());
//! }
//! # Ok(()) }
//! ```
//!
//! In production: `SqliteStore` with `index::SqliteIndex` (feature `sqlite`) for one process,
//! `PostgresStore` with `index::PostgresIndex` (feature `postgres`) for several; a stable
//! [`owner`](OrchestratorBuilder::owner) name per process, [`recover`](Orchestrator::recover)
//! at start-up, and [`spawn_worker`](Orchestrator::spawn_worker) to take over the sagas of
//! processes that died. [`Orchestrator::service`] makes a saga type a tower `Service`.
//!
//! # Errors and HTTP
//!
//! [`SagaError`] implements core's `IntoErrorResponse` (registered when an orchestrator or a
//! choreography is built): `404` "saga not found", `409` "saga not stuck" / "saga busy", `400`
//! "invalid saga", and `503` "saga log unavailable" when the log or the index fails.
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_patterns_saga_ended_total` | counter | `name`, `saga`, `outcome` |
//! | `tower_patterns_saga_resumed_total` | counter | `name` |
//!
//! The [`OrchestratorHandle`] (pattern `saga`) reports this process's counts.
//!
//! # When not to use a saga
//!
//! When one database can hold the whole change in one ACID transaction, use the transaction;
//! when a step cannot be undone at all (an e-mail sent, money paid out), put it last; when a
//! reader must never see the half-done state, a saga is the wrong tool: its steps are visible
//! as they commit.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod choreography;
mod definition;
mod error;
pub mod index;
mod log;
pub mod metrics;
mod orchestrator;
mod policy;
mod state;
mod step;

pub use definition::{Attempts, SagaDefinition, SagaDefinitionBuilder, Step, StepService};
pub use error::SagaError;
pub use log::SagaEvent;
pub use orchestrator::{
    LoggedEvent, NoIndex, NoStore, Orchestrator, OrchestratorBuilder, OrchestratorHandle,
    SagaService, StartSaga, StuckSaga,
};
pub use state::{Outcome, SagaState, SagaStatus, StepPhase};
pub use step::{IdempotencyKey, Phase, SagaId, StepError, StepRequest};
/// The delays between attempts (core's), as [`Attempts`] takes them.
pub use tower_patterns_core::backoff::Backoff;
