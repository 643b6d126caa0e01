//! The response future: the registry lookup the request waits for (if any), then the inner
//! service's call.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Request;
use pin_project_lite::pin_project;
use tower_patterns_core::BoxError;
use tower_service::Service;

use super::admit::{Lookup, admit};

pin_project! {
    /// The response future of [`Tenancy`](super::Tenancy).
    pub struct ResponseFuture<Svc: Service<Req>, Req> {
        #[pin]
        state: State<Svc, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Svc: Service<Req>, Req> {
        Looking { lookup: Lookup, pending: Option<(Svc, Req)> },
        Called { #[pin] fut: Svc::Future },
        Failed { err: Option<BoxError> },
    }
}

impl<Svc: Service<Req>, Req> ResponseFuture<Svc, Req> {
    /// The inner service was called at once (the tenant was cached).
    pub(super) const fn called(fut: Svc::Future) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    /// The request was refused before any lookup.
    pub(super) const fn failed(err: BoxError) -> Self {
        Self {
            state: State::Failed { err: Some(err) },
        }
    }

    /// The request waits for `lookup`; the ready `svc` is taken (a clone left in its place)
    /// to be called after it.
    pub(super) fn looking(lookup: Lookup, svc: &mut Svc, req: Req) -> Self
    where
        Svc: Clone,
    {
        let clone = svc.clone();
        let svc = std::mem::replace(svc, clone);
        Self {
            state: State::Looking {
                lookup,
                pending: Some((svc, req)),
            },
        }
    }
}

impl<Svc: Service<Req>, Req> fmt::Debug for ResponseFuture<Svc, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Svc, B> Future for ResponseFuture<Svc, Request<B>>
where
    Svc: Service<Request<B>>,
    Svc::Error: Into<BoxError>,
{
    type Output = Result<Svc::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Looking { lookup, pending } => {
                    let record = ready!(lookup.as_mut().poll(cx));
                    let Some((mut svc, mut req)) = pending.take() else {
                        return Poll::Ready(Err("tenant future polled after completion".into()));
                    };
                    match record {
                        Ok(record) => admit(&mut req, record),
                        Err(err) => return Poll::Ready(Err(err.into())),
                    }
                    this.state.set(State::Called { fut: svc.call(req) });
                }
                StateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "tenant future polled after completion".into())));
                }
            }
        }
    }
}
