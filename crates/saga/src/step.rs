//! What a step's services receive and how they say no: [`StepRequest`], [`IdempotencyKey`],
//! [`StepError`].

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_patterns_core::BoxError;

/// A saga's id: the caller's (an order id, a booking id) or a generated UUID. At most 200
/// bytes; the saga's log is the event store stream `saga-<id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SagaId(Arc<str>);

impl SagaId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// `id` as a saga id, or `None` when it is empty or longer than [`MAX_LEN`](Self::MAX_LEN).
    pub fn new(id: impl Into<Arc<str>>) -> Option<Self> {
        let id = id.into();
        (!id.is_empty() && id.len() <= Self::MAX_LEN).then_some(Self(id))
    }

    /// A fresh id (a time-ordered UUID).
    pub fn random() -> Self {
        Self(uuid::Uuid::now_v7().to_string().into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The event store stream that holds this saga's log.
    pub fn stream(&self) -> String {
        format!("saga-{}", self.0)
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which of a step's services a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl Phase {
    /// `do` or `undo`, as in keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Action => "do",
            Self::Compensation => "undo",
        }
    }
}

/// The key a step's service uses to apply a call once: the saga id, the step, the phase and
/// the generation, as `<saga>/<step>/<do|undo>/<generation>`.
///
/// Every attempt of a step's action carries the same key, and so does the run after a crash:
/// an attempt that timed out may have taken effect, and its retry must not take it twice. The
/// generation starts at 0 and grows only when an operator retries a stuck saga with new keys
/// (`Orchestrator::retry_with_new_keys`), for a service that remembers a failure under a
/// key; a plain retry keeps the keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    pub(crate) fn new(saga: &SagaId, step: &str, phase: Phase, generation: u32) -> Self {
        Self(format!("{saga}/{step}/{}/{generation}", phase.as_str()).into())
    }

    /// The key as a string (for an `Idempotency-Key` header or a unique column).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step's action or compensation receives.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StepRequest {
    /// The saga.
    pub saga: SagaId,
    /// The saga's definition name (`trip`, `order`).
    pub saga_type: Arc<str>,
    /// The step's name.
    pub step: Arc<str>,
    /// Action or compensation.
    pub phase: Phase,
    /// The key to apply this call once under; see [`IdempotencyKey`].
    pub key: IdempotencyKey,
    /// The attempt, from 1 (for logs; the key does not change with it).
    pub attempt: u32,
    /// The saga's input, as started.
    pub input: Arc<Value>,
    /// The outputs of the steps that succeeded so far, by step name (for a compensation, its
    /// own step's output among them when it succeeded).
    pub outputs: Arc<BTreeMap<String, Value>>,
}

impl StepRequest {
    /// The request the orchestrator makes for the first attempt of `step`'s `phase` in saga
    /// `saga` of type `saga_type` (generation 0, no outputs before it): for calling a step's
    /// service yourself, in a test or beside a saga.
    pub fn new(
        saga: SagaId,
        saga_type: impl Into<Arc<str>>,
        step: impl Into<Arc<str>>,
        phase: Phase,
        input: Value,
    ) -> Self {
        let step = step.into();
        Self {
            key: IdempotencyKey::new(&saga, &step, phase, 0),
            saga,
            saga_type: saga_type.into(),
            step,
            phase,
            attempt: 1,
            input: Arc::new(input),
            outputs: Arc::new(BTreeMap::new()),
        }
    }

    /// With the outputs of the steps before (by step name).
    #[must_use]
    pub fn with_outputs(mut self, outputs: BTreeMap<String, Value>) -> Self {
        self.outputs = Arc::new(outputs);
        self
    }

    /// The saga's input as a `T`.
    ///
    /// # Errors
    ///
    /// A [`StepError`] (permanent) when the input is not a `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        T::deserialize(&*self.input)
            .map_err(|e| StepError::refused(format!("the saga's input: {e}")))
    }

    /// The output of step `step` as a `T`, if that step succeeded.
    ///
    /// # Errors
    ///
    /// A [`StepError`] (permanent) when the output is not a `T`.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, StepError> {
        self.outputs
            .get(step)
            .map(|v| {
                T::deserialize(v).map_err(|e| StepError::refused(format!("output of {step}: {e}")))
            })
            .transpose()
    }

    /// This step's own output (for a compensation), when its action succeeded. `None` for a
    /// compensation of an action whose outcome is unknown (it timed out): the compensation
    /// must then look the effect up by [`key`](Self::key)'s saga and step.
    pub fn own_output(&self) -> Option<&Value> {
        self.outputs.get(&*self.step)
    }
}

/// A step's definite "no": the service refused and took no effect (a declined card, nothing in
/// stock). The saga neither retries nor compensates the step; it compensates the steps before
/// it. Any other error is taken as an outcome unknown (a timeout, a lost connection): the
/// action is retried with the same key and, when retries run out, compensated too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    reason: Arc<str>,
}

impl StepError {
    /// A refusal for `reason` (logged, and the saga's failure reason when the step has none
    /// of its own).
    pub fn refused(reason: impl Into<Arc<str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The refusal along `err`'s chain, if there is one.
    pub fn find(err: &BoxError) -> Option<&Self> {
        tower_patterns_core::error::find_in_chain::<Self>(&**err)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.reason)
    }
}

impl std::error::Error for StepError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_keys_name_their_parts() {
        assert!(SagaId::new("").is_none());
        assert!(SagaId::new("x".repeat(201)).is_none());
        let id = SagaId::new("x".repeat(200)).unwrap();
        assert_eq!(id.as_str().len(), 200);
        let id = SagaId::new("order-7").unwrap();
        assert_eq!(id.stream(), "saga-order-7");
        let key = IdempotencyKey::new(&id, "payment", Phase::Compensation, 2);
        assert_eq!(key.as_str(), "order-7/payment/undo/2");
        assert_eq!(
            IdempotencyKey::new(&id, "payment", Phase::Action, 0).to_string(),
            "order-7/payment/do/0"
        );
        assert_ne!(SagaId::random(), SagaId::random());
    }

    #[test]
    fn a_request_made_by_hand_is_the_first_attempt() {
        let req = StepRequest::new(
            SagaId::new("t-1").unwrap(),
            "trip",
            "hotel",
            Phase::Compensation,
            serde_json::json!({"n": 2}),
        )
        .with_outputs(BTreeMap::from([(
            "hotel".to_owned(),
            serde_json::json!("h-9"),
        )]));
        assert_eq!(req.key.as_str(), "t-1/hotel/undo/0");
        assert_eq!(
            (req.attempt, &*req.saga_type, req.phase),
            (1, "trip", Phase::Compensation)
        );
        assert_eq!(req.input::<serde_json::Value>().unwrap()["n"], 2);
        assert_eq!(req.own_output(), Some(&serde_json::json!("h-9")));
        assert_eq!(
            req.output::<String>("hotel").unwrap().as_deref(),
            Some("h-9")
        );
        assert_eq!(req.output::<String>("flight").unwrap(), None);
        assert!(req.output::<u64>("hotel").is_err());
        assert!(req.input::<String>().is_err());
    }

    #[test]
    fn a_refusal_is_found_along_the_chain() {
        let err: BoxError = StepError::refused("card declined").into();
        assert_eq!(StepError::find(&err).unwrap().reason(), "card declined");
        assert_eq!(
            StepError::find(&err).unwrap().to_string(),
            "refused: card declined"
        );
        let other: BoxError = "timeout".into();
        assert!(StepError::find(&other).is_none());
    }
}
