//! The hedging service.

use std::{
    fmt,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower_patterns_core::BoxError;
use tower_service::Service;

use super::{HedgingLayer, future::ResponseFuture};

/// Middleware that hedges slow requests; see [`HedgingLayer`]. The copy is sent through a
/// clone of the inner service, made ready first, so `S` must be `Clone`.
pub struct Hedging<S, P> {
    inner: S,
    layer: HedgingLayer<P>,
}

impl<S, P> Hedging<S, P> {
    pub(crate) fn new(inner: S, layer: HedgingLayer<P>) -> Self {
        Self { inner, layer }
    }

    /// A handle on the layer's shared state.
    pub fn handle(&self) -> super::HedgingHandle {
        self.layer.handle()
    }

    tower_patterns_core::inner_service_accessors!();
}

impl<S: Clone, P: Clone> Clone for Hedging<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Hedging<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedging")
            .field("inner", &self.inner)
            .field("delay", &self.layer.shared.delay)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Hedging<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Fn(&Req) -> Option<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let copy = (self.layer.copy)(&req);
        let shared = &self.layer.shared;
        let delay = shared.delay();
        let backup = copy.map(|req| {
            super::future::Backup::new(self.inner.clone(), req, tokio::time::sleep(delay))
        });
        ResponseFuture::new(self.inner.call(req), backup, shared.clone(), Instant::now())
    }
}
