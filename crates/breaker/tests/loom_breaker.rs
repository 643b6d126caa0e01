//! Loom model of the breaker's state machine under concurrent calls: closed → open →
//! half-open → closed. Run by `scripts/test` as
//! `RUSTFLAGS="--cfg loom" cargo test -p tower-patterns-breaker --test loom_breaker --release`.
#![cfg(loom)]

use std::{sync::Arc, time::Duration};

use loom::thread;
use tower_patterns_breaker::{
    __private::{Admission, Machine, PermitKind},
    CircuitBreakerLayer, State,
};
use tower_patterns_core::classify::Outcome;

fn machine(probes: u32) -> Arc<Machine> {
    // A std `Arc`: the machine's own atomics are loom's under `--cfg loom`.
    CircuitBreakerLayer::builder("loom")
        .count_window(2)
        .minimum_calls(2)
        .failure_rate(0.5)
        .half_open_probes(probes)
        .open_duration(Duration::from_nanos(5))
        .max_wait_in_half_open(None)
        .build()
        .unwrap()
        .machine()
}

fn fail_once(m: &Machine, now: u64) {
    if let Admission::Permit(p) = m.acquire(|| now, true) {
        m.record(p, Outcome::Failure, false, || now);
    }
}

/// Two failures recorded at once trip the circuit exactly once.
#[test]
fn concurrent_failures_trip_once() {
    loom::model(|| {
        let m = machine(1);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || fail_once(&m, 0))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.state(), State::Open);
        assert_eq!(m.generation(), 1, "exactly one transition");
    });
}

/// Once the open time is over, racing callers move it to half-open once and get at most
/// the permitted number of probes; the probes' verdict closes it exactly once.
#[test]
fn half_open_admits_at_most_n_probes_and_loses_no_transition() {
    loom::model(|| {
        let m = machine(1);
        fail_once(&m, 0);
        fail_once(&m, 0);
        assert_eq!(m.state(), State::Open);

        let threads: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || match m.acquire(|| 10, true) {
                    Admission::Permit(p) => {
                        m.record(p, Outcome::Success, false, || 10);
                        u32::from(p.kind == PermitKind::Probe)
                    }
                    Admission::Rejected(_) => 0,
                })
            })
            .collect();
        let probes: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // One probe slot: exactly one probe, whatever the interleaving. The other caller was
        // rejected (the slot was taken) or, if it came after the probe closed the circuit,
        // admitted as an ordinary closed-state call.
        assert_eq!(probes, 1);
        assert_eq!(m.state(), State::Closed);
        // open → half-open → closed: two transitions after the trip, never more.
        assert_eq!(m.generation(), 3);
    });
}

/// A probe that is dropped gives its permit back while another caller races for it; the
/// count of probes in flight never passes the limit.
#[test]
fn dropped_probe_returns_its_permit() {
    loom::model(|| {
        let m = machine(1);
        fail_once(&m, 0);
        fail_once(&m, 0);
        let Admission::Permit(first) = m.acquire(|| 10, true) else {
            panic!("the first caller after the open time is a probe");
        };
        let dropper = {
            let m = m.clone();
            thread::spawn(move || m.release(first))
        };
        let racer = {
            let m = m.clone();
            thread::spawn(move || matches!(m.acquire(|| 10, true), Admission::Permit(_)))
        };
        dropper.join().unwrap();
        let racer_admitted = racer.join().unwrap();
        assert_eq!(m.state(), State::HalfOpen);
        // Afterwards exactly one permit is free or taken: the racer's, or the returned one.
        let again = matches!(m.acquire(|| 10, true), Admission::Permit(_));
        assert!(racer_admitted ^ again, "one probe slot, used once");
    });
}
