//! What a breaker tells the world: `tracing` events, `metrics`, transition subscribers, and
//! wake-ups for services waiting in backpressure mode.

use std::{fmt, sync::Arc, time::Duration};

use metrics::{Counter, Gauge};
use tokio::{sync::broadcast, time::Instant};
use tower_patterns_core::{classify::Outcome, metric_name, observe::labels};

use crate::{Reason, State};

/// A change of state, as sent to [`CircuitBreakerHandle::subscribe`](crate::CircuitBreakerHandle::subscribe).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name (with its key, for keyed breakers: `name/key`).
    pub name: Arc<str>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// The half-open ramp stage entered (0 outside ramps).
    pub stage: u32,
    /// When (on tokio's clock).
    pub at: Instant,
}

/// Metric handles, registered once per layer and shared by its keyed instances.
pub(crate) struct Metrics {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    rejected: Counter,
    /// The state gauges: a plain breaker's only. Keyed instances share their layer's series,
    /// where one state per key cannot show, so a keyed layer registers none.
    states: Option<[Gauge; 5]>,
    name: String,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("name", &self.name).finish()
    }
}

impl Metrics {
    /// Registers the handles with the installed `metrics` recorder (install it first), the
    /// state gauges only `with_states`.
    pub(crate) fn register(name: &str, with_states: bool) -> Arc<Self> {
        let calls = |outcome: Outcome| {
            metrics::counter!(
                metric_name!("breaker", "calls_total"),
                labels::NAME => name.to_owned(),
                labels::OUTCOME => outcome.label()
            )
        };
        Arc::new(Self {
            success: calls(Outcome::Success),
            failure: calls(Outcome::Failure),
            ignored: calls(Outcome::Ignored),
            rejected: metrics::counter!(
                metric_name!("breaker", "rejected_total"),
                labels::NAME => name.to_owned()
            ),
            states: with_states.then(|| {
                State::ALL.map(|state| {
                    metrics::gauge!(
                        metric_name!("breaker", "state"),
                        labels::NAME => name.to_owned(),
                        labels::STATE => state.as_str()
                    )
                })
            }),
            name: name.to_owned(),
        })
    }

    fn set_state(&self, state: State, value: f64) {
        if let Some(states) = &self.states {
            states[State::ALL.iter().position(|s| *s == state).unwrap_or(0)].set(value);
        }
    }
}

pub(crate) struct Observer {
    name: Arc<str>,
    metrics: Arc<Metrics>,
    /// Whether every call's outcome goes to the `metrics` counters (opt-in: it costs a call
    /// into the recorder per request, even a no-op one).
    call_metrics: bool,
    /// Keyed instances share their layer's series, so they leave the state gauge alone.
    state_gauge: bool,
    events: broadcast::Sender<Transition>,
    notify: Arc<tokio::sync::Notify>,
    base: Instant,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("name", &self.name)
            .finish()
    }
}

impl Observer {
    pub(crate) fn new(
        name: Arc<str>,
        metrics: Arc<Metrics>,
        state_gauge: bool,
        call_metrics: bool,
        base: Instant,
    ) -> Self {
        Self {
            name,
            metrics,
            call_metrics,
            state_gauge,
            events: broadcast::channel(64).0,
            notify: Arc::new(tokio::sync::Notify::new()),
            base,
        }
    }

    pub(crate) fn init(&self, state: State) {
        if self.state_gauge {
            for s in State::ALL {
                self.metrics
                    .set_state(s, if s == state { 1.0 } else { 0.0 });
            }
        }
    }

    #[inline]
    pub(crate) fn outcome(&self, outcome: Outcome) {
        if !self.call_metrics {
            return;
        }
        match outcome {
            Outcome::Success => self.metrics.success.increment(1),
            Outcome::Failure => self.metrics.failure.increment(1),
            Outcome::Ignored => self.metrics.ignored.increment(1),
        }
    }

    pub(crate) fn rejected(&self) {
        self.metrics.rejected.increment(1);
    }

    pub(crate) fn permit_released(&self) {
        self.notify.notify_waiters();
    }

    /// Called under the transition lock, so subscribers see transitions in order.
    pub(crate) fn transition(&self, from: State, to: State, reason: Reason, stage: u32, now: u64) {
        if self.state_gauge {
            self.metrics.set_state(from, 0.0);
            self.metrics.set_state(to, 1.0);
        }
        metrics::counter!(
            metric_name!("breaker", "transitions_total"),
            labels::NAME => self.metrics.name.clone(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        tracing::info!(
            target: "tower_patterns::breaker",
            breaker = %self.name,
            from = from.as_str(),
            to = to.as_str(),
            ?reason,
            stage,
            "circuit breaker transition"
        );
        let _ = self.events.send(Transition {
            name: self.name.clone(),
            from,
            to,
            reason,
            stage,
            at: self.base + Duration::from_nanos(now),
        });
        self.notify.notify_waiters();
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    pub(crate) fn notify(&self) -> &Arc<tokio::sync::Notify> {
        &self.notify
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) const fn base(&self) -> Instant {
        self.base
    }
}
