use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tower_patterns_core::{BoxError, backoff::Backoff};

use super::*;
use crate::{Attempts, SagaId, StepRequest};

fn step(name: &str, compensation: bool) -> Step {
    let s = Step::new(
        name.to_owned(),
        tower::service_fn(|_r: StepRequest| async { Ok::<_, BoxError>(Value::Null) }),
    );
    if compensation {
        s.compensate_with(tower::service_fn(|_r: StepRequest| async {
            Ok::<_, BoxError>(Value::Null)
        }))
    } else {
        s
    }
}

fn start(deadline_ms: Option<u64>) -> SagaState {
    SagaState::started(
        SagaId::new("s").unwrap(),
        &SagaEvent::SagaStarted {
            saga_type: "t".into(),
            input: json!({}),
            deadline_ms,
            owner: "o".into(),
        },
    )
    .unwrap()
}

fn apply(state: &mut SagaState, events: &[SagaEvent]) {
    for e in events {
        state.apply(e);
    }
}

fn started(step: &str, attempt: u32) -> SagaEvent {
    SagaEvent::StepStarted {
        step: step.into(),
        attempt,
    }
}

fn succeeded(step: &str) -> SagaEvent {
    SagaEvent::StepSucceeded {
        step: step.into(),
        output: json!(1),
    }
}

fn failed(step: &str, attempt: u32, refused: bool) -> SagaEvent {
    SagaEvent::StepFailed {
        step: step.into(),
        attempt,
        error: "no".into(),
        refused,
    }
}

fn calls(next: Next) -> Vec<(usize, usize, Phase, u32, bool)> {
    match next {
        Next::Calls(c) => c
            .into_iter()
            .map(|c| (c.stage, c.index, c.phase, c.attempt, c.log_start))
            .collect(),
        other => panic!("expected calls, got {other:?}"),
    }
}

#[test]
fn forward_runs_each_stage_in_turn_and_retries_with_backoff() {
    let backoff = Backoff::Constant(Duration::from_millis(250));
    let def = SagaDefinition::builder("t")
        .step(step("a", true).retry(Attempts::new(3, backoff)))
        .parallel([step("b", true), step("c", false)])
        .build()
        .unwrap();
    let mut s = start(None);
    assert_eq!(calls(next(&s, &def, 0)), [(0, 0, Phase::Action, 1, true)]);
    apply(&mut s, &[started("a", 1)]);
    // Begun before a crash: the same attempt again, its start already logged.
    assert_eq!(calls(next(&s, &def, 0)), [(0, 0, Phase::Action, 1, false)]);
    apply(&mut s, &[failed("a", 1, false)]);
    let Next::Calls(retry) = next(&s, &def, 0) else {
        panic!()
    };
    assert_eq!(
        (retry[0].attempt, retry[0].delay, retry[0].log_start),
        (2, Duration::from_millis(250), true)
    );
    apply(&mut s, &[started("a", 2), succeeded("a")]);
    assert_eq!(
        calls(next(&s, &def, 0)),
        [
            (1, 0, Phase::Action, 1, true),
            (1, 1, Phase::Action, 1, true)
        ]
    );
    apply(&mut s, &[started("b", 1), started("c", 1), succeeded("c")]);
    assert_eq!(calls(next(&s, &def, 0)), [(1, 0, Phase::Action, 1, false)]);
    apply(&mut s, &[succeeded("b")]);
    assert_eq!(next(&s, &def, 0), Next::Record(SagaEvent::SagaCompleted {}));
    apply(&mut s, &[SagaEvent::SagaCompleted {}]);
    assert_eq!(
        next(&s, &def, u64::MAX),
        Next::Done,
        "a deadline after the end changes nothing"
    );
}

#[test]
fn a_failure_turns_back_once_the_stage_in_flight_has_answered() {
    let def = SagaDefinition::builder("t")
        .step(step("a", true))
        .parallel([step("b", true).failure_reason("b is full"), step("c", true)])
        .build()
        .unwrap();
    let mut s = start(None);
    apply(
        &mut s,
        &[
            started("a", 1),
            succeeded("a"),
            started("b", 1),
            started("c", 1),
            failed("b", 1, true),
        ],
    );
    // c began and has no answer: it finishes first.
    assert_eq!(calls(next(&s, &def, 0)), [(1, 1, Phase::Action, 1, false)]);
    apply(&mut s, &[succeeded("c")]);
    assert_eq!(
        next(&s, &def, 0),
        Next::Record(SagaEvent::CompensationStarted {
            reason: "b is full".into(),
            step: Some("b".into())
        })
    );
    apply(
        &mut s,
        &[SagaEvent::CompensationStarted {
            reason: "b is full".into(),
            step: Some("b".into()),
        }],
    );
    // b refused (no effect): only c, then a.
    assert_eq!(
        calls(next(&s, &def, 0)),
        [(1, 1, Phase::Compensation, 1, true)]
    );
    apply(
        &mut s,
        &[SagaEvent::StepCompensationStarted {
            step: "c".into(),
            attempt: 1,
        }],
    );
    assert_eq!(
        calls(next(&s, &def, 0)),
        [(1, 1, Phase::Compensation, 1, false)]
    );
    apply(&mut s, &[SagaEvent::StepCompensated { step: "c".into() }]);
    assert_eq!(
        calls(next(&s, &def, 0)),
        [(0, 0, Phase::Compensation, 1, true)]
    );
    apply(&mut s, &[SagaEvent::StepCompensated { step: "a".into() }]);
    assert_eq!(
        next(&s, &def, 0),
        Next::Record(SagaEvent::SagaCompensated {
            reason: "b is full".into()
        })
    );
}

#[test]
fn reasons_deadlines_failures_and_stuck() {
    let once = Attempts::new(2, Backoff::Constant(Duration::from_secs(1)));
    let def = SagaDefinition::builder("t")
        .step(step("a", true).compensation_retry(once))
        .step(step("b", false))
        .step(step("c", true))
        .build()
        .unwrap();
    // A transient failure past its attempts is "<step> failed"; a refusal gives its reason.
    let mut s = start(None);
    apply(&mut s, &[started("a", 1), failed("a", 1, false)]);
    assert_eq!(
        next(&s, &def, 0),
        Next::Record(SagaEvent::CompensationStarted {
            reason: "a failed".into(),
            step: Some("a".into())
        })
    );
    let mut r = start(None);
    apply(&mut r, &[started("a", 1), failed("a", 1, true)]);
    assert_eq!(
        next(&r, &def, 0),
        Next::Record(SagaEvent::CompensationStarted {
            reason: "no".into(),
            step: Some("a".into())
        })
    );
    apply(
        &mut r,
        &[SagaEvent::CompensationStarted {
            reason: "no".into(),
            step: Some("a".into()),
        }],
    );
    assert_eq!(
        next(&r, &def, 0),
        Next::Record(SagaEvent::SagaFailed {
            reason: "no".into()
        })
    );

    // The deadline: at the millisecond it passes, not before.
    let mut d = start(Some(100));
    assert!(matches!(next(&d, &def, 99), Next::Calls(_)));
    assert_eq!(
        next(&d, &def, 100),
        Next::Record(SagaEvent::CompensationStarted {
            reason: DEADLINE_PASSED.into(),
            step: None
        })
    );
    apply(
        &mut d,
        &[
            started("a", 1),
            succeeded("a"),
            started("b", 1),
            SagaEvent::CompensationStarted {
                reason: DEADLINE_PASSED.into(),
                step: None,
            },
        ],
    );
    // b has no compensation: skipped; a (and an ambiguous b, if it had one) undone.
    assert_eq!(
        calls(next(&d, &def, 0)),
        [(0, 0, Phase::Compensation, 1, true)]
    );
    apply(
        &mut d,
        &[SagaEvent::CompensationFailed {
            step: "a".into(),
            attempt: 1,
            error: "down".into(),
        }],
    );
    let Next::Calls(again) = next(&d, &def, 0) else {
        panic!()
    };
    assert_eq!(
        (again[0].attempt, again[0].delay),
        (2, Duration::from_secs(1))
    );
    apply(
        &mut d,
        &[SagaEvent::CompensationFailed {
            step: "a".into(),
            attempt: 2,
            error: "down".into(),
        }],
    );
    assert_eq!(
        next(&d, &def, 0),
        Next::Record(SagaEvent::SagaStuck {
            step: "a".into(),
            error: "down".into()
        })
    );
    apply(
        &mut d,
        &[SagaEvent::SagaStuck {
            step: "a".into(),
            error: "down".into(),
        }],
    );
    assert_eq!(next(&d, &def, 0), Next::Done);
    // An operator's retry: attempts afresh, a new generation.
    apply(
        &mut d,
        &[SagaEvent::SagaRetried {
            by: "ops".into(),
            why: "fixed".into(),
            generation: 1,
        }],
    );
    assert_eq!(d.generation, 1);
    assert_eq!(
        calls(next(&d, &def, 0)),
        [(0, 0, Phase::Compensation, 1, true)]
    );
}

#[test]
fn retries_are_jittered_per_saga_and_step_and_the_same_after_a_restart() {
    let jitter = Attempts::new(
        3,
        Backoff::FullJitter {
            base: Duration::from_secs(10),
        },
    );
    let def = SagaDefinition::builder("t")
        .step(step("a", true).retry(jitter))
        .step(step("b", true).retry(jitter))
        .build()
        .unwrap();
    let delay = |saga: &str, failed: &[SagaEvent]| {
        let mut s = SagaState::started(
            SagaId::new(saga).unwrap(),
            &SagaEvent::SagaStarted {
                saga_type: "t".into(),
                input: json!({}),
                deadline_ms: None,
                owner: "o".into(),
            },
        )
        .unwrap();
        apply(&mut s, failed);
        match next(&s, &def, 0) {
            Next::Calls(c) => c[0].delay,
            other => panic!("{other:?}"),
        }
    };
    let a1 = [started("a", 1), failed("a", 1, false)];
    let b1 = [
        started("a", 1),
        succeeded("a"),
        started("b", 1),
        failed("b", 1, false),
    ];
    let x = delay("x", &a1);
    assert_eq!(x, delay("x", &a1), "the same saga, the same delay");
    assert_ne!(x, delay("y", &a1), "another saga, another delay");
    assert_ne!(x, delay("x", &b1), "another step, another delay");
    assert!(x < Duration::from_secs(10));
    assert_ne!(
        seed(&SagaId::new("x").unwrap(), "a", Phase::Action),
        seed(&SagaId::new("x").unwrap(), "a", Phase::Compensation)
    );
}

/// What a call answers in the model below.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Refused,
    Unknown,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![4 => Just(Answer::Ok), 1 => Just(Answer::Refused), 1 => Just(Answer::Unknown)]
}

proptest! {
    /// The policy driven to its end against random answers and crashes (an answer lost
    /// before it was logged): the saga always ends, and never leaves an effect behind: it
    /// completes with every step done, or every step that took effect (or may have) is
    /// undone, or it is stuck on a compensation.
    #[test]
    fn every_saga_ends_and_leaves_no_effect_behind(
        answers in proptest::collection::vec(answer(), 64),
        crashes in proptest::collection::vec(any::<bool>(), 64),
        stages in proptest::collection::vec(1usize..3, 1..4),
    ) {
        let mut b = SagaDefinition::builder("t");
        let mut names = Vec::new();
        for (i, width) in stages.iter().enumerate() {
            let stage: Vec<Step> = (0..*width)
                .map(|j| {
                    let name = format!("s{i}_{j}");
                    names.push(name.clone());
                    step(&name, true)
                        .retry(Attempts::new(2, Backoff::Constant(Duration::ZERO)))
                        .compensation_retry(Attempts::new(2, Backoff::Constant(Duration::ZERO)))
                })
                .collect();
            b = b.parallel(stage);
        }
        let def = b.build().unwrap();
        let mut state = start(None);
        let mut log: Vec<SagaEvent> = Vec::new();
        // Effects per (step, phase) in the model, applied once per key (generation).
        let mut effects: std::collections::HashMap<(String, Phase, u32), ()> = Default::default();
        let mut answers = answers.into_iter().cycle();
        let mut crashes = crashes.into_iter().cycle();
        for _round in 0..200 {
            match next(&state, &def, 0) {
                Next::Done => break,
                Next::Record(e) => { state.apply(&e); log.push(e); }
                Next::Calls(calls) => {
                    for c in calls.iter().filter(|c| c.log_start) {
                        let step = def.stages[c.stage][c.index].name.to_string();
                        let e = match c.phase {
                            Phase::Action => SagaEvent::StepStarted { step, attempt: c.attempt },
                            Phase::Compensation => SagaEvent::StepCompensationStarted { step, attempt: c.attempt },
                        };
                        state.apply(&e); log.push(e);
                    }
                    for c in &calls {
                        let step = def.stages[c.stage][c.index].name.to_string();
                        let key = (step.clone(), c.phase, state.generation);
                        // A service honouring the key answers a repeat with its first answer.
                        let a = if effects.contains_key(&key) { Answer::Ok } else { answers.next().unwrap() };
                        let took = matches!(a, Answer::Ok) || (matches!(a, Answer::Unknown) && c.phase == Phase::Action);
                        if took {
                            effects.insert(key, ());
                        }
                        if crashes.next().unwrap() {
                            continue; // the answer is lost: the log says the call began
                        }
                        let e = match (c.phase, a) {
                            (Phase::Action, Answer::Ok) => SagaEvent::StepSucceeded { step, output: json!(1) },
                            (Phase::Action, Answer::Refused) => SagaEvent::StepFailed { step, attempt: c.attempt, error: "no".into(), refused: true },
                            (Phase::Action, Answer::Unknown) => SagaEvent::StepFailed { step, attempt: c.attempt, error: "?".into(), refused: false },
                            (Phase::Compensation, Answer::Ok) => SagaEvent::StepCompensated { step },
                            (Phase::Compensation, _) => SagaEvent::CompensationFailed { step, attempt: c.attempt, error: "down".into() },
                        };
                        state.apply(&e); log.push(e);
                    }
                }
            }
        }
        prop_assert!(next(&state, &def, 0) == Next::Done, "the saga did not end: {:?}", state.status);
        // Folding the log gives the same state as applying it as it went.
        let mut all = vec![SagaEvent::SagaStarted { saga_type: "t".into(), input: json!({}), deadline_ms: None, owner: "o".into() }];
        all.extend(log.iter().cloned());
        prop_assert_eq!(SagaState::replay(state.id.clone(), all.iter()).unwrap(), state.clone());
        match state.status {
            SagaStatus::Completed => {
                for n in &names {
                    prop_assert_eq!(state.phase(n), &StepPhase::Succeeded);
                }
            }
            SagaStatus::Compensated | SagaStatus::Failed => {
                for n in &names {
                    let acted = effects.contains_key(&(n.clone(), Phase::Action, 0));
                    let undone = effects.contains_key(&(n.clone(), Phase::Compensation, 0));
                    prop_assert!(!acted || undone, "{} took effect and was not undone", n);
                }
                prop_assert_eq!(state.status == SagaStatus::Compensated, state.compensated_any);
            }
            SagaStatus::Stuck => prop_assert!(state.stuck.is_some()),
            other => prop_assert!(false, "ended {:?}", other),
        }
    }
}
