//! The semaphore bulkhead: layer, builder, service and response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError, ConfigError, Rejected, RejectionKind,
    classify::{ClassifyEos, EosBody, Finish, OnOutcome, Outcome},
    metric_name,
    observe::labels,
};
use tower_service::Service;

use crate::{
    BulkheadHandle,
    adaptive::{Adaptive, LimitAlgorithm},
    semaphore::{Full, Permit, Semaphore, Waiter},
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
        let label = metric_name.to_string();
        Self {
            rejected: metrics::counter!(
                metric_name!("bulkhead", "rejected_total"),
                labels::NAME => label.clone()
            ),
            waited: metrics::counter!(
                metric_name!("bulkhead", "waited_total"),
                labels::NAME => label
            ),
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
    fn try_permit(&self) -> Option<Hold> {
        Permit::try_new(&self.semaphore).map(|permit| self.hold(permit))
    }

    #[inline]
    fn hold(&self, permit: Permit) -> Hold {
        Hold {
            start: self.semaphore.sample_start(),
            permit,
        }
    }
}

/// A bulkhead permit held by a call: given back when the call (or, with
/// [`UntilBodyEnd`], its response body) ends. With an adaptive limit, it also reports the
/// call's latency. Two words, so moving it out of a just-built future is cheap.
pub struct Hold {
    permit: Permit,
    /// When the call started, for the adaptive limiter (0: no limiter).
    start: u64,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("permit", &self.permit)
            .finish()
    }
}

impl OnOutcome for Hold {
    #[inline]
    fn on_outcome(self, outcome: Outcome) {
        // Cancelled calls say nothing about latency.
        if self.start != 0
            && outcome != Outcome::Ignored
            && let Some(semaphore) = self.permit.semaphore()
            && let Some((adaptive, _)) = &semaphore.adaptive
        {
            let rtt = Duration::from_nanos(semaphore.sample_start().saturating_sub(self.start));
            semaphore.follow(adaptive.completed(rtt, semaphore.in_flight()));
        }
        // Dropping `self` gives the permit back.
    }
}

/// How long a call holds its permit: until its response future completes.
#[derive(Clone, Copy, Debug, Default)]
pub struct UntilResponse;

impl<Res, E> Finish<Res, E, Hold> for UntilResponse {
    type Response = Res;

    #[inline]
    fn finish(&self, result: Result<Res, E>, hold: Hold) -> Result<Res, E> {
        hold.on_outcome(Outcome::Success);
        result
    }
}

/// How long a call holds its permit: until its HTTP response body ends (or is dropped), so a
/// streaming response counts against the pool for as long as it streams.
#[derive(Clone, Copy, Debug, Default)]
pub struct UntilBodyEnd;

/// The end-of-body judge of [`UntilBodyEnd`]: any end is a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct BodyEnded;

impl ClassifyEos for BodyEnded {
    fn classify_eos(self, _trailers: Option<&http::HeaderMap>) -> Outcome {
        Outcome::Success
    }
}

impl<B: http_body::Body, E> Finish<http::Response<B>, E, Hold> for UntilBodyEnd {
    type Response = http::Response<EosBody<B, BodyEnded, Hold>>;

    fn finish(
        &self,
        result: Result<http::Response<B>, E>,
        hold: Hold,
    ) -> Result<Self::Response, E> {
        result.map(|res| res.map(|body| EosBody::new(body, BodyEnded, hold)))
    }
}

/// Layer that wraps services in a [`Bulkhead`]; every service it makes, and every clone,
/// share one pool.
#[derive(Clone)]
pub struct BulkheadLayer<H = UntilResponse> {
    shared: Arc<Shared>,
    hold: H,
}

impl<H> fmt::Debug for BulkheadLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("bulkhead", &self.shared)
            .finish()
    }
}

impl BulkheadLayer {
    /// A builder for a bulkhead named `name`. Defaults: 25 concurrent calls, no waiting
    /// (a full pool rejects at once), permits held until the response future completes.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder {
        Builder {
            name: name.into(),
            max_concurrent: 25,
            max_wait: Duration::ZERO,
            max_waiting: None,
            backpressure: false,
            hold: UntilResponse,
            adaptive: None,
        }
    }
}

impl<H> BulkheadLayer<H> {
    /// A handle reading the pool: in flight, available, waiting, limit.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<S, H: Clone> Layer<S> for BulkheadLayer<H> {
    type Service = Bulkhead<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
            hold: self.hold.clone(),
            inner_ready: false,
            ready: None,
        }
    }
}

/// Builds a [`BulkheadLayer`]; `build` validates the settings.
pub struct Builder<H = UntilResponse> {
    name: Arc<str>,
    max_concurrent: u32,
    max_wait: Duration,
    max_waiting: Option<u32>,
    backpressure: bool,
    hold: H,
    adaptive: Option<Box<dyn LimitAlgorithm>>,
}

impl<H> fmt::Debug for Builder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("max_waiting", &self.max_waiting)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl<H> Builder<H> {
    /// The most calls in flight at once (default 25, resilience4j's).
    #[must_use]
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = n;
        self
    }

    /// How long a call may wait for a permit, in FIFO order (default zero: reject at once).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The most calls waiting at once (default 1,024, Envoy's pending-request limit, when
    /// `max_wait` is above zero). Not with [`backpressure`](Self::backpressure), whose
    /// waiters are the callers' own `poll_ready`s.
    #[must_use]
    pub fn max_waiting(mut self, n: u32) -> Self {
        self.max_waiting = Some(n);
        self
    }

    /// Reserve the permit in `poll_ready`, returning `Pending` while the pool is full, in
    /// FIFO order, instead of the default of being always ready and rejecting from `call`;
    /// like tower's `ConcurrencyLimit`, for load balancers and `Buffer`s.
    ///
    /// `poll_ready` never fails because of the pool: to tower an error from `poll_ready`
    /// means the service is gone for good (a `Buffer` or a balancer drops it). So every
    /// caller waits in the queue, however many there are (each is a clone its owner polls,
    /// so the owners bound them; `max_waiting` is refused in this mode), and when a `max_wait`
    /// is set (zero means no deadline here) a caller still waiting when it runs out is told
    /// ready and its next `call` is rejected with [`Rejected`] (`BulkheadFull`). Under a load
    /// balancer leave `max_wait` at zero, so a full pool only ever reads as not ready.
    #[must_use]
    pub fn backpressure(mut self) -> Self {
        self.backpressure = true;
        self
    }

    /// Hold each permit until the HTTP response body ends, not just the response head.
    pub fn hold_until_body_end(self) -> Builder<UntilBodyEnd> {
        Builder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_wait: self.max_wait,
            max_waiting: self.max_waiting,
            backpressure: self.backpressure,
            hold: UntilBodyEnd,
            adaptive: self.adaptive,
        }
    }

    /// Let the limit follow latency with `algorithm` ([`Gradient2`](crate::Gradient2),
    /// [`Aimd`](crate::Aimd)); `max_concurrent` is then only the starting point, replaced by
    /// the algorithm's initial limit.
    #[must_use]
    pub fn adaptive(mut self, algorithm: impl LimitAlgorithm) -> Self {
        self.adaptive = Some(Box::new(algorithm));
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When `max_concurrent` is 0, or the waiting settings contradict each other (including
    /// `max_waiting` with `backpressure`).
    pub fn build(self) -> Result<BulkheadLayer<H>, ConfigError> {
        let semaphore = build_pool(
            self.max_concurrent,
            self.max_wait,
            self.max_waiting,
            self.backpressure,
            self.adaptive,
        )?;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared::new(
                self.name.clone(),
                &self.name,
                semaphore,
                self.max_wait,
                self.backpressure,
            )),
            hold: self.hold,
        })
    }
}

/// Validates pool settings and builds the semaphore (and adaptive limiter).
/// Backpressure mode always lets callers wait (in `poll_ready`), with no bound on how many
/// (they are the callers' own polls); there a zero `max_wait` means no deadline.
pub(crate) fn build_pool(
    max_concurrent: u32,
    max_wait: Duration,
    max_waiting: Option<u32>,
    backpressure: bool,
    adaptive: Option<Box<dyn LimitAlgorithm>>,
) -> Result<Arc<Semaphore>, ConfigError> {
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

/// Middleware that bounds the calls in flight to its inner service; see [`BulkheadLayer`].
///
/// A call takes a permit when one is free; otherwise it waits in FIFO order for up to
/// `max_wait` (the waiting room holds `max_waiting` calls), and is rejected with
/// [`Rejected`] ([`RejectionKind::BulkheadFull`]) when the wait is over or the room is full.
/// A call that waits is sent once it has its permit, to the inner service as it was when
/// polled ready (the service moves into the response future, and a clone stays behind), so
/// `S` must be `Clone`.
///
/// By default the service is always ready, as tower's `LoadShed` is: `poll_ready` polls the
/// inner service only to remember whether it was ready (an inner error is passed on), and a
/// call made when it was not is rejected at once, without a permit, with a [`Rejected`] of
/// kind [`RejectionKind::LoadShed`]. Readiness counts for one call. With
/// [`Builder::backpressure`], `poll_ready` waits instead, as tower's `ConcurrencyLimit` does.
pub struct Bulkhead<S, H = UntilResponse> {
    inner: S,
    shared: Arc<Shared>,
    hold: H,
    /// Fail-fast mode: whether the inner service was ready when last polled.
    inner_ready: bool,
    /// Backpressure mode: the reservation (made on the first `poll_ready`).
    ready: Option<Backpressure>,
}

/// Backpressure mode: the permit reserved in `poll_ready`, or the wait for one.
struct Backpressure {
    reserved: Option<Hold>,
    waiter: Option<(Waiter, Option<Pin<Box<Sleep>>>)>,
    /// The wait ran out (`max_wait`): `poll_ready` said ready, and the next call is rejected.
    expired: bool,
}

impl<S: Clone, H: Clone> Clone for Bulkhead<S, H> {
    fn clone(&self) -> Self {
        // A clone starts without a reservation, and its inner service is not known ready.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            hold: self.hold.clone(),
            inner_ready: false,
            ready: None,
        }
    }
}

impl<S: fmt::Debug, H> fmt::Debug for Bulkhead<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .finish()
    }
}

impl<S, H> Bulkhead<S, H> {
    tower_patterns_core::inner_service_accessors!();

    /// A handle reading the pool this service shares with its layer.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<S, H, Req> Service<Req> for Bulkhead<S, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: Finish<S::Response, BoxError, Hold> + Clone,
{
    type Response = H::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.shared.backpressure {
            // Fail fast: always ready, remembering whether the inner service is (`call`
            // rejects otherwise), so the layers above never wait on a full dependency.
            self.inner_ready = match self.inner.poll_ready(cx) {
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                polled => polled.is_ready(),
            };
            return Poll::Ready(Ok(()));
        }
        let shared = &self.shared;
        let bp = self.ready.get_or_insert_with(|| Backpressure {
            reserved: None,
            waiter: None,
            expired: false,
        });
        if bp.expired {
            return Poll::Ready(Ok(()));
        }
        if bp.reserved.is_none() {
            if let Some(hold) = shared.try_permit() {
                bp.reserved = Some(hold);
            } else {
                let (waiter, deadline) = bp.waiter.get_or_insert_with(|| {
                    shared.waited.increment(1);
                    let deadline = (!shared.max_wait.is_zero())
                        .then(|| Box::pin(tokio::time::sleep(shared.max_wait)));
                    (Waiter::new(shared.semaphore.clone()), deadline)
                });
                match waiter.poll_acquire(cx) {
                    Poll::Ready(Ok(permit)) => {
                        bp.waiter = None;
                        bp.reserved = Some(shared.hold(permit));
                    }
                    Poll::Pending
                        if !deadline
                            .as_mut()
                            .is_some_and(|d| d.as_mut().poll(cx).is_ready()) =>
                    {
                        return Poll::Pending;
                    }
                    // Out of time (or, past 2^32 waiters, out of room): ready, and the next
                    // call is rejected. Never an error here: to tower that would mean the
                    // service has failed for good.
                    Poll::Pending | Poll::Ready(Err(Full)) => {
                        bp.waiter = None;
                        bp.expired = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let reserved = match &mut self.ready {
            Some(bp) if bp.expired => {
                bp.expired = false;
                return ResponseFuture::failed(self.shared.rejection().into());
            }
            Some(bp) => bp.reserved.take(),
            // Fail fast: readiness counts for one call.
            None if !self.shared.backpressure && !std::mem::take(&mut self.inner_ready) => {
                return ResponseFuture::failed(self.shared.not_ready().into());
            }
            None => None,
        };
        admit(&self.shared, &mut self.inner, req, &self.hold, reserved)
    }
}

/// Admits one call through `shared`'s pool; shared by the plain and the partitioned service.
pub(crate) fn admit<S, Req, H>(
    shared: &Arc<Shared>,
    inner: &mut S,
    req: Req,
    hold: &H,
    reserved: Option<Hold>,
) -> ResponseFuture<S, Req, H>
where
    S: Service<Req> + Clone,
    H: Clone,
{
    if let Some(permit) = reserved.or_else(|| shared.try_permit()) {
        return ResponseFuture::called(inner.call(req), permit, hold.clone());
    }
    if shared.max_wait.is_zero() || shared.backpressure {
        return ResponseFuture::failed(shared.rejection().into());
    }
    shared.waited.increment(1);
    // Take the service that was polled ready; leave a clone for the next call.
    let clone = inner.clone();
    let ready = std::mem::replace(inner, clone);
    ResponseFuture::waiting(
        shared.clone(),
        Waiter::new(shared.semaphore.clone()),
        Box::pin(tokio::time::sleep(shared.max_wait)),
        ready,
        req,
        hold.clone(),
    )
}

pin_project! {
    /// Response future of [`Bulkhead`].
    pub struct ResponseFuture<S, Req, H>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req, S::Future, H>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, F, H> {
        Waiting {
            shared: Arc<Shared>,
            waiter: Waiter,
            deadline: Pin<Box<Sleep>>,
            service: Option<S>,
            req: Option<Req>,
            hold: H,
        },
        Called {
            #[pin]
            fut: F,
            permit: Option<Hold>,
            hold: H,
        },
        Failed {
            err: Option<BoxError>,
        },
    }
}

impl<S: Service<Req>, Req, H> ResponseFuture<S, Req, H> {
    fn called(fut: S::Future, permit: Hold, hold: H) -> Self {
        Self {
            kind: Kind::Called {
                fut,
                permit: Some(permit),
                hold,
            },
        }
    }

    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            kind: Kind::Failed { err: Some(err) },
        }
    }

    fn waiting(
        shared: Arc<Shared>,
        waiter: Waiter,
        deadline: Pin<Box<Sleep>>,
        service: S,
        req: Req,
        hold: H,
    ) -> Self {
        Self {
            kind: Kind::Waiting {
                shared,
                waiter,
                deadline,
                service: Some(service),
                req: Some(req),
                hold,
            },
        }
    }
}

impl<S: Service<Req>, Req, H> fmt::Debug for ResponseFuture<S, Req, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Waiting { .. } => "waiting",
            Kind::Called { .. } => "called",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<S, Req, H> Future for ResponseFuture<S, Req, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: Finish<S::Response, BoxError, Hold> + Clone,
{
    type Output = Result<H::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Called { fut, permit, hold } => {
                    let result = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                    return Poll::Ready(match permit.take() {
                        Some(permit) => hold.finish(result, permit),
                        None => Err("bulkhead future polled after completion".into()),
                    });
                }
                KindProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "bulkhead future polled after completion".into())));
                }
                KindProj::Waiting {
                    shared,
                    waiter,
                    deadline,
                    service,
                    req,
                    hold,
                } => match waiter.poll_acquire(cx) {
                    Poll::Ready(Ok(permit)) => match (service.take(), req.take()) {
                        (Some(mut service), Some(req)) => Kind::Called {
                            fut: service.call(req),
                            permit: Some(shared.hold(permit)),
                            hold: hold.clone(),
                        },
                        _ => Kind::Failed {
                            err: Some("bulkhead future polled after completion".into()),
                        },
                    },
                    Poll::Ready(Err(Full)) => Kind::Failed {
                        err: Some(shared.rejection().into()),
                    },
                    Poll::Pending => {
                        if deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        // Out of time. Leaving the queue passes on a permit granted just now.
                        Kind::Failed {
                            err: Some(shared.rejection().into()),
                        }
                    }
                },
            };
            kind.set(next);
        }
    }
}
