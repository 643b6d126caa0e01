//! Response future of the circuit breaker, and the guard that records a call's outcome.

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_patterns_core::{
    BoxError,
    classify::{Finish, OnOutcome, Outcome},
};

use crate::{
    circuit::machine::Machine,
    circuit::state::{Permit, PermitKind},
};

/// How a breaker's services, futures and guards hold the breaker they share: an `Arc` (the
/// default), or a `&'static` one after [`CircuitBreakerLayer::leak`](crate::CircuitBreakerLayer::leak),
/// which admits a call without touching a reference count. Sealed: implemented for those two
/// only.
pub trait BreakerRef: sealed::Sealed + Clone + Send + Sync + 'static {
    /// The shared breaker.
    #[doc(hidden)]
    fn arc(&self) -> &Arc<Machine>;
}

impl BreakerRef for Arc<Machine> {
    #[inline(always)]
    fn arc(&self) -> &Arc<Machine> {
        self
    }
}

impl BreakerRef for &'static Arc<Machine> {
    #[inline(always)]
    fn arc(&self) -> &Arc<Machine> {
        self
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::sync::Arc<crate::circuit::machine::Machine> {}
    impl Sealed for &'static std::sync::Arc<crate::circuit::machine::Machine> {}
}

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    pub struct ResponseFuture<F, C, M: BreakerRef = Arc<Machine>> {
        #[pin]
        kind: Kind<F, C, M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, M: BreakerRef> {
        Called {
            #[pin]
            fut: F,
            // Boxed: only slow-call detection uses it, so the default future stays small.
            slow: Option<Pin<Box<SlowCall>>>,
            guard: Option<Guard<M>>,
            classifier: C,
        },
        Failed {
            err: Option<BoxError>,
        },
    }
}

pin_project! {
    /// When a call started, and (for calls counted in the closed window) the timer that
    /// fires when it becomes slow while still in flight.
    pub(crate) struct SlowCall {
        start: u64,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl SlowCall {
    pub(crate) fn new(start: u64, timer: Option<Sleep>) -> Pin<Box<Self>> {
        Box::pin(Self { start, timer })
    }
}

impl<F, C, M: BreakerRef> ResponseFuture<F, C, M> {
    pub(crate) fn called(
        fut: F,
        guard: Guard<M>,
        slow: Option<Pin<Box<SlowCall>>>,
        classifier: C,
    ) -> Self {
        Self {
            kind: Kind::Called {
                fut,
                slow,
                guard: Some(guard),
                classifier,
            },
        }
    }

    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            kind: Kind::Failed { err: Some(err) },
        }
    }
}

impl<F, C, M: BreakerRef> fmt::Debug for ResponseFuture<F, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, C, M, Res, E> Future for ResponseFuture<F, C, M>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    M: BreakerRef,
    C: Finish<Res, BoxError, Guard<M>>,
{
    type Output = Result<C::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                fut,
                slow,
                guard,
                classifier,
            } => {
                let result = match fut.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => {
                        // Still in flight: past the slow-call duration it counts as slow now,
                        // not only once (if ever) it finishes.
                        let timer = slow
                            .as_mut()
                            .and_then(|c| c.as_mut().project().timer.as_pin_mut());
                        if let Some(timer) = timer
                            && timer.poll(cx).is_ready()
                            && let Some(guard) = guard.as_mut()
                        {
                            guard.slow_in_flight();
                        }
                        return Poll::Pending;
                    }
                };
                let Some(mut guard) = guard.take() else {
                    return Poll::Ready(Err(PolledAfterCompletion.into()));
                };
                if let Some(call) = slow.take() {
                    guard.finished_after(call.start);
                }
                Poll::Ready(classifier.finish(result, guard))
            }
            KindProj::Failed { err } => Poll::Ready(Err(err
                .take()
                .unwrap_or_else(|| PolledAfterCompletion.into()))),
        }
    }
}

// The guard's second word: the permit's generation in the low 32 bits, then its kind, then
// flags. Two words in all, so moving the guard out of a future that was just built reads
// the same widths that were written.
const KIND_SHIFT: u32 = 32;
const SLOW_IN_FLIGHT: u64 = 1 << 40;
const SLOW: u64 = 1 << 41;
const DONE: u64 = 1 << 42;

/// Records the outcome of one admitted call in its breaker; gives the permit back if the
/// call ends without one (its future or body dropped).
///
/// Handed to the classifier through [`Finish`]; for HTTP it rides in the response body
/// until the body ends.
pub struct Guard<M: BreakerRef = Arc<Machine>> {
    machine: M,
    bits: u64,
}

impl<M: BreakerRef> fmt::Debug for Guard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("breaker", &self.machine.arc().config.name)
            .field("permit", &self.permit())
            .finish()
    }
}

impl<M: BreakerRef> Guard<M> {
    #[inline]
    pub(crate) fn new(machine: M, permit: Permit) -> Self {
        let kind = match permit.kind {
            PermitKind::Closed => 0,
            PermitKind::Probe => 1,
            PermitKind::RampProbe => 2,
            PermitKind::Free => 3,
        };
        Self {
            machine,
            bits: u64::from(permit.generation) | (kind << KIND_SHIFT),
        }
    }

    #[inline]
    fn permit(&self) -> Permit {
        let kind = match (self.bits >> KIND_SHIFT) & 0b11 {
            0 => PermitKind::Closed,
            1 => PermitKind::Probe,
            2 => PermitKind::RampProbe,
            _ => PermitKind::Free,
        };
        Permit {
            generation: self.bits as u32,
            kind,
        }
    }

    fn slow_in_flight(&mut self) {
        if self.bits & SLOW_IN_FLIGHT == 0 {
            self.bits |= SLOW_IN_FLIGHT | SLOW;
            self.machine
                .arc()
                .slow_call_started(self.permit(), self.machine.arc().now());
        }
    }

    /// The call answered; it is slow if it took the slow-call duration or longer.
    fn finished_after(&mut self, start: u64) {
        let slow = self.machine.arc().slow_call.unwrap_or(u64::MAX);
        if self.machine.arc().now().saturating_sub(start) >= slow {
            self.bits |= SLOW;
        }
    }

    #[inline]
    fn end_slow(&mut self) {
        if self.bits & SLOW_IN_FLIGHT != 0 {
            self.bits &= !SLOW_IN_FLIGHT;
            self.machine.arc().slow_call_ended(self.permit());
        }
    }
}

impl<M: BreakerRef> OnOutcome for Guard<M> {
    #[inline]
    fn on_outcome(mut self, outcome: Outcome) {
        self.end_slow();
        self.bits |= DONE;
        let machine = self.machine.arc();
        machine.record(self.permit(), outcome, self.bits & SLOW != 0, || {
            machine.now()
        });
    }
}

impl<M: BreakerRef> Drop for Guard<M> {
    #[inline]
    fn drop(&mut self) {
        if self.bits & DONE == 0 {
            self.end_slow();
            self.machine.arc().release(self.permit());
        }
    }
}

#[derive(Debug)]
struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker future polled after completion")
    }
}

impl Error for PolledAfterCompletion {}
