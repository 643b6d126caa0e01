//! Reading and steering a breaker from outside the request path.

use std::{fmt, sync::Arc, time::Duration};

use tokio::sync::broadcast;
use tower_patterns_core::observe::{Health, Report, StateHandle};

use crate::{Reason, State, Transition, circuit::machine::Machine};

/// A handle on a breaker: reads its state and metrics, forces it, subscribes to its
/// transitions. Cheap to clone; every clone sees the same breaker.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    machine: Arc<Machine>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// A point-in-time view of a breaker.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state.
    pub state: State,
    /// Whether the breaker is in metrics-only (dry-run) mode.
    pub metrics_only: bool,
    /// Calls in the sliding window (closed state).
    pub calls: u64,
    /// Failures in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow: u64,
    /// Calls in flight past the slow-call duration.
    pub slow_in_flight: u64,
    /// `failures / calls` in the window (0 when empty).
    pub failure_rate: f64,
    /// `(slow + slow in flight) / (calls + slow in flight)` (0 when empty).
    pub slow_call_rate: f64,
    /// The current run of failures.
    pub consecutive_failures: u64,
    /// Calls rejected since the breaker was built.
    pub rejected: u64,
    /// Half-open: probes admitted in this stage.
    pub probes_admitted: u64,
    /// Half-open: probes succeeded in this stage.
    pub probe_successes: u64,
    /// Half-open: probes failed in this stage.
    pub probe_failures: u64,
    /// Half-open ramp stage (0 outside ramps).
    pub stage: u32,
    /// Open: how long until half-open (`None` when a half-open circuit has timed out and
    /// its next open duration is drawn only when the next call comes).
    pub open_for: Option<Duration>,
    /// How long the breaker has been in its state.
    pub in_state_for: Duration,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(machine: Arc<Machine>) -> Self {
        Self { machine }
    }

    #[inline]
    pub(crate) fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.machine.observer.name()
    }

    /// The state a call arriving now would find. Timeouts take effect when a call comes
    /// (or on time, with [`automatic_transition`](crate::CircuitBreakerBuilder::automatic_transition)),
    /// but this reads them as already made: an open circuit whose duration has elapsed
    /// reports `HalfOpen`, a half-open one past its maximum wait `Open`. Reading changes
    /// nothing (no transition, no event, no gauge update).
    pub fn state(&self) -> State {
        self.machine.state_at(self.machine.now())
    }

    /// How long until the open circuit lets probes through (`None` unless a call now would
    /// find it open with a known deadline): the hint that rejections carry as `retry_after`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.machine
            .open_remaining(self.machine.now())
            .map(Duration::from_nanos)
    }

    /// The current metrics, with the state as [`Self::state`] reads it.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.machine.now();
        let raw = self.machine.snapshot(now);
        let rate = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        Snapshot {
            state: raw.state,
            metrics_only: self.machine.metrics_only(),
            calls: raw.calls,
            failures: raw.failures,
            slow: raw.slow,
            slow_in_flight: raw.slow_in_flight,
            failure_rate: rate(raw.failures, raw.calls),
            slow_call_rate: rate(
                raw.slow + raw.slow_in_flight,
                raw.calls + raw.slow_in_flight,
            ),
            consecutive_failures: raw.consecutive_failures,
            rejected: raw.rejected,
            probes_admitted: raw.probes_in_flight,
            probe_successes: raw.probe_successes,
            probe_failures: raw.probe_failures,
            stage: raw.stage,
            open_for: raw.open_remaining.map(Duration::from_nanos),
            in_state_for: Duration::from_nanos(now.saturating_sub(raw.entered_at)),
        }
    }

    /// Forces the circuit open: every call is rejected until [`reset`](Self::reset) or
    /// [`disable`](Self::disable).
    pub fn force_open(&self) {
        self.machine
            .force(State::ForcedOpen, Reason::Forced, self.machine.now());
    }

    /// Forces the circuit closed: every call passes and nothing is counted, until
    /// [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn disable(&self) {
        self.machine
            .force(State::Disabled, Reason::Forced, self.machine.now());
    }

    /// Closes the circuit with an empty window and forgets earlier trips.
    pub fn reset(&self) {
        self.machine
            .force(State::Closed, Reason::Reset, self.machine.now());
    }

    /// Metrics-only (dry-run) mode: the breaker goes through its states and reports them,
    /// but never rejects a call (except when forced open).
    pub fn set_metrics_only(&self, on: bool) {
        self.machine.set_metrics_only(on);
    }

    /// Receives every transition from now on. A receiver that falls more than 64
    /// transitions behind loses the oldest (see [`broadcast`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.machine.observer.subscribe()
    }
}

impl StateHandle for CircuitBreakerHandle {
    fn pattern(&self) -> &'static str {
        "breaker"
    }

    fn name(&self) -> &str {
        CircuitBreakerHandle::name(self)
    }

    /// State `closed`, `open`, `half_open`, `forced_open` or `disabled`; values `calls`,
    /// `failure_rate`, `slow_call_rate`, `rejected` and `open_remaining_seconds` (how long until
    /// an open circuit lets probes through; 0 unless it is open with a known deadline).
    fn report(&self) -> Report {
        let s = self.snapshot();
        let health = match s.state {
            State::Closed | State::Disabled => Health::Ready,
            State::HalfOpen => Health::Degraded,
            State::Open | State::ForcedOpen => Health::Unavailable,
        };
        Report::new("breaker", self.name().to_owned(), health, s.state.as_str())
            .with_value("calls", s.calls as f64)
            .with_value("failure_rate", s.failure_rate)
            .with_value("slow_call_rate", s.slow_call_rate)
            .with_value("rejected", s.rejected as f64)
            .with_value(
                "open_remaining_seconds",
                self.retry_after().map_or(0.0, |left| left.as_secs_f64()),
            )
    }
}
