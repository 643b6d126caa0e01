//! Choreography: no coordinator; each service reacts to the events of the ones before it
//! (event → action → event), and failure events run a chain of compensations back.
//!
//! A [`Choreography`] holds the reactions of one or more participants. Each reaction listens
//! for one event type, calls its action (a tower `Service`, with the same [`StepRequest`] and
//! idempotency keys as an orchestrated step), and appends the success or the failure event to
//! the saga's stream in the event store; its compensation listens for failure events. The
//! events travel through the event store's global log:
//!
//! - **in process**, run the choreography as a CQRS external projection (a checkpoint, a
//!   failure policy with retries and dead letters, one runner across processes):
//!   `Projection::builder(name).source(store).external(checkpoints, choreography)`;
//! - **across services**, publish the log to NATS JetStream with the CQRS crate's outbox
//!   relay, and give each service's durable consumer the choreography as its handler
//!   (`Service<Delivery>`, feature `nats`).
//!
//! Delivery is at least once either way. A reaction applies once all the same: its action
//! and compensation get one idempotency key per saga and step, and the event it appends has
//! an id derived from that key, so a redelivered event appends nothing new (the event
//! store's idempotent append by event id). When a redelivery's action answers otherwise
//! than the first time (it failed, then it succeeded), the log keeps the first answer and
//! the reaction undoes the second at once.
//!
//! Every event of a saga is a [`ChoreographyMessage`] in the stream `<choreography>-<saga id>`:
//! the saga's input, the outputs of the steps that succeeded so far, and, on the way back,
//! the step that failed and why. A reaction compensates only when its own step's output is
//! in the failure event (its action took effect); an action whose outcome stayed unknown
//! (retries ran out without a definite answer) compensates itself before it reports the
//! failure.
//!
//! The trip booking, choreographed: the hotel refuses, so the flight is cancelled. Each
//! event of the log is handed to the choreography here by hand; in production a projection
//! runner or a JetStream consumer does it.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::{json, Value};
//! use tower::service_fn;
//! use tower_patterns_core::BoxError;
//! use tower_patterns_eventstore::{Direction, EventStore, GlobalPosition, InMemoryStore};
//! use tower_patterns_saga::{SagaId, StepError, StepRequest, choreography::{Choreography, Reaction}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ok = || service_fn(|r: StepRequest| async move { Ok::<_, BoxError>(json!({ "key": r.key.as_str() })) });
//! let full = service_fn(|_: StepRequest| async { Err::<Value, BoxError>(StepError::refused("no rooms").into()) });
//!
//! let store = Arc::new(InMemoryStore::new());
//! let trip = Choreography::builder("trip")
//!     .store(store.clone())
//!     .reaction(
//!         Reaction::new("flight", "TripRequested", ok())
//!             .emits("FlightBooked")
//!             .fails_with("FlightFailed")
//!             .compensate_on(["HotelFailed"], ok(), "FlightCancelled"),
//!     )
//!     .reaction(Reaction::new("hotel", "FlightBooked", full).emits("HotelBooked").fails_with("HotelFailed"))
//!     .build()?;
//!
//! let id = SagaId::new("42").unwrap();
//! trip.begin(&id, "TripRequested", json!({ "who": "ada" })).await?;
//! let mut after = GlobalPosition::START;
//! loop {
//!     let page = store.read_all(after, 100).await?;
//!     let Some(last) = page.last() else { break };
//!     after = last.position;
//!     for event in &page {
//!         trip.handle(event).await?;
//!     }
//! }
//! let log = store.read_stream(&trip.stream(&id), 1, Direction::Forward, 10).await?;
//! let types: Vec<_> = log.iter().map(|e| e.event_type.as_str()).collect();
//! assert_eq!(types, ["TripRequested", "FlightBooked", "HotelFailed", "FlightCancelled"]);
//! # Ok(()) }
//! ```
//!
//! Choose choreography for a few steps owned by teams that should not share a coordinator;
//! choose orchestration (the [`Orchestrator`](crate::Orchestrator)) when the flow has more
//! than three or four steps, parallel branches, deadlines, or needs an operator's view:
//! a choreographed saga's state is spread over the services, and no one sees it stuck.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceExt as _;
use tower_patterns_core::{ConfigError, rng::SplitMix64};
use tower_patterns_cqrs::{ApplyError, ExternalProjection};
use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, RecordedEvent};

mod reaction;

pub use reaction::Reaction;

use crate::{
    SagaError, SagaId, StepError, StepRequest, StepService,
    step::{IdempotencyKey, Phase},
};

/// What every event of a choreographed saga carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoreographyMessage {
    /// The saga's input.
    pub input: Value,
    /// The output of each step that succeeded, by step name.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// The step that failed, on the way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The reactions of a choreographed saga; see the [module docs](self). Cloning shares them.
pub struct Choreography<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    name: Arc<str>,
    prefix: String,
    store: Arc<S>,
    reactions: Vec<Reaction>,
}

impl<S> Clone for Choreography<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for Choreography<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Choreography")
            .field("name", &self.inner.name)
            .field("reactions", &self.inner.reactions)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Choreography`]; see [`Choreography::builder`].
#[derive(Debug)]
pub struct ChoreographyBuilder<S> {
    name: Arc<str>,
    store: S,
    reactions: Vec<Reaction>,
}

impl Choreography<()> {
    /// A choreography named `name` (its sagas' streams are `<name>-<saga id>`). Required: the
    /// event store (`.store(s)`) and at least one reaction.
    pub fn builder(name: impl Into<Arc<str>>) -> ChoreographyBuilder<crate::NoStore> {
        ChoreographyBuilder {
            name: name.into(),
            store: crate::NoStore,
            reactions: Vec::new(),
        }
    }
}

impl<S> ChoreographyBuilder<S> {
    /// The event store the sagas' events are appended to.
    pub fn store<S2: EventStore>(self, store: Arc<S2>) -> ChoreographyBuilder<Arc<S2>> {
        ChoreographyBuilder {
            name: self.name,
            store,
            reactions: self.reactions,
        }
    }

    /// Adds a reaction.
    #[must_use]
    pub fn reaction(mut self, reaction: Reaction) -> Self {
        self.reactions.push(reaction);
        self
    }
}

impl<S: EventStore> ChoreographyBuilder<Arc<S>> {
    /// Checks the reactions.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (empty), `reactions` (none, two with one name, one
    /// without `emits` or `fails_with`) or `attempts`.
    pub fn build(self) -> Result<Choreography<S>, ConfigError> {
        crate::error::register();
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.reactions.is_empty() {
            return Err(ConfigError::new("reactions", "at least one reaction"));
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.reactions {
            if !names.insert(r.name.clone()) {
                return Err(ConfigError::new(
                    "reactions",
                    "two reactions have the same name",
                ));
            }
            if r.emits.is_none() || r.fails_with.is_none() {
                return Err(ConfigError::new(
                    "reactions",
                    "every reaction needs emits and fails_with",
                ));
            }
            if r.attempts.max == 0 {
                return Err(ConfigError::new("attempts", "at least one attempt"));
            }
            r.attempts.backoff.validate()?;
        }
        Ok(Choreography {
            inner: Arc::new(Inner {
                prefix: format!("{}-", self.name),
                name: self.name,
                store: self.store,
                reactions: self.reactions,
            }),
        })
    }
}

/// The id of the event a reaction appends for `key`: the same on every delivery.
fn event_id(stream: &str, key: &IdempotencyKey) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{stream}/{key}").as_bytes(),
    )
}

enum Answer {
    Done(Value),
    Refused(String),
    Unknown(String),
}

impl<S: EventStore> Choreography<S> {
    /// The choreography's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The stream of saga `id`.
    pub fn stream(&self, id: &SagaId) -> String {
        format!("{}{id}", self.inner.prefix)
    }

    /// Begins saga `id`: appends its first event (`TripRequested`) with `input`. Beginning an
    /// id again appends nothing.
    ///
    /// # Errors
    ///
    /// The event store failing.
    pub async fn begin(
        &self,
        id: &SagaId,
        event_type: &str,
        input: Value,
    ) -> Result<(), SagaError> {
        let stream = self.stream(id);
        let message = ChoreographyMessage {
            input,
            ..ChoreographyMessage::default()
        };
        let event = EventData::json(event_type, &message)?.with_id(uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            stream.as_bytes(),
        ));
        self.inner
            .store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await?;
        Ok(())
    }

    /// Handles one event: the reactions listening for its type act. Events of other streams
    /// and types are ignored.
    ///
    /// # Errors
    ///
    /// A permanent [`ApplyError`] for an event that is not a [`ChoreographyMessage`]; a
    /// transient one when a compensation failed on every attempt or the store failed (the
    /// runner tries the event again, then sets it aside as its policy says).
    pub async fn handle(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let Some(id) = event.stream_id.strip_prefix(&self.inner.prefix) else {
            return Ok(());
        };
        let listening = self
            .inner
            .reactions
            .iter()
            .any(|r| r.on == event.event_type || r.undo_on.contains(&event.event_type));
        if !listening {
            return Ok(());
        }
        let Some(saga) = SagaId::new(id) else {
            return Err(ApplyError::permanent("a saga id that is empty or too long"));
        };
        let message: ChoreographyMessage = event.decode().map_err(ApplyError::permanent)?;
        for r in &self.inner.reactions {
            if r.on == event.event_type {
                self.act(r, &saga, &event.stream_id, &message).await?;
            }
            if r.undo_on.contains(&event.event_type) && message.outputs.contains_key(&*r.name) {
                self.undo(r, &saga, &event.stream_id, &message).await?;
            }
        }
        Ok(())
    }

    async fn call(
        &self,
        r: &Reaction,
        service: &StepService,
        saga: &SagaId,
        phase: Phase,
        generation: u32,
        message: &ChoreographyMessage,
    ) -> Answer {
        let key = IdempotencyKey::new(saga, &r.name, phase, generation);
        let outputs = Arc::new(message.outputs.clone());
        let input = Arc::new(message.input.clone());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = StepRequest {
                saga: saga.clone(),
                saga_type: self.inner.name.clone(),
                step: r.name.clone(),
                phase,
                key: key.clone(),
                attempt,
                input: input.clone(),
                outputs: outputs.clone(),
            };
            let call = service.clone().oneshot(req);
            let result = match r.timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or_else(|_| Err("step timed out".into())),
                None => call.await,
            };
            let error = match result {
                Ok(v) => return Answer::Done(v),
                Err(e) => match StepError::find(&e) {
                    Some(refused) => return Answer::Refused(refused.reason().to_owned()),
                    None => e.to_string(),
                },
            };
            if attempt >= r.attempts.max {
                return Answer::Unknown(error);
            }
            let mut rng =
                SplitMix64::new(crate::policy::seed(saga, &r.name, phase) ^ u64::from(attempt));
            let wait = r
                .attempts
                .backoff
                .delay(attempt, Duration::ZERO, r.attempts.cap, &mut rng);
            tokio::time::sleep(wait).await;
        }
    }

    /// Appends `event_type` with `message` under `key`'s id; answers the type stored when an
    /// event with that id was there already (a redelivery).
    async fn append(
        &self,
        stream: &str,
        key: &IdempotencyKey,
        event_type: &str,
        message: &ChoreographyMessage,
    ) -> Result<Option<String>, ApplyError> {
        let id = event_id(stream, key);
        let event = EventData::json(event_type, message)
            .map_err(ApplyError::permanent)?
            .with_id(id);
        let done = self
            .inner
            .store
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
            .map_err(ApplyError::transient)?;
        if !done.duplicate {
            return Ok(None);
        }
        let stored = self
            .inner
            .store
            .find_event(id)
            .await
            .map_err(ApplyError::transient)?;
        Ok(stored.map(|e| e.event_type))
    }

    async fn act(
        &self,
        r: &Reaction,
        saga: &SagaId,
        stream: &str,
        message: &ChoreographyMessage,
    ) -> Result<(), ApplyError> {
        let mut next = message.clone();
        next.failed = None;
        next.reason = None;
        let (event_type, took_effect) = match self
            .call(r, &r.action, saga, Phase::Action, 0, message)
            .await
        {
            Answer::Done(output) => {
                next.outputs.insert(r.name.to_string(), output);
                (r.emits.as_deref().unwrap_or_default(), true)
            }
            Answer::Refused(reason) => {
                next.failed = Some(r.name.to_string());
                next.reason = Some(reason);
                (r.fails_with.as_deref().unwrap_or_default(), false)
            }
            Answer::Unknown(error) => {
                // It may have taken effect: undo it before reporting the failure.
                if let Some((compensation, _)) = &r.compensation
                    && let Answer::Unknown(e) | Answer::Refused(e) = self
                        .call(r, compensation, saga, Phase::Compensation, 0, message)
                        .await
                {
                    return Err(ApplyError::transient(format!(
                        "{}: the compensation of an unknown outcome failed: {e}",
                        r.name
                    )));
                }
                next.failed = Some(r.name.to_string());
                next.reason = Some(error);
                (r.fails_with.as_deref().unwrap_or_default(), false)
            }
        };
        let key = IdempotencyKey::new(saga, &r.name, Phase::Action, 0);
        let stored = self.append(stream, &key, event_type, &next).await?;
        if let Some(stored) = stored
            && stored != event_type
            && took_effect
        {
            // The log kept an earlier delivery's failure; this delivery's effect must go.
            tracing::warn!(saga = %saga, step = %r.name, "a redelivered action succeeded after its failure was logged: undoing it");
            if let Some((compensation, _)) = &r.compensation
                && let Answer::Unknown(e) | Answer::Refused(e) = self
                    // Generation 1: the inline compensation of an unknown outcome may have
                    // spent generation 0, and its answer ("nothing to undo") is kept under it.
                    .call(r, compensation, saga, Phase::Compensation, 1, &next)
                    .await
            {
                return Err(ApplyError::transient(e));
            }
        }
        Ok(())
    }

    async fn undo(
        &self,
        r: &Reaction,
        saga: &SagaId,
        stream: &str,
        message: &ChoreographyMessage,
    ) -> Result<(), ApplyError> {
        let Some((compensation, emits)) = &r.compensation else {
            return Ok(());
        };
        match self
            .call(r, compensation, saga, Phase::Compensation, 0, message)
            .await
        {
            Answer::Done(_) => {}
            Answer::Unknown(e) | Answer::Refused(e) => {
                tracing::error!(saga = %saga, step = %r.name, error = %e, "compensation failed on every attempt");
                return Err(ApplyError::transient(format!(
                    "{}: compensation failed: {e}",
                    r.name
                )));
            }
        }
        let key = IdempotencyKey::new(saga, &r.name, Phase::Compensation, 0);
        self.append(stream, &key, emits, message).await?;
        Ok(())
    }
}

impl<S: EventStore> ExternalProjection for Choreography<S> {
    fn apply(&self, event: &RecordedEvent) -> impl Future<Output = Result<(), ApplyError>> + Send {
        self.handle(event)
    }
}

#[cfg(feature = "nats")]
mod nats {
    use std::task::{Context, Poll};

    use futures_util::future::BoxFuture;
    use tower_patterns_cqrs::bus::Delivery;
    use tower_service::Service;

    use super::Choreography;
    use tower_patterns_eventstore::EventStore;

    /// A JetStream consumer's handler: each delivery's event is handled as
    /// [`Choreography::handle`] does; an error asks JetStream for a redelivery.
    impl<S: EventStore> Service<Delivery> for Choreography<S> {
        type Response = ();
        type Error = tower_patterns_cqrs::ApplyError;
        type Future = BoxFuture<'static, Result<(), Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, delivery: Delivery) -> Self::Future {
            let this = self.clone();
            Box::pin(async move { this.handle(&delivery.event).await })
        }
    }
}
