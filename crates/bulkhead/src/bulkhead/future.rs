//! The bulkhead's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_patterns_core::{BoxError, classify::Finish};
use tower_service::Service;

use super::{hold::Hold, pool::Shared};
use crate::semaphore::{Full, Waiter};

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
    pub(crate) fn called(fut: S::Future, permit: Hold, hold: H) -> Self {
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

    pub(crate) fn waiting(
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
