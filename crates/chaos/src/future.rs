//! The chaos service's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep};
use tower_patterns_core::BoxError;

use crate::error::ChaosError;

pin_project! {
    /// The response future of [`Chaos`](crate::Chaos): the inner future untouched, or the
    /// fault the call drew. A timer is boxed only when a latency or a timed abort fires, so a
    /// call left alone costs no allocation and the future is the inner one plus a tag.
    pub struct ResponseFuture<F, R> {
        #[pin]
        kind: Kind<F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Pass { #[pin] fut: F },
        Delayed { sleep: Option<Pin<Box<Sleep>>>, #[pin] fut: F },
        Ready { result: Option<Result<R, BoxError>> },
        Hang,
        Abort { #[pin] fut: F, deadline: Option<Pin<Box<Sleep>>> },
    }
}

impl<F, R> ResponseFuture<F, R> {
    pub(crate) const fn pass(fut: F) -> Self {
        Self {
            kind: Kind::Pass { fut },
        }
    }

    pub(crate) fn delayed(delay: Duration, fut: F) -> Self {
        Self {
            kind: Kind::Delayed {
                sleep: Some(Box::pin(sleep(delay))),
                fut,
            },
        }
    }

    pub(crate) const fn ready(result: Result<R, BoxError>) -> Self {
        Self {
            kind: Kind::Ready {
                result: Some(result),
            },
        }
    }

    pub(crate) const fn hang() -> Self {
        Self { kind: Kind::Hang }
    }

    pub(crate) fn abort(fut: F, after: Option<Duration>) -> Self {
        Self {
            kind: Kind::Abort {
                fut,
                deadline: after.map(|after| Box::pin(sleep(after))),
            },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Pass { fut } => fut.poll(cx).map_err(Into::into),
            KindProj::Delayed { sleep, fut } => {
                if let Some(timer) = sleep {
                    ready!(timer.as_mut().poll(cx));
                    *sleep = None;
                }
                fut.poll(cx).map_err(Into::into)
            }
            KindProj::Ready { result } => {
                Poll::Ready(result.take().unwrap_or_else(|| {
                    Err("chaos response future polled after it finished".into())
                }))
            }
            KindProj::Hang => Poll::Pending,
            KindProj::Abort { fut, deadline } => {
                if fut.poll(cx).is_ready() {
                    return Poll::Ready(Err(ChaosError::aborted().into()));
                }
                match deadline {
                    Some(timer) => {
                        ready!(timer.as_mut().poll(cx));
                        Poll::Ready(Err(ChaosError::aborted().into()))
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Pass { .. } => "pass",
            Kind::Delayed { .. } => "delayed",
            Kind::Ready { .. } => "ready",
            Kind::Hang => "hang",
            Kind::Abort { .. } => "abort",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}
