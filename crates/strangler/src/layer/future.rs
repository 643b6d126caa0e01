//! The strangler's response future.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;
use std::time::Instant;
use tower_patterns_core::BoxError;

use super::body::StranglerBody;
use crate::state::Table;

/// Records an answer in its route's ramp window: when it comes, or as an error when the call
/// is dropped first (cut by a timeout, or its client gone), so a side that hangs counts
/// against itself rather than vanishing from the window. A call that neither answers nor is
/// dropped is never seen: a new side that can hang needs a timeout (the gateway has one per
/// attempt).
#[derive(Debug)]
pub(crate) struct Observe {
    table: Arc<Table>,
    route: usize,
    start: Instant,
    /// The side, once known; `None` once recorded.
    new: Option<bool>,
}

impl Observe {
    pub(crate) fn start(table: Arc<Table>, route: usize) -> Self {
        Self {
            table,
            route,
            start: Instant::now(),
            new: None,
        }
    }

    /// The observation of a call to the new side.
    pub(crate) fn on_new(self) -> Self {
        self.side(true)
    }

    fn side(mut self, new: bool) -> Self {
        self.new = Some(new);
        self
    }

    fn record(&mut self, error: bool) {
        if let (Some(new), Some(slot)) = (self.new.take(), &self.table.routes[self.route].ramp) {
            let window = if new { &slot.new } else { &slot.legacy };
            window.record(error, self.start.elapsed());
        }
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.record(true);
    }
}

type ShadowFuture<LB> =
    Pin<Box<dyn Future<Output = Result<Response<crate::shadow::Tee<LB>>, BoxError>> + Send>>;

/// A call to the new side that waits for it to be ready (boxed: the rare path).
type Waiting<NF> = Pin<Box<dyn Future<Output = <NF as Future>::Output> + Send>>;

pin_project! {
    /// The response future of [`Strangler`](crate::Strangler): the chosen side's call.
    pub struct ResponseFuture<LF, NF: Future, LB> {
        #[pin]
        inner: Inner<LF, NF, LB>,
    }
}

impl<LF, NF: Future, LB> ResponseFuture<LF, NF, LB> {
    pub(crate) fn legacy(fut: LF, observe: Option<Observe>) -> Self {
        let observe = observe.map(|o| o.side(false));
        Self {
            inner: Inner::Legacy { fut, observe },
        }
    }

    pub(crate) fn new(fut: NF, observe: Option<Observe>) -> Self {
        let observe = observe.map(|o| o.side(true));
        Self {
            inner: Inner::New { fut, observe },
        }
    }

    pub(crate) fn waiting(fut: Waiting<NF>, observe: Option<Observe>) -> Self {
        let observe = observe.map(|o| o.side(true));
        Self {
            inner: Inner::Waiting { fut, observe },
        }
    }

    pub(crate) fn shadow(fut: ShadowFuture<LB>) -> Self {
        Self {
            inner: Inner::Shadow { fut },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            inner: Inner::Refused { error: Some(error) },
        }
    }
}

pin_project! {
    #[project = Proj]
    enum Inner<LF, NF: Future, LB> {
        Legacy {
            #[pin]
            fut: LF,
            observe: Option<Observe>,
        },
        New {
            #[pin]
            fut: NF,
            observe: Option<Observe>,
        },
        Waiting {
            fut: Waiting<NF>,
            observe: Option<Observe>,
        },
        Shadow {
            fut: ShadowFuture<LB>,
        },
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<LF, NF: Future, LB> std::fmt::Debug for ResponseFuture<LF, NF, LB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match &self.inner {
            Inner::Legacy { .. } => "legacy",
            Inner::New { .. } | Inner::Waiting { .. } => "new",
            Inner::Shadow { .. } => "shadow",
            Inner::Refused { .. } => "refused",
        };
        f.debug_tuple("ResponseFuture").field(&side).finish()
    }
}

fn observe<B, E>(observe: Option<Observe>, result: &Result<Response<B>, E>) {
    if let Some(mut o) = observe {
        let error = result
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        o.record(error);
    }
}

impl<LF, NF, LB, NB, LE, NE> Future for ResponseFuture<LF, NF, LB>
where
    LF: Future<Output = Result<Response<LB>, LE>>,
    NF: Future<Output = Result<Response<NB>, NE>>,
    LE: Into<BoxError>,
    NE: Into<BoxError>,
{
    type Output = Result<Response<StranglerBody<LB, NB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            Proj::Legacy { fut, observe: o } => {
                let result = ready!(fut.poll(cx));
                observe(o.take(), &result);
                Poll::Ready(
                    result
                        .map(|r| r.map(StranglerBody::legacy))
                        .map_err(Into::into),
                )
            }
            Proj::New { fut, observe: o } => {
                let result = ready!(fut.poll(cx));
                observe(o.take(), &result);
                Poll::Ready(
                    result
                        .map(|r| r.map(StranglerBody::new))
                        .map_err(Into::into),
                )
            }
            Proj::Waiting { fut, observe: o } => {
                let result = ready!(fut.as_mut().poll(cx));
                observe(o.take(), &result);
                Poll::Ready(
                    result
                        .map(|r| r.map(StranglerBody::new))
                        .map_err(Into::into),
                )
            }
            Proj::Shadow { fut } => {
                let res = ready!(fut.as_mut().poll(cx));
                Poll::Ready(res.map(|r| r.map(StranglerBody::teed)))
            }
            Proj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}
