//! What every service of one bulkhead shares: the pool (semaphore), its settings and its
//! metrics.

use std::{fmt, sync::Arc, time::Duration};

use tower_patterns_core::{ConfigError, Rejected, RejectionKind, metric_name, observe::labels};

use super::hold::Hold;
use crate::{
    adaptive::{Adaptive, LimitAlgorithm},
    semaphore::{Permit, Semaphore},
};

/// What every service of one bulkhead shares.
pub(crate) struct Shared {
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) name: Arc<str>,
    pub(crate) max_wait: Duration,
    pub(crate) backpressure: bool,
    pub(crate) rejected: metrics::Counter,
    pub(crate) waited: metrics::Counter,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("semaphore", &self.semaphore)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// A pool's counters: `tower_patterns_bulkhead_rejected_total{name}` and
/// `tower_patterns_bulkhead_waited_total{name}`.
#[derive(Clone)]
pub(crate) struct Counters {
    rejected: metrics::Counter,
    waited: metrics::Counter,
}

impl Counters {
    pub(crate) fn register(name: &str) -> Self {
        let label = name.to_string();
        Self {
            rejected: metrics::counter!(
                metric_name!("bulkhead", "rejected_total"),
                labels::NAME => label.clone()
            ),
            waited: metrics::counter!(
                metric_name!("bulkhead", "waited_total"),
                labels::NAME => label
            ),
        }
    }
}

impl Shared {
    /// `metric_name` labels the metrics: the pool's own name, or for on-demand partitions the
    /// layer's (so the number of series stays bounded).
    pub(crate) fn new(
        name: Arc<str>,
        metric_name: &str,
        semaphore: Arc<Semaphore>,
        max_wait: Duration,
        backpressure: bool,
    ) -> Self {
        Self::with_counters(
            name,
            Counters::register(metric_name),
            semaphore,
            max_wait,
            backpressure,
        )
    }

    /// A pool counting into `counters` (registered once for all the on-demand pools of a
    /// keyed layer, so they count into the recorder the layer was built under).
    pub(crate) fn with_counters(
        name: Arc<str>,
        counters: Counters,
        semaphore: Arc<Semaphore>,
        max_wait: Duration,
        backpressure: bool,
    ) -> Self {
        Self {
            rejected: counters.rejected,
            waited: counters.waited,
            semaphore,
            name,
            max_wait,
            backpressure,
        }
    }

    pub(crate) fn rejection(&self) -> Rejected {
        self.rejected.increment(1);
        if let Some((adaptive, _)) = &self.semaphore.adaptive {
            self.semaphore
                .follow(adaptive.dropped(self.semaphore.in_flight()));
        }
        tracing::debug!(target: "tower_patterns::bulkhead", bulkhead = %self.name, "bulkhead full");
        Rejected::new(RejectionKind::BulkheadFull).with_name(self.name.clone())
    }

    /// The refusal of a call whose inner service was not ready when the (always ready)
    /// bulkhead was polled: shed, as tower's `LoadShed` does, without taking a permit.
    pub(crate) fn not_ready(&self) -> Rejected {
        self.rejected.increment(1);
        tracing::debug!(target: "tower_patterns::bulkhead", bulkhead = %self.name, "inner service not ready");
        Rejected::new(RejectionKind::LoadShed).with_name(self.name.clone())
    }

    /// A permit at once, with the adaptive limiter's clock started if there is one.
    #[inline]
    pub(crate) fn try_permit(&self) -> Option<Hold> {
        Permit::try_new(&self.semaphore).map(|permit| self.hold(permit))
    }

    #[inline]
    pub(crate) fn hold(&self, permit: Permit) -> Hold {
        Hold {
            start: self.semaphore.sample_start(),
            permit,
        }
    }
}

/// The settings of one pool, shared by the bulkhead's builder in both modes (one pool, a pool
/// per key): validated and turned into a semaphore by [`PoolSettings::semaphore`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) max_concurrent: u32,
    pub(crate) max_wait: Duration,
    pub(crate) max_waiting: Option<u32>,
    pub(crate) backpressure: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 25,
            max_wait: Duration::ZERO,
            max_waiting: None,
            backpressure: false,
        }
    }
}

impl PoolSettings {
    /// Validates the settings and builds the semaphore (and adaptive limiter).
    /// Backpressure mode always lets callers wait (in `poll_ready`), with no bound on how many
    /// (they are the callers' own polls); there a zero `max_wait` means no deadline.
    pub(crate) fn semaphore(
        &self,
        adaptive: Option<Box<dyn LimitAlgorithm>>,
    ) -> Result<Arc<Semaphore>, ConfigError> {
        let Self {
            max_concurrent,
            max_wait,
            max_waiting,
            backpressure,
        } = *self;
        if max_concurrent == 0 {
            return Err(ConfigError::new("max_concurrent", "must be at least 1"));
        }
        let max_waiting = match (backpressure, max_wait.is_zero(), max_waiting) {
            // Callers wait in `poll_ready`, as many as poll (the queue's count has 32 bits, so
            // `u32::MAX` bounds nothing in practice).
            (true, _, None) => u32::MAX,
            (true, _, Some(_)) => {
                return Err(ConfigError::new(
                    "max_waiting",
                    "does not apply with backpressure: callers wait in poll_ready, as many as poll",
                ));
            }
            (false, true, Some(n)) if n > 0 => {
                return Err(ConfigError::new(
                    "max_waiting",
                    "calls cannot wait when max_wait is zero: set max_wait too",
                ));
            }
            (false, true, _) => 0,
            (false, false, Some(0)) => {
                return Err(ConfigError::new(
                    "max_waiting",
                    "must be at least 1 when max_wait is above zero",
                ));
            }
            (false, false, n) => n.unwrap_or(1_024),
        };
        Ok(Arc::new(match adaptive {
            Some(algorithm) => Semaphore::adaptive(Adaptive::new(algorithm)?, max_waiting),
            None => Semaphore::new(max_concurrent, max_waiting),
        }))
    }
}
