//! The bulkhead service.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Sleep;
use tower_patterns_core::{BoxError, classify::Finish};
use tower_service::Service;

use super::{
    future::ResponseFuture,
    hold::{Hold, UntilResponse},
    pool::Shared,
};
use crate::{
    BulkheadHandle,
    semaphore::{Full, Waiter},
};

/// Middleware that bounds the calls in flight to its inner service; see [`BulkheadLayer`](crate::BulkheadLayer).
///
/// A call takes a permit when one is free; otherwise it waits in FIFO order for up to
/// `max_wait` (the waiting room holds `max_waiting` calls), and is rejected with
/// [`Rejected`](tower_patterns_core::Rejected) ([`RejectionKind::BulkheadFull`](tower_patterns_core::RejectionKind::BulkheadFull)) when the wait is over or the room is full.
/// A call that waits is sent once it has its permit, to the inner service as it was when
/// polled ready (the service moves into the response future, and a clone stays behind), so
/// `S` must be `Clone`.
///
/// By default the service is always ready, as tower's `LoadShed` is: `poll_ready` polls the
/// inner service only to remember whether it was ready (an inner error is passed on), and a
/// call made when it was not is rejected at once, without a permit, with a [`Rejected`](tower_patterns_core::Rejected) of
/// kind [`RejectionKind::LoadShed`](tower_patterns_core::RejectionKind::LoadShed). Readiness counts for one call. With
/// [`BulkheadBuilder::backpressure`](crate::BulkheadBuilder::backpressure), `poll_ready` waits instead, as tower's `ConcurrencyLimit` does.
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
    pub(crate) fn new(inner: S, shared: Arc<Shared>, hold: H) -> Self {
        Self {
            inner,
            shared,
            hold,
            inner_ready: false,
            ready: None,
        }
    }

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

/// Admits one call through `shared`'s pool; shared by the plain and the keyed service.
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
