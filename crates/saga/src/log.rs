//! The saga log: one event per transition, in the saga's own event store stream.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_patterns_eventstore::{Error as StoreError, EventData, RecordedEvent};

/// One transition of a saga, as stored in its log (the stream `saga-<id>`; the event type is
/// the variant's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum SagaEvent {
    /// The saga began.
    SagaStarted {
        /// The definition's name.
        saga_type: String,
        /// The input.
        input: Value,
        /// When a saga still running is compensated, in Unix milliseconds.
        deadline_ms: Option<u64>,
        /// The orchestrator that started it.
        owner: String,
    },
    /// An attempt of a step's action is about to be made.
    StepStarted {
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// The action succeeded.
    StepSucceeded {
        /// The step.
        step: String,
        /// Its output, available to later steps and to its compensation.
        output: Value,
    },
    /// An attempt of the action failed.
    StepFailed {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// The service refused (a [`StepError`](crate::StepError)): no effect, nothing to undo.
        refused: bool,
    },
    /// The saga turned back: it compensates what took effect, newest first.
    CompensationStarted {
        /// Why (the failing step's reason, or `deadline passed`).
        reason: String,
        /// The step that failed, if one did.
        step: Option<String>,
    },
    /// An attempt of a step's compensation is about to be made.
    StepCompensationStarted {
        /// The step.
        step: String,
        /// The attempt, from 1 (from 1 again after an operator's retry).
        attempt: u32,
    },
    /// A step's compensation succeeded.
    StepCompensated {
        /// The step.
        step: String,
    },
    /// An attempt of a compensation failed.
    CompensationFailed {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
    },
    /// Every step succeeded.
    SagaCompleted {},
    /// A step failed (or the deadline passed) and every step that had begun and has a
    /// compensation was compensated.
    SagaCompensated {
        /// Why the saga turned back.
        reason: String,
    },
    /// A step failed and no compensation had to run (no step with one had begun).
    SagaFailed {
        /// Why.
        reason: String,
    },
    /// A compensation failed on every attempt: the saga waits for an operator.
    SagaStuck {
        /// The step whose compensation failed.
        step: String,
        /// Its last error.
        error: String,
    },
    /// Another orchestrator took the saga over (its lease had expired).
    SagaResumed {
        /// The orchestrator now driving it.
        owner: String,
    },
    /// An operator retried a stuck saga: its compensations start again, attempts afresh.
    SagaRetried {
        /// Who.
        by: String,
        /// Why.
        why: String,
        /// The generation of idempotency keys from now on: the same as before, unless the
        /// operator asked for new keys.
        generation: u32,
    },
    /// An operator closed a stuck saga by hand.
    SagaResolved {
        /// Who.
        by: String,
        /// Why (what was done about the step that could not be undone).
        why: String,
    },
}

impl SagaEvent {
    /// The event type in the store (the variant's name).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::SagaStarted { .. } => "SagaStarted",
            Self::StepStarted { .. } => "StepStarted",
            Self::StepSucceeded { .. } => "StepSucceeded",
            Self::StepFailed { .. } => "StepFailed",
            Self::CompensationStarted { .. } => "CompensationStarted",
            Self::StepCompensationStarted { .. } => "StepCompensationStarted",
            Self::StepCompensated { .. } => "StepCompensated",
            Self::CompensationFailed { .. } => "CompensationFailed",
            Self::SagaCompleted {} => "SagaCompleted",
            Self::SagaCompensated { .. } => "SagaCompensated",
            Self::SagaFailed { .. } => "SagaFailed",
            Self::SagaStuck { .. } => "SagaStuck",
            Self::SagaResumed { .. } => "SagaResumed",
            Self::SagaRetried { .. } => "SagaRetried",
            Self::SagaResolved { .. } => "SagaResolved",
        }
    }

    /// Every event type, in the order of the variants.
    pub const KINDS: [&'static str; 15] = [
        "SagaStarted",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "CompensationStarted",
        "StepCompensationStarted",
        "StepCompensated",
        "CompensationFailed",
        "SagaCompleted",
        "SagaCompensated",
        "SagaFailed",
        "SagaStuck",
        "SagaResumed",
        "SagaRetried",
        "SagaResolved",
    ];

    pub(crate) fn to_data(&self) -> Result<EventData, StoreError> {
        EventData::json(self.kind(), self)
    }

    /// Decodes a stored event; one that is not a saga event is `Error::Corrupt`, naming it.
    ///
    /// # Errors
    ///
    /// As said.
    pub fn decode(event: &RecordedEvent) -> Result<Self, StoreError> {
        let decoded: Self = event.decode()?;
        if decoded.kind() == event.event_type {
            Ok(decoded)
        } else {
            Err(event.corrupt("the event type does not match its payload"))
        }
    }

    /// One line for a timeline (`step hotel failed (attempt 1): no rooms`).
    pub fn describe(&self) -> String {
        match self {
            Self::SagaStarted { saga_type, .. } => format!("{saga_type} saga started"),
            Self::StepStarted { step, attempt } => {
                format!("step {step} started (attempt {attempt})")
            }
            Self::StepSucceeded { step, .. } => format!("step {step} succeeded"),
            Self::StepFailed {
                step,
                attempt,
                error,
                refused,
            } => {
                let how = if *refused { "refused" } else { "failed" };
                format!("step {step} {how} (attempt {attempt}): {error}")
            }
            Self::CompensationStarted { reason, .. } => format!("compensating: {reason}"),
            Self::StepCompensationStarted { step, attempt } => {
                format!("compensation of {step} started (attempt {attempt})")
            }
            Self::StepCompensated { step } => format!("step {step} compensated"),
            Self::CompensationFailed {
                step,
                attempt,
                error,
            } => format!("compensation of {step} failed (attempt {attempt}): {error}"),
            Self::SagaCompleted {} => "completed".to_owned(),
            Self::SagaCompensated { reason } => format!("compensated ({reason})"),
            Self::SagaFailed { reason } => format!("failed ({reason})"),
            Self::SagaStuck { step, error } => {
                format!("stuck: the compensation of {step} keeps failing ({error})")
            }
            Self::SagaResumed { owner } => format!("resumed by {owner}"),
            Self::SagaRetried { by, why, .. } => format!("retried by {by}: {why}"),
            Self::SagaResolved { by, why } => format!("resolved by {by}: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_patterns_eventstore::{EventStore, ExpectedVersion, InMemoryStore};

    #[tokio::test]
    async fn events_round_trip_through_the_store_and_forgeries_are_corrupt() {
        let store = InMemoryStore::new();
        let all = vec![
            SagaEvent::SagaStarted {
                saga_type: "trip".into(),
                input: serde_json::json!({"who": "ada"}),
                deadline_ms: Some(5),
                owner: "o".into(),
            },
            SagaEvent::StepStarted {
                step: "a".into(),
                attempt: 1,
            },
            SagaEvent::StepSucceeded {
                step: "a".into(),
                output: serde_json::json!(1),
            },
            SagaEvent::StepFailed {
                step: "a".into(),
                attempt: 1,
                error: "e".into(),
                refused: true,
            },
            SagaEvent::CompensationStarted {
                reason: "r".into(),
                step: None,
            },
            SagaEvent::StepCompensationStarted {
                step: "a".into(),
                attempt: 1,
            },
            SagaEvent::StepCompensated { step: "a".into() },
            SagaEvent::CompensationFailed {
                step: "a".into(),
                attempt: 2,
                error: "e".into(),
            },
            SagaEvent::SagaCompleted {},
            SagaEvent::SagaCompensated { reason: "r".into() },
            SagaEvent::SagaFailed { reason: "r".into() },
            SagaEvent::SagaStuck {
                step: "a".into(),
                error: "e".into(),
            },
            SagaEvent::SagaResumed { owner: "b".into() },
            SagaEvent::SagaRetried {
                by: "ops".into(),
                why: "fixed".into(),
                generation: 1,
            },
            SagaEvent::SagaResolved {
                by: "ops".into(),
                why: "refunded by hand".into(),
            },
        ];
        let kinds: Vec<_> = all.iter().map(SagaEvent::kind).collect();
        assert_eq!(kinds, SagaEvent::KINDS);
        let data = all.iter().map(|e| e.to_data().unwrap()).collect();
        store
            .append("saga-1", ExpectedVersion::NoStream, data)
            .await
            .unwrap();
        let read = store
            .read_stream(
                "saga-1",
                1,
                tower_patterns_eventstore::Direction::Forward,
                100,
            )
            .await
            .unwrap();
        let back: Vec<_> = read.iter().map(|e| SagaEvent::decode(e).unwrap()).collect();
        assert_eq!(back, all);
        for e in &all {
            assert!(!e.describe().is_empty());
        }

        // A payload of another type under a saga event's type is corrupt, not misread.
        let forged = EventData::json("StepSucceeded", &SagaEvent::SagaCompleted {}).unwrap();
        let bad = EventData::json("SagaCompleted", &serde_json::json!({"x": 1})).unwrap();
        store
            .append("saga-2", ExpectedVersion::NoStream, vec![forged, bad])
            .await
            .unwrap();
        let read = store
            .read_stream(
                "saga-2",
                1,
                tower_patterns_eventstore::Direction::Forward,
                10,
            )
            .await
            .unwrap();
        assert!(read.iter().all(|e| SagaEvent::decode(e).is_err()));
    }
}
