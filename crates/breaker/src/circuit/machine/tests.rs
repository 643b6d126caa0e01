//! Unit tests of the state machine.

use std::time::Duration;

use super::*;

#[test]
fn a_transition_from_an_earlier_phase_of_the_same_state_is_refused() {
    let m = crate::CircuitBreakerLayer::builder("phases")
        .count_window(1)
        .minimum_calls(1)
        .half_open_probes(1)
        .open_duration(Duration::from_nanos(10))
        .build()
        .unwrap()
        .machine();
    let fail = |now| {
        let Admission::Permit(p) = m.acquire(|| now, true) else {
            panic!("admitted at {now}");
        };
        m.record(p, Outcome::Failure, false, || now);
    };
    fail(0);
    let first_open = m.word();
    assert_eq!(first_open.state(), State::Open);
    fail(10); // the probe fails: open again, two transitions later
    let reopened = m.word();
    assert_eq!(reopened.state(), State::Open);
    assert_eq!(reopened.generation(), first_open.generation() + 2);
    assert!(
        !m.transition(first_open, State::HalfOpen, 0, Reason::OpenElapsed, 20),
        "a caller that saw the first open phase cannot end the second"
    );
    assert_eq!(m.word(), reopened);
    assert!(m.transition(reopened, State::HalfOpen, 0, Reason::OpenElapsed, 40));
    assert_eq!(
        format!("{m:?}"),
        "Machine { name: \"phases\", word: Word { state: HalfOpen, generation: 4, \
         stage: 0, issued: 0, successes: 0, failures: 0 }, .. }"
    );
}
