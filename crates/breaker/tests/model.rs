//! The breaker's lock-free state machine against a plain reference model of the same
//! configuration: random sequences of calls starting, finishing (success, failure, ignored),
//! being dropped, and time passing. After every step both must agree on the admission, the
//! state, the generation and the window.

use std::{collections::VecDeque, time::Duration};

use proptest::prelude::*;
use tower_patterns_breaker::{
    __private::{Admission, Machine, Permit, PermitKind},
    CircuitBreakerLayer, State,
};
use tower_patterns_core::classify::Outcome;

const SEC: u64 = 1_000_000_000;
const OPEN: u64 = 10 * SEC;

#[derive(Clone, Debug)]
struct Cfg {
    window: usize,
    minimum_calls: u64,
    failure_rate: f64,
    consecutive: Option<u64>,
    probes: u64,
    max_wait: Option<u64>,
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        1usize..8,
        0.0f64..1.0,
        prop_oneof![Just(0.25), Just(0.5), Just(0.75), Just(1.0)],
    )
        .prop_flat_map(|(window, min_frac, failure_rate)| {
            (
                Just(window),
                Just(((window as f64 * min_frac) as u64).max(1)),
                Just(failure_rate),
                proptest::option::of(1u64..5),
                1u64..5,
                proptest::option::of(prop_oneof![Just(5 * SEC), Just(20 * SEC)]),
            )
        })
        .prop_map(
            |(window, minimum_calls, failure_rate, consecutive, probes, max_wait)| Cfg {
                window,
                minimum_calls,
                failure_rate,
                consecutive,
                probes,
                max_wait,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Start,
    Finish(usize, Outcome),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..15).prop_map(|s| Op::Advance(s * SEC)),
        4 => Just(Op::Start),
        4 => (any::<usize>(), prop_oneof![
            3 => Just(Outcome::Failure),
            2 => Just(Outcome::Success),
            1 => Just(Outcome::Ignored),
        ])
            .prop_map(|(i, o)| Op::Finish(i, o)),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

/// The reference: the documented behaviour, written as plainly as possible.
#[derive(Debug)]
struct Model {
    cfg: Cfg,
    state: State,
    generation: u32,
    window: VecDeque<bool>,
    consecutive: u64,
    open_until: u64,
    half_open_since: u64,
    issued: u64,
    successes: u64,
    failures: u64,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Self {
            cfg,
            state: State::Closed,
            generation: 0,
            window: VecDeque::new(),
            consecutive: 0,
            open_until: 0,
            half_open_since: 0,
            issued: 0,
            successes: 0,
            failures: 0,
        }
    }

    fn enter(&mut self, to: State, now: u64) {
        match to {
            State::Open => self.open_until = now + OPEN,
            State::HalfOpen => self.half_open_since = now,
            State::Closed => {
                self.window.clear();
                self.consecutive = 0;
            }
            _ => unreachable!(),
        }
        self.state = to;
        self.generation += 1;
        self.issued = 0;
        self.successes = 0;
        self.failures = 0;
    }

    fn acquire(&mut self, now: u64) -> Admission {
        loop {
            match self.state {
                State::Closed => {
                    return Admission::Permit(Permit {
                        generation: self.generation,
                        kind: PermitKind::Closed,
                    });
                }
                State::Open if now < self.open_until => {
                    return Admission::Rejected(Some(self.open_until - now));
                }
                State::Open => self.enter(State::HalfOpen, now),
                State::HalfOpen => {
                    if self
                        .cfg
                        .max_wait
                        .is_some_and(|max| now - self.half_open_since >= max)
                    {
                        self.enter(State::Open, now);
                    } else if self.issued < self.cfg.probes {
                        self.issued += 1;
                        return Admission::Permit(Permit {
                            generation: self.generation,
                            kind: PermitKind::Probe,
                        });
                    } else {
                        return Admission::Rejected(None);
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn record(&mut self, permit: Permit, outcome: Outcome, now: u64) {
        if permit.kind == PermitKind::Probe {
            if outcome == Outcome::Ignored {
                return self.release(permit);
            }
            if self.state != State::HalfOpen || self.generation != permit.generation {
                return;
            }
            if outcome == Outcome::Failure {
                self.failures += 1;
            } else {
                self.successes += 1;
            }
            if self.failures as f64 / self.cfg.probes as f64 >= self.cfg.failure_rate {
                self.enter(State::Open, now);
            } else if self.successes + self.failures >= self.cfg.probes {
                self.enter(State::Closed, now);
            }
            return;
        }
        if outcome == Outcome::Ignored
            || self.state != State::Closed
            || self.generation != permit.generation
        {
            return;
        }
        let failed = outcome == Outcome::Failure;
        self.window.push_back(failed);
        if self.window.len() > self.cfg.window {
            self.window.pop_front();
        }
        if !failed {
            self.consecutive = 0;
            return;
        }
        self.consecutive += 1;
        let calls = self.window.len() as u64;
        let failures = self.window.iter().filter(|f| **f).count() as u64;
        let by_run = self.cfg.consecutive.is_some_and(|k| self.consecutive >= k);
        let by_rate = calls >= self.cfg.minimum_calls
            && failures as f64 / calls as f64 >= self.cfg.failure_rate;
        if by_run || by_rate {
            self.enter(State::Open, now);
        }
    }

    fn release(&mut self, permit: Permit) {
        if permit.kind == PermitKind::Probe
            && self.state == State::HalfOpen
            && self.generation == permit.generation
            && self.issued > 0
        {
            self.issued -= 1;
        }
    }

    fn window_stats(&self) -> (u64, u64) {
        let failures = self.window.iter().filter(|f| **f).count() as u64;
        (failures, self.window.len() as u64)
    }
}

fn machine(cfg: &Cfg) -> Machine {
    let mut b = CircuitBreakerLayer::builder("model")
        .count_window(cfg.window as u32)
        .minimum_calls(cfg.minimum_calls)
        .failure_rate(cfg.failure_rate)
        .half_open_probes(cfg.probes as u32)
        .open_duration(Duration::from_nanos(OPEN))
        .max_wait_in_half_open(cfg.max_wait.map(Duration::from_nanos));
    if let Some(k) = cfg.consecutive {
        b = b.consecutive_failures(k);
    }
    b.build_machine().expect("valid configuration")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_the_reference_model(cfg in cfg(), ops in proptest::collection::vec(op(), 1..200)) {
        let real = machine(&cfg);
        let mut model = Model::new(cfg);
        let mut now = 0u64;
        let mut in_flight: Vec<Permit> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(d) => now += d,
                Op::Start => {
                    let got = real.acquire(|| now, true);
                    let want = model.acquire(now);
                    prop_assert_eq!(got, want, "admission at step {}", step);
                    if let Admission::Permit(p) = got {
                        in_flight.push(p);
                    }
                }
                Op::Finish(i, outcome) if !in_flight.is_empty() => {
                    let p = in_flight.remove(i % in_flight.len());
                    real.record(p, outcome, false, || now);
                    model.record(p, outcome, now);
                }
                Op::Drop(i) if !in_flight.is_empty() => {
                    let p = in_flight.remove(i % in_flight.len());
                    real.release(p);
                    model.release(p);
                }
                Op::Finish(..) | Op::Drop(_) => {}
            }
            prop_assert_eq!(real.state(), model.state, "state at step {}", step);
            prop_assert_eq!(real.generation(), model.generation, "generation at step {}", step);
            prop_assert_eq!(real.window_stats(now), model.window_stats(), "window at step {}", step);
        }
    }
}
