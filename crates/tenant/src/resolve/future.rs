//! The response future: core's check-then-call future, whose check is the registry lookup the
//! request waits for (or the answer the cache already had), and whose gate puts the admitted
//! tenant in the request.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use pin_project_lite::pin_project;
use tower_patterns_core::{
    BoxError,
    check::{CheckThenCall, Gate},
};
use tower_service::Service;

use super::admit::{Lookup, admit};
use crate::registry::TenantRecord;

/// What the tenant layer does around the call: the admitted tenant into the request's
/// extensions before it, nothing to the response.
#[derive(Clone, Copy, Debug)]
pub(super) struct Admit;

impl<B, Res> Gate<Request<B>, Res> for Admit {
    type Checked = Arc<TenantRecord>;
    type After = ();

    #[inline]
    fn before(self, record: Arc<TenantRecord>, req: &mut Request<B>) -> Result<(), BoxError> {
        admit(req, record);
        Ok(())
    }

    #[inline]
    fn after((): (), _: &mut Res) {}
}

pin_project! {
    /// The response future of [`Tenancy`](super::Tenancy): the registry lookup, if the tenant
    /// was not cached, then the inner service's call (core's
    /// [`CheckThenCall`]).
    ///
    /// `B` is the request body.
    pub struct ResponseFuture<Svc: Service<Request<B>>, B> {
        #[pin]
        inner: CheckThenCall<Svc, Request<B>, Lookup, Admit>,
    }
}

impl<Svc: Service<Request<B>>, B> ResponseFuture<Svc, B> {
    pub(super) const fn new(inner: CheckThenCall<Svc, Request<B>, Lookup, Admit>) -> Self {
        Self { inner }
    }
}

impl<Svc: Service<Request<B>>, B> fmt::Debug for ResponseFuture<Svc, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResponseFuture").field(&self.inner).finish()
    }
}

impl<Svc, B> Future for ResponseFuture<Svc, B>
where
    Svc: Service<Request<B>>,
    Svc::Error: Into<BoxError>,
{
    type Output = Result<Svc::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
