//! Middleware that sends a second copy of a slow idempotent request, and takes whichever
//! answers first (hedging, or backup requests).
//!
//! The copy goes after a fixed delay, or once the call has taken longer than a percentile of
//! recent latencies (Finagle's backup requests; tower's `hedge` layer uses the percentile
//! only). It draws on the same [`RetryBudget`](crate::RetryBudget) as retries: no copy while the budget is spent,
//! and at most its cap of retries in flight. The first success wins and the other call is
//! dropped (cancelled); if one fails while the other runs, the other's answer is awaited.
//!
//! Named `Hedging` so that it does not clash with tower's own `tower::hedge::Hedge`.
//!
//! # Metrics and handle
//!
//! `tower_patterns_hedging_copies_total{name}` counts copies sent and
//! `tower_patterns_hedging_declined_total{name}` copies the budget refused; neither is touched
//! by a call answered before its delay. [`HedgingLayer::handle`] gives a [`HedgingHandle`]
//! (pattern `hedging`) reporting the delay now in use and the latencies learnt.
//!
//! # Example
//!
//! A fixed delay, then a percentile of recent latencies on the retry policy's budget:
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::BoxError;
//! use tower_patterns_retry::{HedgeDelay, HedgingLayer, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = HedgingLayer::builder("catalog")
//!     .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
//!     .copy(|r: &u32| Some(*r))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
//! assert_eq!(svc.oneshot(3).await.unwrap(), 3);
//!
//! let policy = RetryPolicy::builder("catalog").build().unwrap();
//! let p95 = HedgingLayer::builder("catalog-p95")
//!     .delay(HedgeDelay::Percentile {
//!         percentile: 0.95,
//!         min_samples: 100,
//!         fallback: Duration::from_millis(100),
//!     })
//!     .budget(policy.budget().unwrap().clone())
//!     .copy(|r: &u32| Some(*r))
//!     .build()
//!     .unwrap();
//! # let _ = p95;
//! # }
//! ```

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use http::{Method, Request};

use crate::TryCloneBody;

pub mod future;
mod handle;
mod layer;
mod service;

pub use handle::HedgingHandle;
pub use layer::{HedgingBuilder, HedgingLayer, NoCopy};
pub use service::Hedging;

/// When to send the copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// After this long.
    Fixed(Duration),
    /// Once the call has taken longer than this percentile (0 to 1) of recent latencies;
    /// `fallback` until `min_samples` latencies are known.
    Percentile {
        /// The percentile, for example 0.95 (a copy for at most about 5% of calls).
        percentile: f64,
        /// Latencies needed before the percentile is trusted.
        min_samples: u64,
        /// The delay used until then.
        fallback: Duration,
    },
}

/// Recent latencies in power-of-two buckets of microseconds; old counts are halved every
/// `HALF_LIFE` samples so the percentile follows the present.
#[derive(Debug)]
pub(crate) struct Latencies {
    buckets: [AtomicU64; 40],
    samples: AtomicU64,
}

const HALF_LIFE: u64 = 10_000;

impl Latencies {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - us.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        if self.samples.fetch_add(1, Relaxed) % HALF_LIFE == HALF_LIFE - 1 {
            for b in &self.buckets {
                let _ = b.fetch_update(Relaxed, Relaxed, |n| Some(n / 2));
            }
        }
    }

    /// The upper bound of the bucket holding the `p` percentile, once enough is known.
    pub(crate) fn percentile(&self, p: f64, min_samples: u64) -> Option<Duration> {
        if self.samples.load(Relaxed) < min_samples {
            return None;
        }
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (total as f64 * p.clamp(0.0, 1.0)).ceil() as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return Some(Duration::from_micros(if i == 0 { 1 } else { 1 << i }));
            }
        }
        None
    }

    /// Latencies recorded so far (before halving).
    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Relaxed)
    }
}

/// Copies GET, HEAD and OPTIONS requests with replayable bodies: hedging is for idempotent
/// reads.
pub fn hedge_reads<B: TryCloneBody>(req: &Request<B>) -> Option<Request<B>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    crate::http::copy_request(req)
}
