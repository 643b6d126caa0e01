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

use crate::machine::{Machine, Permit};

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            fut: F,
            #[pin]
            slow: Option<Sleep>,
            guard: Option<Guard>,
            classifier: C,
        },
        Failed {
            err: Option<BoxError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, guard: Guard, slow: Option<Sleep>, classifier: C) -> Self {
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

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
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

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Finish<Res, BoxError, Guard>,
{
    type Output = Result<C::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                fut,
                mut slow,
                guard,
                classifier,
            } => {
                let result = match fut.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => {
                        // Still in flight: past the slow-call duration it counts as slow now,
                        // not only once (if ever) it finishes.
                        if let Some(timer) = slow.as_mut().as_pin_mut() {
                            if timer.poll(cx).is_ready() {
                                slow.set(None);
                                if let Some(guard) = guard.as_mut() {
                                    guard.slow_in_flight();
                                }
                            }
                        }
                        return Poll::Pending;
                    }
                };
                match guard.take() {
                    Some(guard) => Poll::Ready(classifier.finish(result, guard)),
                    None => Poll::Ready(Err(PolledAfterCompletion.into())),
                }
            }
            KindProj::Failed { err } => Poll::Ready(Err(err
                .take()
                .unwrap_or_else(|| PolledAfterCompletion.into()))),
        }
    }
}

/// Records the outcome of one admitted call in its breaker; gives the permit back if the
/// call ends without one (its future or body dropped).
///
/// Handed to the classifier through [`Finish`]; for HTTP it rides in the response body
/// until the body ends.
pub struct Guard {
    machine: Arc<Machine>,
    permit: Permit,
    start: Option<u64>,
    slow_in_flight: bool,
    done: bool,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("breaker", &self.machine.config.name)
            .field("permit", &self.permit)
            .finish()
    }
}

impl Guard {
    pub(crate) fn new(machine: Arc<Machine>, permit: Permit, start: Option<u64>) -> Self {
        Self {
            machine,
            permit,
            start,
            slow_in_flight: false,
            done: false,
        }
    }

    fn slow_in_flight(&mut self) {
        if !self.slow_in_flight {
            self.slow_in_flight = true;
            self.machine
                .slow_call_started(self.permit, self.machine.now());
        }
    }

    fn end_slow(&mut self) {
        if self.slow_in_flight {
            self.slow_in_flight = false;
            self.machine.slow_call_ended(self.permit);
        }
    }
}

impl OnOutcome for Guard {
    fn on_outcome(mut self, outcome: Outcome) {
        let slow = self.slow_in_flight
            || match (self.start, self.machine.config.slow_call_duration) {
                (Some(start), Some(slow)) => {
                    self.machine.now().saturating_sub(start)
                        >= crate::config::saturating_nanos(slow)
                }
                _ => false,
            };
        self.end_slow();
        self.done = true;
        let machine = &self.machine;
        machine.record(self.permit, outcome, slow, || machine.now());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.end_slow();
            self.machine.release(self.permit);
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
