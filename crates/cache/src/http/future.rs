//! The response future of [`HttpCache`](super::HttpCache).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use http::Response;
use tower_patterns_core::BoxError;

use super::HttpCacheBody;

/// The response future of [`HttpCache`](super::HttpCache): ready at once with a stored answer (a hit, or a
/// stale answer while the entry revalidates in the background); boxed on the paths that go to
/// the origin.
pub struct ResponseFuture<ResB> {
    kind: Kind<ResB>,
}

/// A response or the error.
type Answer<ResB> = Result<Response<HttpCacheBody<ResB>>, BoxError>;

enum Kind<ResB> {
    Ready(Option<Response<HttpCacheBody<ResB>>>),
    Origin(BoxFuture<'static, Answer<ResB>>),
}

impl<ResB> ResponseFuture<ResB> {
    pub(crate) fn ready(res: Response<HttpCacheBody<ResB>>) -> Self {
        Self {
            kind: Kind::Ready(Some(res)),
        }
    }

    pub(crate) fn origin(fut: impl Future<Output = Answer<ResB>> + Send + 'static) -> Self {
        Self {
            kind: Kind::Origin(fut.boxed()),
        }
    }
}

impl<ResB> fmt::Debug for ResponseFuture<ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Ready(_) => "ResponseFuture::Stored",
            Kind::Origin(_) => "ResponseFuture::Origin",
        })
    }
}

// The response is only ever moved out of its `Option`, never pinned: the future is `Unpin`
// whatever the body is.
impl<ResB> Unpin for ResponseFuture<ResB> {}

impl<ResB> Future for ResponseFuture<ResB> {
    type Output = Answer<ResB>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Ready(res) => Poll::Ready(
                res.take()
                    .ok_or_else(|| "ResponseFuture polled after completion".into()),
            ),
            Kind::Origin(fut) => fut.as_mut().poll(cx),
        }
    }
}
