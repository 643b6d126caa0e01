//! The breaker's lock-free state machine against a plain reference model of the same
//! configuration: random sequences of calls starting, turning slow while in flight, finishing
//! (success, failure, ignored; fast or slow), being dropped, and time passing, over count and
//! time windows, every trip condition, half-open probes or ramps, fixed or exponential open
//! durations. After every step both must agree on the admission (with the time left open), the
//! state, the generation and the window.

use std::{collections::VecDeque, time::Duration};

use proptest::prelude::*;
use tower_patterns_breaker::{
    __private::{Admission, Machine, Permit, PermitKind},
    CircuitBreakerLayer, State,
};
use tower_patterns_core::{classify::Outcome, rng::SplitMix64};

const SEC: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
enum WindowCfg {
    Count(usize),
    /// `buckets` buckets of `width` nanoseconds each.
    Time {
        buckets: u64,
        width: u64,
    },
}

#[derive(Clone, Debug)]
enum OpenCfg {
    Fixed(u64),
    Exponential {
        base: u64,
        max: u64,
        multiplier: f64,
        jitter: f64,
    },
}

#[derive(Clone, Debug)]
struct Cfg {
    window: WindowCfg,
    /// As configured: may be larger than a count window.
    minimum_calls: u64,
    failure_rate: Option<f64>,
    failure_count: Option<u64>,
    consecutive: Option<u64>,
    slow_rate: Option<f64>,
    probes: u64,
    max_wait: Option<u64>,
    ramp: Vec<f64>,
    open: OpenCfg,
    seed: u64,
}

fn window() -> impl Strategy<Value = WindowCfg> {
    prop_oneof![
        (1usize..8).prop_map(WindowCfg::Count),
        (1u64..5, 1u64..4).prop_map(|(buckets, secs)| WindowCfg::Time {
            buckets,
            width: secs * SEC,
        }),
    ]
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.25), Just(0.5), Just(0.75), Just(1.0)]
}

fn open() -> impl Strategy<Value = OpenCfg> {
    prop_oneof![
        prop_oneof![Just(10 * SEC), Just(3 * SEC)].prop_map(OpenCfg::Fixed),
        (
            1u64..4,
            1u64..5,
            prop_oneof![Just(1.0), Just(2.0), Just(1.5)],
            prop_oneof![Just(0.0), Just(0.5), Just(1.0)],
        )
            .prop_map(|(base, extra, multiplier, jitter)| OpenCfg::Exponential {
                base: base * SEC,
                max: (base + extra * 2) * SEC,
                multiplier,
                jitter,
            }),
    ]
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        (window(), 1u64..10),
        (
            proptest::option::of(rate()),
            proptest::option::of(1u64..5),
            proptest::option::of(1u64..5),
            proptest::option::of(rate()),
        ),
        (
            1u64..5,
            proptest::option::of(prop_oneof![Just(5 * SEC), Just(20 * SEC)]),
            prop_oneof![
                3 => Just(Vec::new()),
                1 => Just(vec![0.5]),
                1 => Just(vec![0.25, 0.75]),
                1 => Just(vec![0.1, 0.5, 1.0]),
            ],
        ),
        open(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (window, minimum_calls),
                (failure_rate, failure_count, consecutive, slow_rate),
                (probes, max_wait, ramp),
                open,
                seed,
            )| {
                let mut cfg = Cfg {
                    minimum_calls,
                    failure_rate,
                    // A count window must be able to hold the failures it counts.
                    failure_count: match window {
                        WindowCfg::Count(n) => failure_count.map(|k| k.min(n as u64)),
                        WindowCfg::Time { .. } => failure_count,
                    },
                    window,
                    consecutive,
                    slow_rate,
                    probes,
                    max_wait,
                    ramp,
                    open,
                    seed,
                };
                if cfg.failure_rate.is_none()
                    && cfg.failure_count.is_none()
                    && cfg.consecutive.is_none()
                    && cfg.slow_rate.is_none()
                {
                    cfg.failure_rate = Some(0.5);
                }
                cfg
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Start,
    /// The call turns slow while in flight (only closed-window calls are timed).
    SlowInFlight(usize),
    Finish(usize, Outcome, bool),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..15).prop_map(|s| Op::Advance(s * SEC)),
        1 => (0u64..1_000).prop_map(|ms| Op::Advance(ms * 1_000_000)),
        4 => Just(Op::Start),
        1 => any::<usize>().prop_map(Op::SlowInFlight),
        4 => (any::<usize>(), prop_oneof![
            3 => Just(Outcome::Failure),
            2 => Just(Outcome::Success),
            1 => Just(Outcome::Ignored),
        ], prop_oneof![3 => Just(false), 1 => Just(true)])
            .prop_map(|(i, o, slow)| Op::Finish(i, o, slow)),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

/// One recorded outcome in the model's window.
#[derive(Clone, Copy, Debug)]
struct Call {
    at: u64,
    failed: bool,
    slow: bool,
}

/// The reference: the documented behaviour, written as plainly as possible.
#[derive(Debug)]
struct Model {
    cfg: Cfg,
    rng: SplitMix64,
    state: State,
    generation: u32,
    stage: usize,
    window: VecDeque<Call>,
    consecutive: u64,
    slow_in_flight: u64,
    trips: u32,
    open_until: u64,
    half_open_since: u64,
    issued: u64,
    successes: u64,
    failures: u64,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Self {
            rng: SplitMix64::new(cfg.seed),
            cfg,
            state: State::Closed,
            generation: 0,
            stage: 0,
            window: VecDeque::new(),
            consecutive: 0,
            slow_in_flight: 0,
            trips: 0,
            open_until: 0,
            half_open_since: 0,
            issued: 0,
            successes: 0,
            failures: 0,
        }
    }

    /// How long the circuit stays open after `trips` trips in a row: `base · multiplier^(trips
    /// − 1)`, at most `max`, less a random fraction `jitter` of it.
    fn open_for(&mut self) -> u64 {
        let unit = self.rng.next_f64(); // drawn at every trip, used or not
        match self.cfg.open {
            OpenCfg::Fixed(d) => d,
            OpenCfg::Exponential {
                base,
                max,
                multiplier,
                jitter,
            } => {
                let mut secs = base as f64 / SEC as f64;
                for _ in 1..self.trips {
                    secs *= multiplier;
                }
                let secs = secs.min(max as f64 / SEC as f64) * (1.0 - jitter * unit);
                (secs * 1e9) as u64
            }
        }
    }

    fn enter(&mut self, to: State, stage: usize, now: u64) {
        match to {
            State::Open => {
                self.trips += 1;
                self.open_until = now + self.open_for();
            }
            State::HalfOpen => self.half_open_since = now,
            State::Closed => {
                self.trips = 0;
                self.window.clear();
                self.consecutive = 0;
            }
            _ => unreachable!(),
        }
        self.state = to;
        self.stage = stage;
        self.generation += 1;
        self.issued = 0;
        self.successes = 0;
        self.failures = 0;
    }

    fn acquire(&mut self, now: u64) -> Admission {
        let permit = |generation, kind| Admission::Permit(Permit { generation, kind });
        loop {
            match self.state {
                State::Closed => return permit(self.generation, PermitKind::Closed),
                State::Open if now < self.open_until => {
                    return Admission::Rejected(Some(self.open_until - now));
                }
                State::Open => self.enter(State::HalfOpen, 0, now),
                State::HalfOpen => {
                    if self
                        .cfg
                        .max_wait
                        .is_some_and(|max| now - self.half_open_since >= max)
                    {
                        self.enter(State::Open, 0, now);
                    } else if !self.cfg.ramp.is_empty() {
                        let share = self.cfg.ramp[self.stage];
                        return if self.rng.next_f64() < share {
                            permit(self.generation, PermitKind::RampProbe)
                        } else {
                            Admission::Rejected(None)
                        };
                    } else if self.issued < self.cfg.probes {
                        self.issued += 1;
                        return permit(self.generation, PermitKind::Probe);
                    } else {
                        return Admission::Rejected(None);
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn record(&mut self, permit: Permit, outcome: Outcome, slow: bool, now: u64) {
        if permit.kind != PermitKind::Closed {
            if outcome == Outcome::Ignored {
                return self.release(permit);
            }
            if self.state != State::HalfOpen || self.generation != permit.generation {
                return;
            }
            if outcome == Outcome::Failure || slow {
                self.failures += 1;
            } else {
                self.successes += 1;
            }
            let probes_fail = match self.cfg.failure_rate {
                Some(threshold) => self.failures as f64 / self.cfg.probes as f64 >= threshold,
                None => self.failures > 0,
            };
            if probes_fail {
                self.enter(State::Open, 0, now);
            } else if self.successes + self.failures >= self.cfg.probes {
                if self.stage + 1 < self.cfg.ramp.len() {
                    self.enter(State::HalfOpen, self.stage + 1, now);
                } else {
                    self.enter(State::Closed, 0, now);
                }
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
        self.window.push_back(Call {
            at: now,
            failed,
            slow,
        });
        if let WindowCfg::Count(n) = self.cfg.window
            && self.window.len() > n
        {
            self.window.pop_front();
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        // Every recorded outcome is judged (resilience4j's rule).
        self.judge(now);
    }

    fn slow_started(&mut self, permit: Permit, now: u64) {
        if permit.kind == PermitKind::Closed {
            self.slow_in_flight += 1;
            if self.state == State::Closed {
                self.judge(now);
            }
        }
    }

    fn slow_ended(&mut self, permit: Permit) {
        if permit.kind == PermitKind::Closed {
            self.slow_in_flight -= 1;
        }
    }

    /// Trips the closed circuit when any condition holds.
    fn judge(&mut self, now: u64) {
        let (failures, calls, slow) = self.window_stats(now);
        // The minimum is at most what a count window holds.
        let minimum = match self.cfg.window {
            WindowCfg::Count(n) => self.cfg.minimum_calls.min(n as u64),
            WindowCfg::Time { .. } => self.cfg.minimum_calls,
        };
        let by_run = self.cfg.consecutive.is_some_and(|k| self.consecutive >= k);
        let by_count = self.cfg.failure_count.is_some_and(|k| failures >= k);
        let by_rate = self.cfg.failure_rate.is_some_and(|threshold| {
            calls >= minimum && calls > 0 && failures as f64 / calls as f64 >= threshold
        });
        let timed = calls + self.slow_in_flight;
        let by_slow = self.cfg.slow_rate.is_some_and(|threshold| {
            timed >= minimum
                && timed > 0
                && (slow + self.slow_in_flight) as f64 / timed as f64 >= threshold
        });
        if by_run || by_count || by_rate || by_slow {
            self.enter(State::Open, 0, now);
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

    /// Failures, calls and slow calls in the window at `now`. A time window holds the calls
    /// of the buckets that have not yet left it: a call made in bucket `at / width` leaves
    /// `buckets` buckets later.
    fn window_stats(&self, now: u64) -> (u64, u64, u64) {
        let live = |c: &&Call| match self.cfg.window {
            WindowCfg::Count(_) => true,
            WindowCfg::Time { buckets, width } => now / width - c.at / width < buckets,
        };
        let calls: Vec<&Call> = self.window.iter().filter(live).collect();
        (
            calls.iter().filter(|c| c.failed).count() as u64,
            calls.len() as u64,
            calls.iter().filter(|c| c.slow).count() as u64,
        )
    }
}

fn machine(cfg: &Cfg) -> std::sync::Arc<Machine> {
    let mut b = CircuitBreakerLayer::builder("model")
        .minimum_calls(cfg.minimum_calls)
        .half_open_probes(cfg.probes as u32)
        .max_wait_in_half_open(cfg.max_wait.map(Duration::from_nanos))
        .half_open_ramp(cfg.ramp.clone())
        .seed(cfg.seed);
    b = match cfg.window {
        WindowCfg::Count(n) => b.count_window(n as u32),
        WindowCfg::Time { buckets, width } => {
            b.time_window(Duration::from_nanos(buckets * width), buckets as u32)
        }
    };
    b = match cfg.failure_rate {
        Some(threshold) => b.failure_rate(threshold),
        None => b.no_failure_rate(),
    };
    if let Some(k) = cfg.failure_count {
        b = b.failure_count(k);
    }
    if let Some(k) = cfg.consecutive {
        b = b.consecutive_failures(k);
    }
    if let Some(rate) = cfg.slow_rate {
        b = b.slow_calls(Duration::from_secs(1), rate);
    }
    b = match cfg.open {
        OpenCfg::Fixed(d) => b.open_duration(Duration::from_nanos(d)),
        OpenCfg::Exponential {
            base,
            max,
            multiplier,
            jitter,
        } => b.open_duration_backoff(
            Duration::from_nanos(base),
            Duration::from_nanos(max),
            multiplier,
            jitter,
        ),
    };
    b.build().expect("valid configuration").machine()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_024, rng_seed: proptest::test_runner::RngSeed::Fixed(15), ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_the_reference_model(cfg in cfg(), ops in proptest::collection::vec(op(), 1..200)) {
        let real = machine(&cfg);
        let mut model = Model::new(cfg);
        let mut now = 0u64;
        // Calls in flight: the permit, and whether it has turned slow.
        let mut in_flight: Vec<(Permit, bool)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(d) => now += d,
                Op::Start => {
                    let got = real.acquire(|| now, true);
                    let want = model.acquire(now);
                    prop_assert_eq!(got, want, "admission at step {}", step);
                    if let Admission::Permit(p) = got {
                        in_flight.push((p, false));
                    }
                }
                Op::SlowInFlight(i) if !in_flight.is_empty() => {
                    let i = i % in_flight.len();
                    let (p, slow) = &mut in_flight[i];
                    if !*slow && p.kind == PermitKind::Closed {
                        *slow = true;
                        real.slow_call_started(*p, now);
                        model.slow_started(*p, now);
                    }
                }
                Op::Finish(i, outcome, slow) if !in_flight.is_empty() => {
                    let (p, slow_in_flight) = in_flight.remove(i % in_flight.len());
                    if slow_in_flight {
                        real.slow_call_ended(p);
                        model.slow_ended(p);
                    }
                    let slow = slow || slow_in_flight;
                    real.record(p, outcome, slow, || now);
                    model.record(p, outcome, slow, now);
                }
                Op::Drop(i) if !in_flight.is_empty() => {
                    let (p, slow_in_flight) = in_flight.remove(i % in_flight.len());
                    if slow_in_flight {
                        real.slow_call_ended(p);
                        model.slow_ended(p);
                    }
                    real.release(p);
                    model.release(p);
                }
                Op::SlowInFlight(_) | Op::Finish(..) | Op::Drop(_) => {}
            }
            prop_assert_eq!(real.state(), model.state, "state at step {}", step);
            prop_assert_eq!(real.generation(), model.generation, "generation at step {}", step);
            let (failures, calls, _) = model.window_stats(now);
            prop_assert_eq!(real.window_stats(now), (failures, calls), "window at step {}", step);
        }
    }
}

/// Records one outcome of a call admitted at `now`; returns how often the machine read the
/// clock while recording it.
fn clock_reads_of_record(real: &Machine, outcome: Outcome, now: u64) -> usize {
    let Admission::Permit(permit) = real.acquire(|| now, true) else {
        panic!("admitted")
    };
    let reads = std::cell::Cell::new(0);
    real.record(permit, outcome, false, || {
        reads.set(reads.get() + 1);
        now
    });
    reads.get()
}

#[test]
fn recording_in_a_time_window_reads_the_clock_once() {
    // 10 buckets of 1 s, minimum 4 calls, 50%.
    let cfg = |buckets| {
        CircuitBreakerLayer::builder("clock")
            .time_window(Duration::from_secs(buckets), buckets as u32)
            .minimum_calls(4)
            .failure_rate(0.5)
            .build()
            .unwrap()
            .machine()
    };
    let real = cfg(10);
    // Failures, a success below the minimum, and the success that trips: one read each (the
    // trip takes its time from the same read).
    for (step, outcome) in [
        Outcome::Failure,
        Outcome::Failure,
        Outcome::Success,
        Outcome::Success,
    ]
    .into_iter()
    .enumerate()
    {
        let now = step as u64 * SEC;
        assert_eq!(clock_reads_of_record(&real, outcome, now), 1, "step {step}");
    }
    assert_eq!(real.state(), State::Open, "4 calls, 2 failed");
    // A success in a window that holds no failure is not judged: still one read.
    let real = cfg(10);
    assert_eq!(clock_reads_of_record(&real, Outcome::Success, 0), 1);

    // A count window reads it only to trip.
    let real = CircuitBreakerLayer::builder("count")
        .count_window(4)
        .minimum_calls(4)
        .failure_rate(0.5)
        .build()
        .unwrap()
        .machine();
    assert_eq!(clock_reads_of_record(&real, Outcome::Success, 0), 0);
    assert_eq!(clock_reads_of_record(&real, Outcome::Failure, 0), 0);
    assert_eq!(clock_reads_of_record(&real, Outcome::Success, 0), 0);
    assert_eq!(
        clock_reads_of_record(&real, Outcome::Failure, 0),
        1,
        "trips"
    );
}

#[test]
fn a_success_after_the_failures_left_the_time_window_can_still_trip() {
    // 4 buckets of 1 s, minimum 3 calls, 60%. Successes at 0 s and 1 s, failures at 2 s and
    // 3 s: 2 of 4, closed. At 5 s the successes have left the window (2 failures of 2 calls,
    // below the minimum, not judged as nothing was recorded); a success then makes 2 of 3:
    // it trips, though a success lowers the rate of the window it joins.
    let real = CircuitBreakerLayer::builder("expiry")
        .time_window(Duration::from_secs(4), 4)
        .minimum_calls(3)
        .failure_rate(0.6)
        .build()
        .unwrap()
        .machine();
    for (at, outcome) in [
        (0, Outcome::Success),
        (1, Outcome::Success),
        (2, Outcome::Failure),
        (3, Outcome::Failure),
    ] {
        clock_reads_of_record(&real, outcome, at * SEC);
        assert_eq!(real.state(), State::Closed, "at {at} s");
    }
    clock_reads_of_record(&real, Outcome::Success, 5 * SEC);
    assert_eq!(real.state(), State::Open, "2 of 3 failed");
}

#[test]
fn a_success_beside_a_call_slow_in_flight_can_trip() {
    // A time window, minimum 2 calls, 50% slow. One call turns slow in flight (1 call: below
    // the minimum); a success then makes 2 calls, 1 slow: it trips, though the window holds
    // no failure and no slow outcome.
    let real = CircuitBreakerLayer::builder("slow-in-flight")
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(2)
        .no_failure_rate()
        .slow_calls(Duration::from_secs(1), 0.5)
        .build()
        .unwrap()
        .machine();
    let Admission::Permit(slow) = real.acquire(|| 0, true) else {
        panic!("admitted")
    };
    real.slow_call_started(slow, SEC);
    assert_eq!(real.state(), State::Closed, "1 call: below the minimum");
    clock_reads_of_record(&real, Outcome::Success, SEC);
    assert_eq!(real.state(), State::Open, "1 of 2 slow");
}
