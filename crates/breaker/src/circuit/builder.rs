//! The builder of the circuit breaker and of the keyed circuit breaker: one set of settings,
//! two modes.

use std::{fmt, sync::Arc, time::Duration};

use tower_patterns_core::{ConfigError, classify::ErrorsAsFailures, keyed::KeyBounds};

use crate::{
    CircuitBreakerLayer, Config, OpenDuration, SlidingWindow,
    circuit::machine::Machine,
    circuit::observer::{Metrics, Observer},
};

/// Builds a [`CircuitBreakerLayer`] (from [`CircuitBreakerLayer::builder`]) or, as a
/// [`KeyedCircuitBreakerBuilder`], a [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer) (from
/// [`KeyedCircuitBreakerLayer::builder`](tower_patterns_core::keyed::KeyedLayer::builder));
/// `build` validates.
///
/// `M` is the mode: [`Unkeyed`] for one breaker, [`ByKey`] for a breaker per key. Every
/// setting applies to both (for a keyed layer, to each key's breaker).
pub struct CircuitBreakerBuilder<C = ErrorsAsFailures, M = Unkeyed> {
    pub(crate) config: Config,
    pub(crate) classifier: C,
    pub(crate) mode: M,
}

/// The builder of a [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer): a [`CircuitBreakerBuilder`] in keyed mode.
/// Its key extractor is required: `build()` exists once [`key`](CircuitBreakerBuilder::key)
/// has set one.
pub type KeyedCircuitBreakerBuilder<E = NoKey, C = ErrorsAsFailures> =
    CircuitBreakerBuilder<C, ByKey<E>>;

/// The mode of a [`CircuitBreakerBuilder`] that builds one breaker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unkeyed;

/// The mode of a [`KeyedCircuitBreakerBuilder`]: the key extractor `E` and the bounds on keys.
#[derive(Clone, Debug)]
pub struct ByKey<E> {
    pub(crate) extractor: E,
    pub(crate) bounds: KeyBounds,
}

/// A keyed builder's extractor before [`key`](CircuitBreakerBuilder::key) sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<C, M> fmt::Debug for CircuitBreakerBuilder<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<M> CircuitBreakerBuilder<ErrorsAsFailures, M> {
    /// The defaults: a count window of the last 100 calls; trip at a 50% failure rate once 20
    /// calls are in the window; open for 30 s; 5 half-open probes judged at the same rate,
    /// reopening if they give no verdict within 30 s; `Ok` succeeds and `Err` fails.
    pub(crate) fn new(name: Arc<str>, mode: M) -> Self {
        Self {
            config: Config::defaults(name),
            classifier: ErrorsAsFailures,
            mode,
        }
    }
}

impl<C, M> CircuitBreakerBuilder<C, M> {
    /// Rates are computed over the last `n` calls (default 100).
    #[must_use]
    pub fn count_window(mut self, n: u32) -> Self {
        self.config.window = SlidingWindow::Count(n);
        self
    }

    /// Rates are computed over the calls of the last `size`, in `buckets` buckets.
    #[must_use]
    pub fn time_window(mut self, size: Duration, buckets: u32) -> Self {
        self.config.window = SlidingWindow::Time { size, buckets };
        self
    }

    /// Trip when the failure rate in the window reaches `threshold` (default 0.5).
    #[must_use]
    pub fn failure_rate(mut self, threshold: f64) -> Self {
        self.config.failure_rate = Some(threshold);
        self
    }

    /// Do not trip on the failure rate (use other conditions). Probes then reopen on any
    /// failure.
    #[must_use]
    pub fn no_failure_rate(mut self) -> Self {
        self.config.failure_rate = None;
        self
    }

    /// Also trip when the window holds `n` failures, whatever the rate.
    #[must_use]
    pub fn failure_count(mut self, n: u64) -> Self {
        self.config.failure_count = Some(n);
        self
    }

    /// Also trip after `n` failures in a row (no minimum number of calls applies).
    #[must_use]
    pub fn consecutive_failures(mut self, n: u64) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Calls that take longer than `duration` are slow, including calls still in flight past
    /// it; trip when the slow-call rate reaches `rate`. Costs one timer per call.
    #[must_use]
    pub fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.config.slow_call_duration = Some(duration);
        self.config.slow_call_rate = rate;
        self
    }

    /// Rates are judged only once the window holds `n` calls (default 20). With a count
    /// window smaller than `n`, once the window is full.
    #[must_use]
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// Stay open for `duration` (default 30 s).
    #[must_use]
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.config.open_duration = OpenDuration::Fixed(duration);
        self
    }

    /// Stay open longer after each consecutive trip; see [`OpenDuration::Exponential`].
    #[must_use]
    pub fn open_duration_backoff(
        mut self,
        base: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    ) -> Self {
        self.config.open_duration = OpenDuration::Exponential {
            base,
            max,
            multiplier,
            jitter,
        };
        self
    }

    /// Admit `n` probes in half-open and judge them as a window at the failure-rate
    /// threshold (default 5; at most 4,095). A probe that is dropped or ignored gives its
    /// permit back.
    #[must_use]
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.config.probes = n;
        self
    }

    /// Reopen when half-open has no verdict within `max` (default 30 s); `None` waits
    /// forever.
    #[must_use]
    pub fn max_wait_in_half_open(mut self, max: Option<Duration>) -> Self {
        self.config.max_wait_in_half_open = max;
        self
    }

    /// Recover through stages that admit a growing share of traffic (for example `[0.01,
    /// 0.05, 0.25, 0.5]`). Each stage passes once its share has produced the number of
    /// half-open probes with an acceptable failure rate; any failing stage reopens.
    #[must_use]
    pub fn half_open_ramp(mut self, shares: impl IntoIterator<Item = f64>) -> Self {
        self.config.ramp = shares.into_iter().collect();
        self
    }

    /// Seeds the randomness of open-duration jitter and ramp sampling.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// `poll_ready` returns `Pending` while the circuit rejects, instead of the default of
    /// being ready and failing fast from `call`. For use under a load balancer.
    #[must_use]
    pub fn backpressure(mut self) -> Self {
        self.config.backpressure = true;
        self
    }

    /// Counts every call's outcome in `tower_patterns_breaker_calls_total{name, outcome}`.
    ///
    /// Off by default: it costs a call into the `metrics` recorder per request (even a no-op
    /// one). Rejections, transitions and the state gauge are always recorded, and the
    /// window's counts and rates are free through [`CircuitBreakerHandle::snapshot`](crate::CircuitBreakerHandle::snapshot).
    #[must_use]
    pub fn call_metrics(mut self, on: bool) -> Self {
        self.config.call_metrics = on;
        self
    }

    /// Makes the open and half-open timeouts take effect on time, without waiting for a call
    /// (default off): when the circuit opens, a Tokio task sleeps until the open duration
    /// ends and moves it to half-open; in half-open, until the maximum wait ends. The state
    /// gauge, subscribers and [`CircuitBreakerHandle::subscribe`](crate::CircuitBreakerHandle::subscribe) then see those transitions
    /// as they happen. The task holds the breaker weakly and ends with it. Transitions made
    /// outside a Tokio runtime schedule nothing.
    ///
    /// Off, the handle still reports the state a call would find
    /// ([`CircuitBreakerHandle::state`](crate::CircuitBreakerHandle::state)); the gauge and events follow the next call.
    #[must_use]
    pub fn automatic_transition(mut self, on: bool) -> Self {
        self.config.automatic_transition = on;
        self
    }

    /// Decides what counts as success, failure or neither; see
    /// [`tower_patterns_core::classify`]. For HTTP, `TowerHttp::server_errors()`.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2, M> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier,
            mode: self.mode,
        }
    }
}

impl<C> CircuitBreakerBuilder<C, Unkeyed> {
    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When a setting is out of range or the settings contradict each other.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let config = self.config.validated()?;
        let metrics = Metrics::register(&config.name, true);
        let observer = Observer::new(
            config.name.clone(),
            metrics,
            true,
            config.call_metrics,
            tokio::time::Instant::now(),
        );
        Ok(CircuitBreakerLayer::from_parts(
            Machine::new_shared(Arc::new(config), observer),
            self.classifier,
        ))
    }
}

impl<C> CircuitBreakerBuilder<C, ByKey<NoKey>> {
    /// Takes each request's key with `extractor` (a host, route or tenant; see
    /// [`tower_patterns_core::key`]): every key gets its own breaker. The key type is the
    /// extractor's, found from the requests the service is called with.
    pub fn key<E>(self, extractor: E) -> KeyedCircuitBreakerBuilder<E, C> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier: self.classifier,
            mode: ByKey {
                extractor,
                bounds: self.mode.bounds,
            },
        }
    }
}

impl<C, E> CircuitBreakerBuilder<C, ByKey<E>> {
    /// How many keys keep a breaker and for how long an unused one is kept (default 10,000
    /// keys, 10 minutes idle). A key dropped for either starts with a fresh, closed breaker.
    #[must_use]
    pub fn key_bounds(mut self, bounds: KeyBounds) -> Self {
        self.mode.bounds = bounds;
        self
    }
}

impl CircuitBreakerLayer {
    /// A builder for a breaker named `name` (used in rejections, metrics and events).
    ///
    /// The defaults: a count window of the last 100 calls; trip at a 50% failure rate once 20
    /// calls are in the window; open for 30 s; 5 half-open probes judged at the same rate,
    /// reopening if they give no verdict within 30 s; `Ok` succeeds and `Err` fails.
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new(name.into(), Unkeyed)
    }
}
