//! Middleware that sends a second copy of a slow idempotent request, and takes whichever
//! answers first (hedging, or backup requests).
//!
//! The copy goes after a fixed delay, or once the call has taken longer than a percentile of
//! recent latencies (Finagle's backup requests; tower's `hedge` layer uses the percentile
//! only). It draws on the same [`RetryBudget`] as retries: no copy while the budget is spent,
//! and at most its cap of retries in flight. The first success wins and the other call is
//! dropped (cancelled); if one fails while the other runs, the other's answer is awaited.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::BoxError;
//! use tower_patterns_retry::{HedgeDelay, HedgeLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = HedgeLayer::new(HedgeDelay::Fixed(Duration::from_millis(50)), |r: &u32| Some(*r));
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
//! assert_eq!(svc.oneshot(3).await.unwrap(), 3);
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Method, Request};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::{ReplayBody, RetryBudget};

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
struct Latencies {
    buckets: [AtomicU64; 40],
    samples: AtomicU64,
}

const HALF_LIFE: u64 = 10_000;

impl Latencies {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
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
    fn percentile(&self, p: f64, min_samples: u64) -> Option<Duration> {
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
}

/// Copies GET, HEAD and OPTIONS requests with replayable bodies: hedging is for idempotent
/// reads.
pub fn hedge_reads<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    crate::http::copy_request(req)
}

/// Layer that hedges slow requests; see the [module docs](self).
pub struct HedgeLayer<P> {
    delay: HedgeDelay,
    copy: P,
    budget: Option<Arc<RetryBudget>>,
    latencies: Arc<Latencies>,
}

impl<P: Clone> Clone for HedgeLayer<P> {
    fn clone(&self) -> Self {
        Self {
            delay: self.delay,
            copy: self.copy.clone(),
            budget: self.budget.clone(),
            latencies: self.latencies.clone(),
        }
    }
}

impl<P> fmt::Debug for HedgeLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<P> HedgeLayer<P> {
    /// Hedges requests that `copy` can copy (return `None` for those that must go once; see
    /// [`hedge_reads`] for HTTP).
    pub fn new(delay: HedgeDelay, copy: P) -> Self {
        Self {
            delay,
            copy,
            budget: None,
            latencies: Arc::new(Latencies::new()),
        }
    }

    /// Draws copies from `budget` (share it with the retry policy:
    /// [`RetryPolicy::budget`](crate::RetryPolicy::budget)).
    #[must_use]
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<S, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that hedges slow requests; see [`HedgeLayer`]. The copy is sent through a clone
/// of the inner service, made ready first, so `S` must be `Clone`.
pub struct Hedge<S, P> {
    inner: S,
    layer: HedgeLayer<P>,
}

impl<S: Clone, P: Clone> Clone for Hedge<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Hedge<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("delay", &self.layer.delay)
            .finish()
    }
}

impl<S, P> Hedge<S, P> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Fn(&Req) -> Option<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let copy = (self.layer.copy)(&req);
        let delay = match self.layer.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                fallback,
            } => self
                .layer
                .latencies
                .percentile(percentile, min_samples)
                .unwrap_or(fallback),
        };
        let backup = copy.map(|req| Backup {
            service: self.inner.clone(),
            req: Some(req),
            timer: Box::pin(tokio::time::sleep(delay)),
            admitted: false,
        });
        HedgeFuture {
            primary: Some(self.inner.call(req)),
            secondary: None,
            backup,
            budget: self.layer.budget.clone(),
            holds_slot: false,
            latencies: self.layer.latencies.clone(),
            start: Instant::now(),
            first_error: None,
        }
    }
}

struct Backup<S, Req> {
    service: S,
    req: Option<Req>,
    timer: Pin<Box<Sleep>>,
    /// The budget let this copy go (and its slot is held).
    admitted: bool,
}

pin_project! {
    /// Response future of [`Hedge`].
    pub struct HedgeFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        secondary: Option<S::Future>,
        backup: Option<Backup<S, Req>>,
        budget: Option<Arc<RetryBudget>>,
        holds_slot: bool,
        latencies: Arc<Latencies>,
        start: Instant,
        first_error: Option<BoxError>,
    }

    impl<S, Req> PinnedDrop for HedgeFuture<S, Req>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.holds_slot && let Some(budget) = this.budget {
                budget.leave();
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for HedgeFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("hedged", &self.secondary.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req> Future for HedgeFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Either call: the first success wins; a failure waits for the other, if any.
        for secondary in [false, true] {
            let mut slot = if secondary {
                this.secondary.as_mut()
            } else {
                this.primary.as_mut()
            };
            let Some(fut) = slot.as_mut().as_pin_mut() else {
                continue;
            };
            if let Poll::Ready(result) = fut.poll(cx) {
                slot.set(None);
                match result {
                    Ok(res) => {
                        this.latencies.record(this.start.elapsed());
                        return Poll::Ready(Ok(res));
                    }
                    Err(e) => {
                        this.first_error.get_or_insert(e.into());
                    }
                }
            }
        }
        let running = this.primary.is_some() || this.secondary.is_some();
        if let Some(backup) = this.backup.as_mut() {
            // Sent once, only while the first call still runs.
            let due = this.primary.is_some() && backup.timer.as_mut().poll(cx).is_ready();
            if due {
                if !backup.admitted {
                    backup.admitted = this
                        .budget
                        .as_deref()
                        .is_none_or(|b| b.can_retry() && b.enter());
                    *this.holds_slot = backup.admitted && this.budget.is_some();
                }
                if !backup.admitted {
                    *this.backup = None;
                } else {
                    match backup.service.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => *this.backup = None,
                        Poll::Ready(Ok(())) => {
                            if let Some(req) = backup.req.take() {
                                this.secondary.set(Some(backup.service.call(req)));
                            }
                            *this.backup = None;
                            // Poll the copy once so it registers its wake-up.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        if running || this.backup.is_some() && this.primary.is_some() {
            return Poll::Pending;
        }
        Poll::Ready(Err(this
            .first_error
            .take()
            .unwrap_or_else(|| "hedged future polled after completion".into())))
    }
}
