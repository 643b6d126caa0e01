//! The strangler service: decides each request's side and calls it.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_patterns_core::{BoxError, tenant::TenantId};
use tower_service::Service;

use super::{
    body::StranglerBody,
    future::{Observe, ResponseFuture},
};
use crate::{Side, StranglerError, key::StickyKey, state::Table, table::decide};

/// Sends each request to the legacy service or the new one, as the migration table says (see
/// the [crate docs](crate)). Built by [`StranglerLayer`](crate::StranglerLayer) around the
/// legacy service.
///
/// It is ready when both sides are (as tower's `Steer`), since the side is chosen per request.
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.legacy.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return Poll::Pending,
        }
        self.new.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let table = &self.table;
        if let Some(mirror) = &table.shadow {
            mirror.strip_marker(req.headers_mut());
        }
        let (index, route) = table.route(req.method(), req.uri().path());
        let pin = match TenantId::of(&req) {
            Some(t) => table.pin(t.as_str()),
            None => None,
        };
        let decision = decide(route.mode.get(), self.override_side(&req), pin, || {
            self.key.bucket(&req, table.salt)
        });
        route.count(decision.side);
        let observe = || {
            route.ramp.as_ref().map(|_| Observe {
                table: table.clone(),
                route: index,
                start: std::time::Instant::now(),
            })
        };
        match decision.side {
            Side::New => ResponseFuture::new(self.new.call(req), observe()),
            Side::Legacy
                if table
                    .legacy_read_only
                    .load(std::sync::atomic::Ordering::Relaxed)
                    && !req.method().is_safe() =>
            {
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
