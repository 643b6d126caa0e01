//! The chaos service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::{
    fault::Effect,
    future::ResponseFuture,
    handle::{ChaosHandle, Shared},
    respond::Respond,
    select::Select,
};

/// A service that injects the faults of its [`ChaosLayer`](crate::ChaosLayer) into the calls
/// it selects. A call that is not selected, or that draws no fault, goes to the inner service
/// unchanged. Ready when the inner service is: faults act in `call`, never on readiness.
///
/// A status, error or hang fault answers without calling the inner service, so what the inner
/// service reserved in `poll_ready` for that call (a `ConcurrencyLimit` permit, a `Buffer`
/// slot) stays reserved until the next call or until the service is dropped. Put the chaos
/// layer outside such layers, as a failing dependency would be: around the client, under the
/// protections you are testing.
#[derive(Clone)]
pub struct Chaos<S, Sel, A> {
    inner: S,
    shared: Arc<Shared>,
    select: Sel,
    answer: A,
}

impl<S, Sel, A> Chaos<S, Sel, A> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, select: Sel, answer: A) -> Self {
        Self {
            inner,
            shared,
            select,
            answer,
        }
    }

    /// The handle shared with the layer.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, Sel, A> Service<Req> for Chaos<S, Sel, A>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Sel: Select<Req>,
    A: Respond<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    // The call left alone is inlined into the caller: a call through a function boundary
    // returns its future through memory, and reading it back costs more than the check.
    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if !self.shared.is_active() || !self.select.selects(&req) {
            return ResponseFuture::pass(self.inner.call(req));
        }
        self.drawn(req)
    }
}

impl<S, Sel, A> Chaos<S, Sel, A> {
    /// A selected call: the draw, and the fault it got, if any.
    #[inline(never)]
    fn drawn<Req>(&mut self, req: Req) -> ResponseFuture<S::Future, S::Response>
    where
        S: Service<Req>,
        A: Respond<S::Response>,
    {
        match self.shared.draw() {
            None => ResponseFuture::pass(self.inner.call(req)),
            Some(Effect::Latency(delay)) => ResponseFuture::delayed(delay, self.inner.call(req)),
            Some(Effect::Answer(answer)) => {
                ResponseFuture::ready(self.answer.respond(answer).map_err(Into::into))
            }
            Some(Effect::Error(make)) => ResponseFuture::ready(Err(make())),
            Some(Effect::Hang) => ResponseFuture::hang(),
            Some(Effect::Abort(after)) => ResponseFuture::abort(self.inner.call(req), after),
        }
    }
}

impl<S: fmt::Debug, Sel: fmt::Debug, A> fmt::Debug for Chaos<S, Sel, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.shared.name())
            .field("active", &self.shared.is_active())
            .field("select", &self.select)
            .field("inner", &self.inner)
            .finish()
    }
}
