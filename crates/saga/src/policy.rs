//! The pure decision: given a saga's state, its definition and the time, what happens next.
//! The driver carries it out; the tests read it without a store or a clock.

use std::time::Duration;

use tower_patterns_core::rng::SplitMix64;

use crate::{
    SagaDefinition, SagaEvent, SagaStatus, Step,
    definition::Attempts,
    state::{SagaState, StepPhase},
    step::Phase,
};

/// One call to make.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    /// The step's stage and index within it.
    pub(crate) stage: usize,
    pub(crate) index: usize,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    /// Wait this long first (the backoff before a retry).
    pub(crate) delay: Duration,
    /// Whether the attempt's start is still to be logged (false when the log shows it began
    /// before a crash: the same attempt runs again under the same key).
    pub(crate) log_start: bool,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Next {
    /// Nothing: the saga ended, or is stuck.
    Done,
    /// Log this transition, then decide again.
    Record(SagaEvent),
    /// Make these calls at once (a stage's steps, or their compensations), log each outcome,
    /// then decide again.
    Calls(Vec<Call>),
}

/// The text the deadline's compensation gives as its reason.
pub(crate) const DEADLINE_PASSED: &str = "deadline passed";

fn delay(state: &SagaState, step: &Step, attempts: Attempts, after: u32, phase: Phase) -> Duration {
    if after == 0 {
        return Duration::ZERO;
    }
    let mut rng = SplitMix64::new(seed(&state.id, &step.name, phase) ^ u64::from(after));
    attempts
        .backoff
        .delay(after, Duration::ZERO, attempts.cap, &mut rng)
}

/// The jitter's seed for a step's retries: from the saga, the step and the phase (FNV-1a), so
/// sagas spread their retries apart and a restart repeats the same delays.
pub(crate) fn seed(saga: &crate::SagaId, step: &str, phase: Phase) -> u64 {
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    for b in saga
        .as_str()
        .bytes()
        .chain(step.bytes())
        .chain(phase.as_str().bytes())
    {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    seed
}

fn reason(step: &Step, refused: bool, error: &str) -> String {
    match &step.reason {
        Some(r) => r.to_string(),
        None if refused => error.to_owned(),
        None => format!("{} failed", step.name),
    }
}

/// Decides the saga's next move at `now_ms` (Unix milliseconds).
pub(crate) fn next(state: &SagaState, def: &SagaDefinition, now_ms: u64) -> Next {
    match state.status {
        SagaStatus::Running => forward(state, def, now_ms),
        SagaStatus::Compensating => backward(state, def),
        SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::Failed
        | SagaStatus::Stuck
        | SagaStatus::Resolved => Next::Done,
    }
}

fn forward(state: &SagaState, def: &SagaDefinition, now_ms: u64) -> Next {
    if state.deadline_ms.is_some_and(|d| now_ms >= d) {
        return Next::Record(SagaEvent::CompensationStarted {
            reason: DEADLINE_PASSED.to_owned(),
            step: None,
        });
    }
    for (stage, steps) in def.stages.iter().enumerate() {
        let mut calls = Vec::new();
        let mut failed = None;
        for (index, step) in steps.iter().enumerate() {
            let call = |attempt, delay, log_start| Call {
                stage,
                index,
                phase: Phase::Action,
                attempt,
                delay,
                log_start,
            };
            match state.phase(&step.name) {
                StepPhase::Pending => calls.push(call(1, Duration::ZERO, true)),
                StepPhase::Running { attempt } => calls.push(call(*attempt, Duration::ZERO, false)),
                StepPhase::Failed {
                    attempt,
                    refused,
                    error,
                } => {
                    if *refused || *attempt >= step.attempts.max {
                        failed.get_or_insert_with(|| (step, reason(step, *refused, error)));
                    } else {
                        let wait = delay(state, step, step.attempts, *attempt, Phase::Action);
                        calls.push(call(attempt + 1, wait, true));
                    }
                }
                StepPhase::Succeeded
                | StepPhase::Compensating { .. }
                | StepPhase::CompensationFailed { .. }
                | StepPhase::Compensated => {}
            }
        }
        if let Some((step, reason)) = failed {
            // Attempts that began before a crash finish first (they may have taken effect);
            // the stage's other retries are not made.
            calls.retain(|c| !c.log_start);
            if calls.is_empty() {
                return Next::Record(SagaEvent::CompensationStarted {
                    reason,
                    step: Some(step.name.to_string()),
                });
            }
            return Next::Calls(calls);
        }
        if !calls.is_empty() {
            return Next::Calls(calls);
        }
    }
    Next::Record(SagaEvent::SagaCompleted {})
}

fn backward(state: &SagaState, def: &SagaDefinition) -> Next {
    for (stage, steps) in def.stages.iter().enumerate().rev() {
        let mut calls = Vec::new();
        let mut stuck = None;
        for (index, step) in steps.iter().enumerate() {
            if step.compensation.is_none() {
                continue;
            }
            let call = |attempt, delay, log_start| Call {
                stage,
                index,
                phase: Phase::Compensation,
                attempt,
                delay,
                log_start,
            };
            match state.phase(&step.name) {
                // Took effect, or may have: undo.
                StepPhase::Succeeded
                | StepPhase::Running { .. }
                | StepPhase::Failed { refused: false, .. } => {
                    calls.push(call(1, Duration::ZERO, true));
                }
                StepPhase::Compensating { attempt } => {
                    calls.push(call(*attempt, Duration::ZERO, false));
                }
                StepPhase::CompensationFailed { attempt, error } => {
                    if *attempt >= step.compensation_attempts.max {
                        stuck.get_or_insert_with(|| (step, error.clone()));
                    } else {
                        let attempts = step.compensation_attempts;
                        let wait = delay(state, step, attempts, *attempt, Phase::Compensation);
                        calls.push(call(attempt + 1, wait, true));
                    }
                }
                StepPhase::Pending
                | StepPhase::Failed { refused: true, .. }
                | StepPhase::Compensated => {}
            }
        }
        if !calls.is_empty() {
            return Next::Calls(calls);
        }
        if let Some((step, error)) = stuck {
            return Next::Record(SagaEvent::SagaStuck {
                step: step.name.to_string(),
                error,
            });
        }
    }
    let reason = state.reason.clone().unwrap_or_default();
    Next::Record(if state.compensated_any {
        SagaEvent::SagaCompensated { reason }
    } else {
        SagaEvent::SagaFailed { reason }
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
