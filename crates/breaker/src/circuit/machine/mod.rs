//! The breaker's state machine: lock-free on the request path, time injected.
//!
//! One `AtomicU64` holds the state, its generation, the ramp stage and the half-open probe
//! counters, so the closed path is a single load, probes are admitted and judged with one
//! compare-and-swap each, and no probe can be counted in a generation it did not start in.
//! Transitions take a mutex (they are rare), re-check the generation, write the side data
//! (open deadline, half-open start) and then publish the new word, so a reader that sees a
//! state also sees its data. Every transition bumps the generation: outcomes of calls admitted
//! under an older one are dropped, and exactly one thread performs each transition.
//!
//! Time is passed in as nanoseconds since the breaker's base instant, which keeps this module
//! free of clocks: the service reads `tokio::time`, the loom model and the reference-model
//! property test pass numbers.

use std::{
    fmt,
    sync::{Arc as StdArc, Weak},
};

use tower_patterns_core::classify::Outcome;

use crate::{
    circuit::config::{Config, Reason},
    circuit::observer::Observer,
    circuit::state::{
        Admission, FAIL_SHIFT, FIELD_MASK, ISSUED_SHIFT, Permit, PermitKind, SUCC_SHIFT, State,
        Word,
    },
    circuit::window::{CountWindow, FAILURE, SLOW, TimeWindow, Window},
    rng::AtomicRng,
    sync::{AtomicU64, Mutex, Ordering, lock},
};

#[derive(Debug, Default)]
struct TransitionData {
    consecutive_trips: u32,
}

/// The state machine of one breaker.
pub struct Machine {
    word: AtomicU64,
    window: Window,
    consecutive: AtomicU64,
    slow_in_flight: AtomicU64,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    entered_at: AtomicU64,
    rejected: AtomicU64,
    metrics_only: AtomicU64,
    rng: AtomicRng,
    transitions: Mutex<TransitionData>,
    /// This machine, for the automatic transitions' timers (empty when not shared).
    me: Weak<Machine>,
    /// The slow-call duration in nanoseconds, kept beside the hot fields.
    pub(crate) slow_call: Option<u64>,
    pub(crate) config: StdArc<Config>,
    pub(crate) observer: Observer,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.config.name)
            .field("word", &Word(self.word.load(Ordering::Relaxed)))
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A shared machine, whose automatic transitions (when configured) can find it.
    pub(crate) fn new_shared(config: StdArc<Config>, observer: Observer) -> StdArc<Self> {
        StdArc::new_cyclic(|me| Self::with_self(config, observer, me.clone()))
    }

    fn with_self(config: StdArc<Config>, observer: Observer, me: Weak<Self>) -> Self {
        let window = match config.window {
            crate::SlidingWindow::Count(n) => Window::Count(CountWindow::new(n as usize)),
            crate::SlidingWindow::Time { size, buckets } => Window::Time(TimeWindow::new(
                buckets as usize,
                crate::circuit::config::saturating_nanos(size / buckets),
            )),
        };
        observer.init(State::Closed);
        Self {
            word: AtomicU64::new(Word::new(State::Closed, 0, 0).0),
            window,
            consecutive: AtomicU64::new(0),
            slow_in_flight: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            entered_at: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            metrics_only: AtomicU64::new(0),
            rng: AtomicRng::new(config.seed),
            transitions: Mutex::new(TransitionData::default()),
            me,
            slow_call: config
                .slow_call_duration
                .map(crate::circuit::config::saturating_nanos),
            config,
            observer,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.word().state()
    }

    /// The generation now (bumped by every transition).
    pub fn generation(&self) -> u32 {
        self.word().generation()
    }

    /// Failures and calls in the closed window.
    pub fn window_stats(&self, now: u64) -> (u64, u64) {
        let stats = self.window.stats(now);
        (stats.failures, stats.calls)
    }

    #[inline]
    pub(crate) fn word(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// Nanoseconds since the breaker's base instant, on tokio's clock.
    pub(crate) fn now(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.observer.base());
        crate::circuit::config::saturating_nanos(elapsed)
    }

    /// Admits or rejects one call. `now` is read only when the circuit is not closed;
    /// `count` is false for backpressure waits, which are not rejections.
    #[inline]
    pub fn acquire(&self, now: impl FnOnce() -> u64, count: bool) -> Admission {
        let word = self.word();
        if word.is_closed() {
            return Admission::Permit(Permit {
                generation: word.generation(),
                kind: PermitKind::Closed,
            });
        }
        if word.state() == State::Disabled {
            return Admission::Permit(Permit {
                generation: word.generation(),
                kind: PermitKind::Free,
            });
        }
        self.acquire_slow(word, now(), count)
    }

    #[cold]
    fn acquire_slow(&self, mut word: Word, now: u64, count: bool) -> Admission {
        loop {
            if let Some((to, reason)) = self.due(word, now) {
                self.transition(word, to, 0, reason, now);
                word = self.word();
                continue;
            }
            let permit = |kind| {
                Admission::Permit(Permit {
                    generation: word.generation(),
                    kind,
                })
            };
            match word.state() {
                State::Closed => return permit(PermitKind::Closed),
                State::Disabled => return permit(PermitKind::Free),
                State::ForcedOpen => return self.reject(None, false, count),
                State::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    return self.reject(Some(until.saturating_sub(now)), true, count);
                }
                State::HalfOpen => {
                    if !self.config.ramp.is_empty() {
                        let stage = word.stage() as usize;
                        let share = self.config.ramp.get(stage).copied().unwrap_or(1.0);
                        if self.rng.next_f64() < share {
                            return permit(PermitKind::RampProbe);
                        }
                        return self.reject(None, true, count);
                    }
                    if word.issued() >= u64::from(self.config.probes) {
                        return self.reject(None, true, count);
                    }
                    let next = Word(word.0 + (1 << ISSUED_SHIFT));
                    match self.word.compare_exchange_weak(
                        word.0,
                        next.0,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return permit(PermitKind::Probe),
                        Err(actual) => word = Word(actual),
                    }
                }
            }
        }
    }

    /// The timeout that has run out in the phase of `word` at `now`, if any: the open
    /// duration (to half-open) or the maximum wait in half-open (back to open).
    fn due(&self, word: Word, now: u64) -> Option<(State, Reason)> {
        self.deadline(word)
            .filter(|&(at, ..)| now >= at)
            .map(|(_, to, reason)| (to, reason))
    }

    /// When the phase of `word` times out, and into what.
    fn deadline(&self, word: Word) -> Option<(u64, State, Reason)> {
        match word.state() {
            State::Open => Some((
                self.open_until.load(Ordering::Acquire),
                State::HalfOpen,
                Reason::OpenElapsed,
            )),
            State::HalfOpen => self.config.max_wait_in_half_open.map(|max| {
                let since = self.half_open_since.load(Ordering::Acquire);
                (
                    since.saturating_add(nanos(max)),
                    State::Open,
                    Reason::HalfOpenTimeout,
                )
            }),
            _ => None,
        }
    }

    /// The state a call arriving at `now` would find: an open circuit whose duration has
    /// run out reads as half-open, a half-open one past its maximum wait as open. Changes
    /// nothing.
    pub(crate) fn state_at(&self, now: u64) -> State {
        let word = self.word();
        self.due(word, now).map_or(word.state(), |(to, _)| to)
    }

    /// Makes the transition whose timeout has run out at `now`, as the next call would (the
    /// automatic transitions' timer calls this).
    pub(crate) fn expire(&self, now: u64) {
        let word = self.word();
        if let Some((to, reason)) = self.due(word, now) {
            self.transition(word, to, 0, reason, now);
        }
    }

    fn reject(&self, retry_after: Option<u64>, dry_run_applies: bool, count: bool) -> Admission {
        if count {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            self.observer.rejected();
        }
        if dry_run_applies && self.metrics_only.load(Ordering::Relaxed) != 0 {
            // Metrics-only: report the rejection, let the call through uncounted.
            return Admission::Permit(Permit {
                generation: self.word().generation(),
                kind: PermitKind::Free,
            });
        }
        Admission::Rejected(retry_after)
    }

    /// Records the outcome of an admitted call; `slow` when it took longer than the
    /// slow-call duration. `now` is read only when needed: for a time window, or for a
    /// transition (which must know the time to set the open deadline).
    #[inline]
    pub fn record(&self, permit: Permit, outcome: Outcome, slow: bool, now: impl Fn() -> u64) {
        self.observer.outcome(outcome);
        match permit.kind {
            PermitKind::Free => {}
            PermitKind::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let word = self.word();
                if !word.is_closed() || word.generation() != permit.generation {
                    return;
                }
                let failed = outcome == Outcome::Failure;
                let flags = if failed { FAILURE } else { 0 } | if slow { SLOW } else { 0 };
                let at = if self.window.needs_clock() { now() } else { 0 };
                let changed = self.window.record(flags, at);
                let consecutive = if failed {
                    self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    // Read first: a run of successes then writes nothing here.
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                    0
                };
                // Every outcome is judged once the window holds enough calls: a success can be
                // the call that brings it to the minimum. One that changed nothing the window
                // holds (a success over a success), or one in a window that holds no failure,
                // no slow call and no call slow in flight, cannot trip: it is not judged.
                // The window's check comes first: its fence orders this success's record
                // before the read of the calls slow in flight, as `slow_call_started` orders
                // its increment before its own sum, so one of the two always sees the other.
                if flags != 0
                    || (changed
                        && (!self.window.holds_no_failure_or_slow(at)
                            || self.slow_in_flight.load(Ordering::Relaxed) != 0))
                {
                    self.evaluate_closed(word, consecutive, at, now);
                }
            }
            PermitKind::Probe | PermitKind::RampProbe => {
                if outcome == Outcome::Ignored {
                    self.release(permit);
                    return;
                }
                // A slow probe counts against closing, as a failure does.
                let failed = outcome == Outcome::Failure || slow;
                self.record_probe(permit, failed, now);
            }
        }
    }

    fn record_probe(&self, permit: Permit, failed: bool, now: impl Fn() -> u64) {
        let delta = if failed {
            1 << FAIL_SHIFT
        } else {
            1 << SUCC_SHIFT
        };
        let mut word = self.word();
        let next = loop {
            if word.state() != State::HalfOpen || word.generation() != permit.generation {
                return;
            }
            if word.successes() + word.failures() >= FIELD_MASK {
                return; // a full field: the verdict is already being made
            }
            let next = Word(word.0 + delta);
            match self.word.compare_exchange_weak(
                word.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break next,
                Err(actual) => word = Word(actual),
            }
        };
        let probes = u64::from(self.config.probes);
        if self.config.probes_fail(next.failures()) {
            self.transition(next, State::Open, 0, Reason::ProbesFailed, now());
        } else if next.successes() + next.failures() >= probes {
            let stage = next.stage() + 1;
            if (stage as usize) < self.config.stages() {
                self.transition(next, State::HalfOpen, stage, Reason::StagePassed, now());
            } else {
                self.transition(next, State::Closed, 0, Reason::ProbesPassed, now());
            }
        }
    }

    /// Gives back the permit of a call that ended without an outcome (dropped, or ignored).
    pub fn release(&self, permit: Permit) {
        if permit.kind != PermitKind::Probe {
            return;
        }
        let mut word = self.word();
        loop {
            if word.state() != State::HalfOpen
                || word.generation() != permit.generation
                || word.issued() == 0
            {
                return;
            }
            let next = Word(word.0 - (1 << ISSUED_SHIFT));
            match self.word.compare_exchange_weak(
                word.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = Word(actual),
            }
        }
        self.observer.permit_released();
    }

    /// A call has been in flight for longer than the slow-call duration.
    pub fn slow_call_started(&self, permit: Permit, now: u64) {
        if permit.kind != PermitKind::Closed {
            return;
        }
        self.slow_in_flight.fetch_add(1, Ordering::Relaxed);
        // Judged now, whatever the generation the call started in: it counts in the rate
        // from now until it ends, and a later success over an unchanged window is not judged.
        let word = self.word();
        if word.is_closed() {
            self.evaluate_closed(word, self.consecutive.load(Ordering::Relaxed), now, || now);
        }
    }

    /// A call that was counted as slow in flight has finished.
    pub fn slow_call_ended(&self, permit: Permit) {
        if permit.kind == PermitKind::Closed {
            self.slow_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Judges the closed window at `at` (the time the outcome was recorded; unused by a count
    /// window, for which `now` is read only to trip).
    fn evaluate_closed(&self, word: Word, consecutive: u64, at: u64, now: impl Fn() -> u64) {
        let stats = self.window.stats(at);
        let slow_in_flight = self.slow_in_flight.load(Ordering::Relaxed);
        if let Some(reason) = self.config.trip_reason(stats, consecutive, slow_in_flight) {
            let at = if self.window.needs_clock() { at } else { now() };
            self.transition(word, State::Open, 0, reason, at);
        }
    }

    /// Moves from the phase of `from` to `to`, unless another thread already left it.
    /// Returns whether this call made the transition.
    pub(crate) fn transition(
        &self,
        from: Word,
        to: State,
        stage: u32,
        reason: Reason,
        now: u64,
    ) -> bool {
        let mut data = lock(&self.transitions);
        let current = self.word();
        if !current.same_phase(from) {
            return false;
        }
        self.enter(&mut data, current, to, stage, reason, now);
        true
    }

    /// Moves to `to` from whatever the state is (handle operations).
    pub(crate) fn force(&self, to: State, reason: Reason, now: u64) {
        let mut data = lock(&self.transitions);
        let current = self.word();
        self.enter(&mut data, current, to, 0, reason, now);
    }

    fn enter(
        &self,
        data: &mut TransitionData,
        current: Word,
        to: State,
        stage: u32,
        reason: Reason,
        now: u64,
    ) {
        let mut deadline = None;
        match to {
            State::Open => {
                data.consecutive_trips = data.consecutive_trips.saturating_add(1);
                let open_for = self
                    .config
                    .open_duration
                    .nanos(data.consecutive_trips, self.rng.next_f64());
                let until = now.saturating_add(open_for);
                self.open_until.store(until, Ordering::Release);
                deadline = Some(until);
            }
            State::HalfOpen => {
                self.half_open_since.store(now, Ordering::Release);
                deadline = self
                    .config
                    .max_wait_in_half_open
                    .map(|max| now.saturating_add(nanos(max)));
            }
            State::Closed => {
                if reason != Reason::Forced {
                    data.consecutive_trips = 0;
                }
                self.window.clear();
                self.consecutive.store(0, Ordering::Relaxed);
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.entered_at.store(now, Ordering::Release);
        let next = Word::new(to, current.next_generation(), stage);
        self.word.store(next.0, Ordering::Release);
        self.observer
            .transition(current.state(), to, reason, stage, now);
        if self.config.automatic_transition
            && let Some(deadline) = deadline
        {
            self.schedule(deadline);
        }
    }

    /// Starts a timer that makes the transition due at `deadline` (nanoseconds since the
    /// base instant) without waiting for a call. It holds the machine weakly, so a dropped
    /// breaker ends it; without a Tokio runtime (or a shared machine) nothing is scheduled.
    #[cfg(not(loom))]
    fn schedule(&self, deadline: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.me.strong_count() == 0 {
            return;
        }
        let me = self.me.clone();
        let at = self.observer.base() + std::time::Duration::from_nanos(deadline);
        drop(runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(machine) = me.upgrade() {
                machine.expire(machine.now());
            }
        }));
    }

    #[cfg(loom)]
    fn schedule(&self, _deadline: u64) {}

    pub(crate) fn set_metrics_only(&self, on: bool) {
        self.metrics_only.store(u64::from(on), Ordering::Relaxed);
    }

    pub(crate) fn metrics_only(&self) -> bool {
        self.metrics_only.load(Ordering::Relaxed) != 0
    }

    /// Nanoseconds the circuit stays open from `now`, when a call arriving then would find
    /// it open with a known deadline.
    pub(crate) fn open_remaining(&self, now: u64) -> Option<u64> {
        let word = self.word();
        (word.state() == State::Open)
            .then(|| self.open_until.load(Ordering::Acquire))
            .filter(|&until| until > now)
            .map(|until| until - now)
    }

    /// What the handle shows: the state a call arriving at `now` would find (see
    /// [`Self::state_at`]), with the data of that phase.
    pub(crate) fn snapshot(&self, now: u64) -> RawSnapshot {
        let word = self.word();
        let stats = self.window.stats(now);
        let mut snapshot = RawSnapshot {
            state: word.state(),
            stage: word.stage(),
            probes_in_flight: word.issued(),
            probe_successes: word.successes(),
            probe_failures: word.failures(),
            calls: stats.calls,
            failures: stats.failures,
            slow: stats.slow,
            slow_in_flight: self.slow_in_flight.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            entered_at: self.entered_at.load(Ordering::Acquire),
            open_remaining: self.open_remaining(now),
        };
        if let Some((at, to, _)) = self.deadline(word).filter(|&(at, ..)| now >= at) {
            // A timed-out phase, as the next call will find it: a fresh half-open stage, or
            // open again for a duration drawn only when that call comes.
            snapshot.state = to;
            snapshot.stage = 0;
            snapshot.probes_in_flight = 0;
            snapshot.probe_successes = 0;
            snapshot.probe_failures = 0;
            snapshot.entered_at = at;
        }
        snapshot
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    crate::circuit::config::saturating_nanos(d)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RawSnapshot {
    pub(crate) state: State,
    pub(crate) stage: u32,
    pub(crate) probes_in_flight: u64,
    pub(crate) probe_successes: u64,
    pub(crate) probe_failures: u64,
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
    pub(crate) slow_in_flight: u64,
    pub(crate) consecutive_failures: u64,
    pub(crate) rejected: u64,
    pub(crate) entered_at: u64,
    pub(crate) open_remaining: Option<u64>,
}

#[cfg(all(test, not(loom)))]
mod tests;
