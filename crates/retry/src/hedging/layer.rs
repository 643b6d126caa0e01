//! The hedging layer, its builder and the state its services share.

use std::{
    fmt,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use tower_layer::Layer;
use tower_patterns_core::{ConfigError, metric_name, observe::labels};

use super::{HedgeDelay, Hedging, HedgingHandle, Latencies};
use crate::RetryBudget;

/// What every service of one [`HedgingLayer`] shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) delay: HedgeDelay,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) latencies: Latencies,
    /// Copies sent (for the handle; the metric counts the same).
    pub(crate) copies: AtomicU64,
    pub(crate) copies_total: metrics::Counter,
    pub(crate) declined_total: metrics::Counter,
}

impl Shared {
    /// The delay before a copy, now.
    pub(crate) fn delay(&self) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                fallback,
            } => self
                .latencies
                .percentile(percentile, min_samples)
                .unwrap_or(fallback),
        }
    }
}

/// Layer that hedges slow requests; see the [module docs](super). Build it with
/// [`HedgingLayer::builder`].
pub struct HedgingLayer<P> {
    pub(crate) copy: P,
    pub(crate) shared: Arc<Shared>,
}

impl<P: Clone> Clone for HedgingLayer<P> {
    fn clone(&self) -> Self {
        Self {
            copy: self.copy.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for HedgingLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgingLayer")
            .field("name", &self.shared.name)
            .field("delay", &self.shared.delay)
            .finish_non_exhaustive()
    }
}

impl HedgingLayer<NoCopy> {
    /// A builder named `name` (it labels the metrics and the handle). The request copier is
    /// required: [`HedgingBuilder::copy`].
    pub fn builder(name: impl Into<Arc<str>>) -> HedgingBuilder<NoCopy> {
        HedgingBuilder {
            name: name.into(),
            delay: HedgeDelay::Percentile {
                percentile: 0.95,
                min_samples: 100,
                fallback: Duration::from_millis(100),
            },
            budget: None,
            copy: NoCopy(()),
        }
    }
}

impl<P> HedgingLayer<P> {
    /// A handle on the latencies learnt and the copies sent.
    pub fn handle(&self) -> HedgingHandle {
        HedgingHandle::new(self.shared.clone())
    }
}

impl<S, P: Clone> Layer<S> for HedgingLayer<P> {
    type Service = Hedging<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedging::new(inner, self.clone())
    }
}

/// No request copier set yet: [`HedgingBuilder::copy`] is required before `build`.
#[derive(Debug)]
pub struct NoCopy(());

/// Builds a [`HedgingLayer`]; `build` validates.
pub struct HedgingBuilder<P> {
    name: Arc<str>,
    delay: HedgeDelay,
    budget: Option<Arc<RetryBudget>>,
    copy: P,
}

impl<P> fmt::Debug for HedgingBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgingBuilder")
            .field("name", &self.name)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<P> HedgingBuilder<P> {
    /// When to send the copy (default: past the 95th percentile of recent latencies once 100
    /// are known, 100 ms until then).
    #[must_use]
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Draws copies from `budget` (share it with the retry policy:
    /// [`RetryPolicy::budget`](crate::RetryPolicy::budget)); default: no budget.
    #[must_use]
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Hedges requests that `copy` can copy (it returns `None` for those that must go once;
    /// see [`hedge_reads`](super::hedge_reads) for HTTP). Required.
    pub fn copy<P2: Clone>(self, copy: P2) -> HedgingBuilder<P2> {
        HedgingBuilder {
            name: self.name,
            delay: self.delay,
            budget: self.budget,
            copy,
        }
    }
}

impl<P: Clone> HedgingBuilder<P> {
    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When a percentile delay's percentile is not in `0..=1`.
    pub fn build(self) -> Result<HedgingLayer<P>, ConfigError> {
        if let HedgeDelay::Percentile { percentile, .. } = self.delay
            && !(0.0..=1.0).contains(&percentile)
        {
            return Err(ConfigError::new("delay", "the percentile must be in 0..=1"));
        }
        let name = self.name;
        let copies_total = metrics::counter!(
            metric_name!("hedging", "copies_total"),
            labels::NAME => name.to_string()
        );
        let declined_total = metrics::counter!(
            metric_name!("hedging", "declined_total"),
            labels::NAME => name.to_string()
        );
        Ok(HedgingLayer {
            copy: self.copy,
            shared: Arc::new(Shared {
                name,
                delay: self.delay,
                budget: self.budget,
                latencies: Latencies::new(),
                copies: AtomicU64::new(0),
                copies_total,
                declined_total,
            }),
        })
    }
}
