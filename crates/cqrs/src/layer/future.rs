//! The response future of [`Cqrs`](super::Cqrs).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;
use tower_patterns_core::BoxError;
use tower_service::Service;

pin_project! {
    /// Response future of [`Cqrs`](super::Cqrs): a query waits for its read side's
    /// readiness and then its response, with no allocation; a command runs the adapter, the
    /// write side and the response mapping in one boxed future (the write side's own future is
    /// boxed already).
    pub struct ResponseFuture<Q, Req>
    where
        Q: Service<Req>,
    {
        #[pin]
        state: State<Q, Req, Q::Future, Q::Response>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Q, Req, Fut, Res> {
        // The read side's clone, not yet ready, and the query.
        Waiting { svc: Q, req: Option<Req> },
        // The read side's call.
        Query { #[pin] fut: Fut },
        // The whole command.
        Command { fut: BoxFuture<'static, Result<Res, BoxError>> },
    }
}

impl<Q: Service<Req>, Req> ResponseFuture<Q, Req> {
    pub(crate) fn query(svc: Q, req: Req) -> Self {
        Self {
            state: State::Waiting {
                svc,
                req: Some(req),
            },
        }
    }

    pub(crate) fn command(fut: BoxFuture<'static, Result<Q::Response, BoxError>>) -> Self {
        Self {
            state: State::Command { fut },
        }
    }
}

impl<Q, Req> Future for ResponseFuture<Q, Req>
where
    Q: Service<Req>,
    Q::Error: Into<BoxError>,
{
    type Output = Result<Q::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Waiting { svc, req } => {
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err("query polled after it was sent".into()));
                    };
                    let fut = svc.call(req);
                    state.set(State::Query { fut });
                }
                StateProj::Query { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Command { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

impl<Q: Service<Req>, Req> fmt::Debug for ResponseFuture<Q, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match &self.state {
            State::Waiting { .. } => "query (waiting for the read side)",
            State::Query { .. } => "query",
            State::Command { .. } => "command",
        };
        f.debug_struct("ResponseFuture")
            .field("side", &side)
            .finish()
    }
}
