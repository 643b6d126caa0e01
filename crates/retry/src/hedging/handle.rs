//! The hedging layer's handle.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::{HedgeDelay, layer::Shared};

/// A handle on a [`HedgingLayer`](super::HedgingLayer)'s shared state, from
/// [`HedgingLayer::handle`](super::HedgingLayer::handle). Cheap to clone; reading it costs
/// the requests nothing.
///
/// Its [`StateHandle`] report has pattern `hedging`, the layer's name, health ready, state
/// `fixed` (a fixed delay), `learning` (a percentile delay before `min_samples` latencies)
/// or `percentile`, and values `delay_seconds` (the delay a call made now would get),
/// `samples` (latencies recorded) and `copies` (copies sent).
#[derive(Clone)]
pub struct HedgingHandle {
    shared: Arc<Shared>,
}

impl HedgingHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Copies sent so far.
    pub fn copies(&self) -> u64 {
        self.shared.copies.load(Relaxed)
    }
}

impl fmt::Debug for HedgingHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgingHandle")
            .field("name", &self.shared.name)
            .field("copies", &self.copies())
            .finish_non_exhaustive()
    }
}

impl StateHandle for HedgingHandle {
    fn pattern(&self) -> &'static str {
        "hedging"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn report(&self) -> Report {
        let samples = self.shared.latencies.samples();
        let state = match self.shared.delay {
            HedgeDelay::Fixed(_) => "fixed",
            HedgeDelay::Percentile { min_samples, .. } if samples < min_samples => "learning",
            HedgeDelay::Percentile { .. } => "percentile",
        };
        Report::new(
            "hedging",
            self.shared.name.to_string(),
            Health::Ready,
            state,
        )
        .with_value("delay_seconds", self.shared.delay().as_secs_f64())
        .with_value("samples", samples as f64)
        .with_value("copies", self.copies() as f64)
    }
}
