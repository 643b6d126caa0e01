//! The layer and its builder.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;
use tower_patterns_core::{ConfigError, classify::ErrorsAsFailures, keyed::KeyedMap};

use crate::{
    CircuitBreaker, CircuitBreakerHandle, Config, KeyedCircuitBreakerLayer, OpenDuration,
    SlidingWindow,
    keyed::KeyedShared,
    machine::Machine,
    observer::{Metrics, Observer},
};

/// Layer that wraps services in a [`CircuitBreaker`].
///
/// Every service this layer makes, and every clone of them, shares one breaker: applying the
/// layer per request (as some frameworks do) never resets its state.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    machine: Arc<Machine>,
    classifier: C,
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.machine.config.name)
            .field("state", &self.machine.word().state())
            .finish()
    }
}

impl CircuitBreakerLayer {
    /// A builder for a breaker named `name` (used in rejections, metrics and events).
    ///
    /// The defaults: a count window of the last 100 calls; trip at a 50% failure rate once 20
    /// calls are in the window; open for 30 s; 5 half-open probes judged at the same rate,
    /// reopening if they give no verdict within 30 s; `Ok` succeeds and `Err` fails.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder {
        Builder {
            config: Config::defaults(name.into()),
            classifier: ErrorsAsFailures,
            max_keys: 10_000,
            key_idle: Duration::from_secs(600),
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle on the shared breaker: state, metrics, forcing, subscriptions.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.machine.clone())
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.machine.clone(), self.classifier.clone())
    }
}

/// Builds a [`CircuitBreakerLayer`] (or a [`KeyedCircuitBreakerLayer`]); `build` validates.
pub struct Builder<C = ErrorsAsFailures> {
    config: Config,
    classifier: C,
    max_keys: u64,
    key_idle: Duration,
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C> Builder<C> {
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
    /// window's counts and rates are free through [`CircuitBreakerHandle::snapshot`].
    #[must_use]
    pub fn call_metrics(mut self, on: bool) -> Self {
        self.config.call_metrics = on;
        self
    }

    /// Makes the open and half-open timeouts take effect on time, without waiting for a call
    /// (default off): when the circuit opens, a Tokio task sleeps until the open duration
    /// ends and moves it to half-open; in half-open, until the maximum wait ends. The state
    /// gauge, subscribers and [`CircuitBreakerHandle::subscribe`] then see those transitions
    /// as they happen. The task holds the breaker weakly and ends with it. Transitions made
    /// outside a Tokio runtime schedule nothing.
    ///
    /// Off, the handle still reports the state a call would find
    /// ([`CircuitBreakerHandle::state`]); the gauge and events follow the next call.
    #[must_use]
    pub fn automatic_transition(mut self, on: bool) -> Self {
        self.config.automatic_transition = on;
        self
    }

    /// For keyed breakers: the most keys held (default 10,000) and how long an unused key's
    /// breaker is kept (default 10 minutes).
    #[must_use]
    pub fn keys(mut self, max_keys: u64, idle: Duration) -> Self {
        self.max_keys = max_keys;
        self.key_idle = idle;
        self
    }

    /// Decides what counts as success, failure or neither; see
    /// [`tower_patterns_core::classify`]. For HTTP, `TowerHttp::server_errors()`.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            classifier,
            max_keys: self.max_keys,
            key_idle: self.key_idle,
        }
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When a setting is out of range or the settings contradict each other.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let config = self.config.validated()?;
        let metrics = Metrics::register(&config.name);
        let observer = Observer::new(
            config.name.clone(),
            metrics,
            true,
            config.call_metrics,
            tokio::time::Instant::now(),
        );
        Ok(CircuitBreakerLayer {
            machine: Machine::new_shared(Arc::new(config), observer),
            classifier: self.classifier,
        })
    }

    /// The bare state machine of this configuration, for the crate's own model tests.
    #[doc(hidden)]
    pub fn build_machine(self) -> Result<Machine, ConfigError> {
        let config = self.config.validated()?;
        let observer = Observer::new(
            config.name.clone(),
            Metrics::register(&config.name),
            true,
            config.call_metrics,
            tokio::time::Instant::now(),
        );
        Ok(Machine::new(Arc::new(config), observer))
    }

    /// Builds a layer with one breaker per key taken by `extractor` (host, route, tenant).
    ///
    /// # Errors
    ///
    /// As [`Self::build`], and when the key bounds are invalid.
    ///
    /// `Key` is the extractor's key type (for [`HeaderKey`](tower_patterns_core::key::HeaderKey),
    /// [`AsciiKey`](tower_patterns_core::key::AsciiKey)); it is usually inferred from the
    /// services the layer wraps.
    pub fn build_keyed<K, Key>(
        self,
        extractor: K,
    ) -> Result<KeyedCircuitBreakerLayer<K, Key, C>, ConfigError>
    where
        Key: Clone + Eq + std::hash::Hash + fmt::Display + Send + Sync + 'static,
    {
        let config = self.config.validated()?;
        let map = KeyedMap::builder()
            .max_entries(self.max_keys)
            .idle_timeout(self.key_idle)
            .build()?;
        let metrics = Metrics::register(&config.name);
        Ok(KeyedCircuitBreakerLayer::new(
            Arc::new(KeyedShared {
                map,
                config: Arc::new(config),
                metrics,
                base: tokio::time::Instant::now(),
            }),
            extractor,
            self.classifier,
        ))
    }
}
