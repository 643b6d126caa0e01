//! The circuit breaker service.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::futures::OwnedNotified, time::Sleep};
use tower_patterns_core::{
    BoxError, Rejected, RejectionKind,
    classify::{ErrorsAsFailures, Finish},
};
use tower_service::Service;

use crate::{
    State,
    circuit::future::{BreakerRef, Guard, ResponseFuture, SlowCall},
    circuit::machine::Machine,
    circuit::state::{Admission, Permit, PermitKind},
};

/// Middleware that stops calling a failing service and fails fast instead.
///
/// Built by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer). By default the service is always ready (it polls its
/// inner service only while the circuit lets calls through) and `call` returns a
/// [`Rejected`] with [`RejectionKind::CircuitOpen`] and the time left open, without touching
/// the inner service. In backpressure mode `poll_ready` waits instead.
pub struct CircuitBreaker<S, C = ErrorsAsFailures, M: BreakerRef = Arc<Machine>> {
    inner: S,
    machine: M,
    classifier: C,
    inner_ready: bool,
    backpressure: bool,
    wait: Option<Box<Wait>>,
}

/// The state of a service waiting in backpressure mode (allocated on first wait).
struct Wait {
    reserved: Option<Reservation>,
    sleep: Option<Pin<Box<Sleep>>>,
    notified: Option<Pin<Box<OwnedNotified>>>,
}

/// A permit taken in `poll_ready`, given back if never spent.
struct Reservation {
    machine: Arc<Machine>,
    permit: Option<Permit>,
}

impl Reservation {
    fn take(mut self) -> Option<Permit> {
        self.permit.take()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.machine.release(permit);
        }
    }
}

impl<S, C, M: BreakerRef> CircuitBreaker<S, C, M> {
    pub(crate) fn from_parts(inner: S, machine: M, classifier: C) -> Self {
        Self {
            backpressure: machine.arc().config.backpressure,
            inner,
            machine,
            classifier,
            inner_ready: false,
            wait: None,
        }
    }

    tower_patterns_core::inner_service_accessors!();

    /// A handle on the breaker this service shares with its layer and clones.
    pub fn handle(&self) -> crate::CircuitBreakerHandle {
        crate::CircuitBreakerHandle::new(self.machine.arc().clone())
    }
}

impl<S: Clone, C: Clone, M: BreakerRef> Clone for CircuitBreaker<S, C, M> {
    fn clone(&self) -> Self {
        // A clone has not been polled: no readiness, no reservation.
        Self::from_parts(
            self.inner.clone(),
            self.machine.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C, M: BreakerRef> fmt::Debug for CircuitBreaker<S, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.machine.arc().config.name)
            .field("state", &self.machine.arc().word().state())
            .finish()
    }
}

impl<S, C, M, Req> Service<Req> for CircuitBreaker<S, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: BreakerRef,
    C: Finish<S::Response, BoxError, Guard<M>> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.backpressure {
            return self.poll_ready_backpressure(cx);
        }
        let machine = self.machine.arc();
        let word = machine.word();
        let rejecting = !word.is_closed()
            && match word.state() {
                State::ForcedOpen => true,
                // Once the open time is over the next call may be a probe: get the inner
                // service ready for it.
                State::Open => {
                    !machine.metrics_only()
                        && machine.open_remaining(machine.now()).unwrap_or(0) > 0
                }
                _ => false,
            };
        if rejecting {
            // Ready without the inner service: `call` will fail fast.
            self.inner_ready = false;
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let reserved = match &mut self.wait {
            Some(wait) => wait.reserved.take().and_then(Reservation::take),
            None => None,
        };
        let inner_ready = std::mem::replace(&mut self.inner_ready, false);
        call(
            &self.machine,
            &mut self.inner,
            req,
            &self.classifier,
            inner_ready,
            reserved,
        )
    }
}

impl<S, C, M: BreakerRef> CircuitBreaker<S, C, M> {
    fn poll_ready_backpressure<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let machine = self.machine.arc();
        let wait = self.wait.get_or_insert_with(|| {
            Box::new(Wait {
                reserved: None,
                sleep: None,
                notified: None,
            })
        });
        loop {
            if wait.reserved.is_some() {
                return match self.inner.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.inner_ready = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                    Poll::Pending => Poll::Pending,
                };
            }
            // Listen before looking, so a release between the two is not missed.
            let notified = wait.notified.get_or_insert_with(|| {
                Box::pin(machine.observer.notify().clone().notified_owned())
            });
            let now = machine.now();
            match machine.acquire(|| now, false) {
                Admission::Permit(permit) => {
                    wait.reserved = Some(Reservation {
                        machine: machine.clone(),
                        permit: Some(permit),
                    });
                    wait.notified = None;
                }
                Admission::Rejected(open_for) => {
                    if notified.as_mut().poll(cx).is_ready() {
                        wait.notified = None;
                        continue;
                    }
                    if let Some(open_for) = open_for {
                        let deadline = machine.observer.base()
                            + Duration::from_nanos(now.saturating_add(open_for));
                        let sleep = wait
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        sleep.as_mut().reset(deadline);
                        if sleep.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Admits or rejects one call; shared by the plain and the keyed service.
pub(crate) fn call<S, C, M, Req>(
    machine_ref: &M,
    inner: &mut S,
    req: Req,
    classifier: &C,
    inner_ready: bool,
    reserved: Option<Permit>,
) -> ResponseFuture<S::Future, C, M>
where
    S: Service<Req>,
    C: Clone,
    M: BreakerRef,
{
    let machine = machine_ref.arc();
    let admission = match reserved {
        Some(permit) => Admission::Permit(permit),
        None => machine.acquire(|| machine.now(), true),
    };
    match admission {
        Admission::Permit(permit) if inner_ready => {
            let slow = machine.slow_call.map(|slow| {
                let start = machine.now();
                // Closed-state calls also count as slow while still in flight; probes are
                // judged when they answer.
                let timer = (permit.kind == PermitKind::Closed).then(|| {
                    let at = Duration::from_nanos(start.saturating_add(slow));
                    tokio::time::sleep_until(machine.observer.base() + at)
                });
                SlowCall::new(start, timer)
            });
            let guard = Guard::new(machine_ref.clone(), permit);
            ResponseFuture::called(inner.call(req), guard, slow, classifier.clone())
        }
        Admission::Permit(permit) => {
            // The circuit let the call through after `poll_ready` saw it open, so the inner
            // service was not made ready: reject this one rather than call it unready.
            machine.release(permit);
            ResponseFuture::failed(rejection(machine, None).into())
        }
        Admission::Rejected(open_for) => {
            ResponseFuture::failed(rejection(machine, open_for).into())
        }
    }
}

fn rejection(machine: &Machine, open_for: Option<u64>) -> Rejected {
    let rejected =
        Rejected::new(RejectionKind::CircuitOpen).with_name(machine.observer.name().clone());
    match open_for {
        Some(nanos) => rejected.with_retry_after(Duration::from_nanos(nanos)),
        None => rejected,
    }
}
