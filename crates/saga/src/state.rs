//! A saga's state, folded from its log: what the orchestrator resumes from after a crash.

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde_json::Value;

use crate::{SagaEvent, SagaId};

/// Where a saga stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SagaStatus {
    /// Its steps are being run.
    Running,
    /// A step failed (or the deadline passed): what took effect is being undone.
    Compensating,
    /// Ended: every step succeeded.
    Completed,
    /// Ended: a step failed (or the deadline passed) and every step that had begun and has a
    /// compensation was compensated, newest first (at least one compensation ran).
    Compensated,
    /// Ended: a step failed and no compensation had to run: no step with a compensation had
    /// begun (steps without one, such as a notification, are not undone).
    Failed,
    /// A compensation failed on every attempt; waiting for an operator to retry or resolve.
    Stuck,
    /// Ended: an operator closed a stuck saga by hand.
    Resolved,
}

impl SagaStatus {
    /// `running`, `compensating`, `completed`, `compensated`, `failed`, `stuck`, `resolved`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
            Self::Stuck => "stuck",
            Self::Resolved => "resolved",
        }
    }

    /// Whether the saga is over (nothing more will run without an operator).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Compensated | Self::Failed | Self::Resolved
        )
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step stands.
#[derive(Clone, Debug, PartialEq)]
pub enum StepPhase {
    /// Not begun.
    Pending,
    /// An attempt began and has no outcome in the log yet (after a crash: run it again with
    /// the same key).
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// The action succeeded.
    Succeeded,
    /// The last attempt failed.
    Failed {
        /// The attempt.
        attempt: u32,
        /// A definite refusal: no effect.
        refused: bool,
        /// The error.
        error: String,
    },
    /// A compensation attempt began and has no outcome yet.
    Compensating {
        /// The attempt.
        attempt: u32,
    },
    /// The last compensation attempt failed.
    CompensationFailed {
        /// The attempt (0 after an operator's retry).
        attempt: u32,
        /// The error.
        error: String,
    },
    /// Undone.
    Compensated,
}

/// A saga's state, as its log tells it. Folding never fails: an event that does not fit the
/// state (a step succeeding twice) is applied as written, the log being the truth.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaState {
    /// The saga.
    pub id: SagaId,
    /// The definition's name.
    pub saga_type: Arc<str>,
    /// The input.
    pub input: Arc<Value>,
    /// The deadline, in Unix milliseconds.
    pub deadline_ms: Option<u64>,
    /// The stream version the state was folded to.
    pub version: u64,
    /// The generation of idempotency keys.
    pub generation: u32,
    /// Where it stands.
    pub status: SagaStatus,
    /// Why it turned back, once compensating.
    pub reason: Option<String>,
    /// The step that failed, if one did.
    pub failed_step: Option<String>,
    /// Each step that has begun, by name.
    pub steps: BTreeMap<String, StepPhase>,
    /// The output of each step that succeeded.
    pub outputs: Arc<BTreeMap<String, Value>>,
    /// Whether any compensation ran to success (the saga ends compensated, not failed).
    pub compensated_any: bool,
    /// The last error of the compensation that made it stuck.
    pub stuck: Option<(String, String)>,
}

impl SagaState {
    /// The state after `started` (the log's first event); `None` when it is not a
    /// [`SagaEvent::SagaStarted`].
    pub fn started(id: SagaId, started: &SagaEvent) -> Option<Self> {
        let SagaEvent::SagaStarted {
            saga_type,
            input,
            deadline_ms,
            ..
        } = started
        else {
            return None;
        };
        Some(Self {
            id,
            saga_type: saga_type.as_str().into(),
            input: Arc::new(input.clone()),
            deadline_ms: *deadline_ms,
            version: 1,
            generation: 0,
            status: SagaStatus::Running,
            reason: None,
            failed_step: None,
            steps: BTreeMap::new(),
            outputs: Arc::new(BTreeMap::new()),
            compensated_any: false,
            stuck: None,
        })
    }

    /// Folds a whole log; `None` when it is empty or does not begin with `SagaStarted`.
    pub fn replay<'a>(id: SagaId, log: impl IntoIterator<Item = &'a SagaEvent>) -> Option<Self> {
        let mut log = log.into_iter();
        let mut state = Self::started(id, log.next()?)?;
        for e in log {
            state.apply(e);
        }
        Some(state)
    }

    /// The phase of step `step` (`Pending` when it has not begun).
    pub fn phase(&self, step: &str) -> &StepPhase {
        self.steps.get(step).unwrap_or(&StepPhase::Pending)
    }

    /// Applies the next event of the log.
    pub fn apply(&mut self, event: &SagaEvent) {
        self.version += 1;
        let mut set = |step: &str, phase| {
            self.steps.insert(step.to_owned(), phase);
        };
        match event {
            SagaEvent::SagaStarted { .. } | SagaEvent::SagaResumed { .. } => {}
            SagaEvent::StepStarted { step, attempt } => {
                set(step, StepPhase::Running { attempt: *attempt });
            }
            SagaEvent::StepSucceeded { step, output } => {
                set(step, StepPhase::Succeeded);
                Arc::make_mut(&mut self.outputs).insert(step.clone(), output.clone());
            }
            SagaEvent::StepFailed {
                step,
                attempt,
                error,
                refused,
            } => set(
                step,
                StepPhase::Failed {
                    attempt: *attempt,
                    refused: *refused,
                    error: error.clone(),
                },
            ),
            SagaEvent::CompensationStarted { reason, step } => {
                self.status = SagaStatus::Compensating;
                self.reason = Some(reason.clone());
                self.failed_step.clone_from(step);
            }
            SagaEvent::StepCompensationStarted { step, attempt } => {
                set(step, StepPhase::Compensating { attempt: *attempt });
            }
            SagaEvent::StepCompensated { step } => {
                set(step, StepPhase::Compensated);
                self.compensated_any = true;
            }
            SagaEvent::CompensationFailed {
                step,
                attempt,
                error,
            } => set(
                step,
                StepPhase::CompensationFailed {
                    attempt: *attempt,
                    error: error.clone(),
                },
            ),
            SagaEvent::SagaCompleted {} => self.status = SagaStatus::Completed,
            SagaEvent::SagaCompensated { .. } => self.status = SagaStatus::Compensated,
            SagaEvent::SagaFailed { .. } => self.status = SagaStatus::Failed,
            SagaEvent::SagaStuck { step, error } => {
                self.status = SagaStatus::Stuck;
                self.stuck = Some((step.clone(), error.clone()));
            }
            SagaEvent::SagaRetried { generation, .. } => {
                self.status = SagaStatus::Compensating;
                self.generation = *generation;
                self.stuck = None;
                for phase in self.steps.values_mut() {
                    if let StepPhase::CompensationFailed { attempt, .. } = phase {
                        *attempt = 0;
                    }
                }
            }
            SagaEvent::SagaResolved { .. } => self.status = SagaStatus::Resolved,
        }
    }

    /// The outcome, once the saga has ended or is stuck.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            id: self.id.clone(),
            saga_type: self.saga_type.clone(),
            status: self.status,
            reason: self.reason.clone(),
            failed_step: self.failed_step.clone(),
            outputs: self.outputs.clone(),
        }
    }
}

/// How a saga ended (or that it is stuck).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The saga.
    pub id: SagaId,
    /// The definition's name.
    pub saga_type: Arc<str>,
    /// `Completed`, `Compensated`, `Failed`, `Stuck` or `Resolved`.
    pub status: SagaStatus,
    /// Why it turned back (`"payment failed"`, `"deadline passed"`), if it did.
    pub reason: Option<String>,
    /// The step that failed, if one did.
    pub failed_step: Option<String>,
    /// The outputs of the steps that succeeded.
    pub outputs: Arc<BTreeMap<String, Value>>,
}

impl Outcome {
    /// Whether every step succeeded.
    pub fn is_completed(&self) -> bool {
        self.status == SagaStatus::Completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_themselves_and_say_when_they_end() {
        let all = [
            (SagaStatus::Running, "running", false),
            (SagaStatus::Compensating, "compensating", false),
            (SagaStatus::Completed, "completed", true),
            (SagaStatus::Compensated, "compensated", true),
            (SagaStatus::Failed, "failed", true),
            (SagaStatus::Stuck, "stuck", false),
            (SagaStatus::Resolved, "resolved", true),
        ];
        for (status, name, ended) in all {
            assert_eq!(status.to_string(), name);
            assert_eq!(status.is_terminal(), ended, "{name}");
        }
    }

    #[test]
    fn the_fold_counts_versions_and_the_outcome_says_completed_only_when_it_is() {
        let id = SagaId::new("s").unwrap();
        let log = [
            SagaEvent::SagaStarted {
                saga_type: "t".into(),
                input: serde_json::json!({}),
                deadline_ms: None,
                owner: "o".into(),
            },
            SagaEvent::StepStarted {
                step: "a".into(),
                attempt: 1,
            },
            SagaEvent::StepFailed {
                step: "a".into(),
                attempt: 1,
                error: "no".into(),
                refused: true,
            },
            SagaEvent::CompensationStarted {
                reason: "no".into(),
                step: Some("a".into()),
            },
            SagaEvent::SagaFailed {
                reason: "no".into(),
            },
        ];
        let state = SagaState::replay(id.clone(), log.iter()).unwrap();
        assert_eq!(state.version, 5);
        let outcome = state.outcome();
        assert_eq!(outcome.status, SagaStatus::Failed);
        assert!(!outcome.is_completed());
        assert_eq!(outcome.failed_step.as_deref(), Some("a"));
        assert!(
            SagaState::replay(id.clone(), log[1..].iter()).is_none(),
            "a log must begin with its start"
        );
        assert!(SagaState::replay(id, std::iter::empty()).is_none());
    }
}
