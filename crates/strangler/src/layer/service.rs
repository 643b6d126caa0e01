//! The strangler service: decides each request's side and calls it.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::ServiceExt;
use tower_patterns_core::{BoxError, tenant::TenantId};
use tower_service::Service;

use super::{
    body::StranglerBody,
    future::{Observe, ResponseFuture},
};
use crate::{
    Mode, Side, StranglerError,
    key::StickyKey,
    state::Table,
    table::{Reason, decide},
};

/// Sends each request to the legacy service or the new one, as the migration table says (see
/// the [crate docs](crate)). Built by [`StranglerLayer`](crate::StranglerLayer) around the
/// legacy service.
///
/// It is ready when the legacy side is; a request for the new side waits for a clone of the
/// new side to be ready within its call (as tower's `oneshot`), so that the new side, which
/// takes part of the traffic at most, never holds up the rest.
pub struct Strangler<L, N, K> {
    pub(crate) legacy: L,
    pub(crate) new: N,
    pub(crate) key: K,
    pub(crate) table: Arc<Table>,
}

impl<L: Clone, N: Clone, K: Clone> Clone for Strangler<L, N, K> {
    fn clone(&self) -> Self {
        Self {
            legacy: self.legacy.clone(),
            new: self.new.clone(),
            key: self.key.clone(),
            table: self.table.clone(),
        }
    }
}

impl<L, N, K> std::fmt::Debug for Strangler<L, N, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strangler")
            .field("name", &self.table.name)
            .finish_non_exhaustive()
    }
}

impl<L, N, K> Strangler<L, N, K> {
    /// The migration's handle.
    pub fn handle(&self) -> crate::StranglerHandle {
        crate::StranglerHandle::new(self.table.clone())
    }

    /// The legacy service.
    pub fn legacy(&self) -> &L {
        &self.legacy
    }

    /// The new service.
    pub fn new_side(&self) -> &N {
        &self.new
    }

    /// The side named by the override header, if the migration has one and the request sends
    /// a valid value; a malformed value is ignored (and logged, at most once a second).
    #[inline]
    fn override_side<B>(&self, req: &Request<B>) -> Option<Side> {
        let name = self.table.override_header.as_ref()?;
        let mut values = req.headers().get_all(name).iter();
        let value = values.next()?;
        let side = match value.as_bytes() {
            v if values.next().is_some() => Err(v),
            v if v.eq_ignore_ascii_case(b"legacy") => Ok(Side::Legacy),
            v if v.eq_ignore_ascii_case(b"new") => Ok(Side::New),
            v => Err(v),
        };
        match side {
            Ok(side) => Some(side),
            Err(bad) => {
                if self.table.log_bad_override_now() {
                    tracing::warn!(
                        target: "tower_patterns_strangler",
                        name = %self.table.name,
                        header = %name,
                        value = %String::from_utf8_lossy(&bad[..bad.len().min(64)]),
                        "malformed override header ignored (expected one `legacy` or `new`)"
                    );
                }
                None
            }
        }
    }
}

/// Drops a ready service for a fresh clone, releasing whatever its `poll_ready` reserved (a
/// permit of a concurrency limit) when the request does not go to it.
fn release<S: Clone>(ready: &mut S) {
    let fresh = ready.clone();
    drop(std::mem::replace(ready, fresh));
}

impl<L, N, K, B, LB, NB> Service<Request<B>> for Strangler<L, N, K>
where
    L: Service<Request<B>, Response = Response<LB>> + Clone + Send + 'static,
    L::Error: Into<BoxError>,
    L::Future: Send + 'static,
    N: Service<Request<B>, Response = Response<NB>> + Clone + Send + 'static,
    N::Error: Into<BoxError>,
    N::Future: Send + 'static,
    K: StickyKey<Request<B>>,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    LB: Body<Data = Bytes> + Send + 'static,
    LB::Error: Into<BoxError>,
    NB: Body<Data = Bytes> + Send + 'static,
    NB::Error: Into<BoxError>,
{
    type Response = Response<StranglerBody<LB, NB>>;
    type Error = BoxError;
    type Future = ResponseFuture<L::Future, N::Future, LB>;

    /// Ready when the legacy side is. The new side is made ready within each call that goes
    /// to it (a clone of it, as tower's `oneshot`): it takes part of the traffic at most, and
    /// its readiness (or its failure) must never hold up the requests that stay on legacy.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.legacy.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let table = &self.table;
        let (index, route) = table.route(req.method(), req.uri().path());
        // Overrides and pins are for the routes being migrated, not for paths no route names
        // while those stay on legacy (the new side does not serve them).
        let mode = route.mode.get();
        let declared = index + 1 < table.routes.len() || mode != Mode::Legacy;
        let pin = match declared && table.has_pins() {
            true => TenantId::of(&req).and_then(|t| table.pin(t.as_str())),
            false => None,
        };
        let over = if declared {
            self.override_side(&req)
        } else {
            None
        };
        let decision = decide(mode, over, pin, || self.key.bucket(&req, table.salt));
        route.count(decision.side);
        // Only this layer marks shadow requests: a client's marker could make a side that
        // honours it (the new side, or legacy for another route's noise calls) skip a real
        // request's effects.
        if req.headers().contains_key(&table.marker) {
            req.headers_mut().remove(&table.marker);
        }
        // A ramp judges the traffic its share sends, not the overridden or pinned requests.
        let judged = matches!(decision.reason, Reason::Mode | Reason::Split);
        let observe = || {
            route
                .ramp
                .as_ref()
                .filter(|_| judged)
                .map(|_| Observe::start(table.clone(), index))
        };
        let read_only = || {
            !req.method().is_safe()
                && table
                    .legacy_read_only
                    .load(std::sync::atomic::Ordering::Relaxed)
        };
        match decision.side {
            Side::New => {
                // Legacy's reservation from `poll_ready` goes unspent: release it.
                release(&mut self.legacy);
                // A clone of the new side, asked once whether it is ready now: if so it is
                // called at once; if not, the call waits for it (its readiness asked again
                // with this task's waker) in a boxed future, so the new side's readiness
                // never holds up the service's.
                let mut new = self.new.clone();
                let mut now = Context::from_waker(std::task::Waker::noop());
                match new.poll_ready(&mut now) {
                    Poll::Ready(Ok(())) => ResponseFuture::new(new.call(req), observe()),
                    Poll::Ready(Err(e)) => {
                        // A failed new side: an error for this request (and for the ramp).
                        drop(observe().map(|o| o.on_new()));
                        ResponseFuture::refused(e.into())
                    }
                    Poll::Pending => ResponseFuture::waiting(Box::pin(new.oneshot(req)), observe()),
                }
            }
            Side::Legacy | Side::Shadow if read_only() => {
                release(&mut self.legacy);
                ResponseFuture::refused(StranglerError::read_only().into())
            }
            Side::Shadow => match crate::shadow::start(self, req) {
                Ok(fut) => ResponseFuture::shadow(fut),
                Err(req) => ResponseFuture::legacy(self.legacy.call(req), None),
            },
            Side::Legacy => ResponseFuture::legacy(self.legacy.call(req), observe()),
        }
    }
}
