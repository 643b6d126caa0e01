//! The response future of the cache-aside service.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tower_patterns_core::BoxError;

/// The response future of [`Cache`](super::Cache): ready at once on a hit, boxed on the paths that load.
pub struct ResponseFuture<V> {
    pub(crate) kind: Kind<V>,
}

pub(crate) enum Kind<V> {
    Ready(Option<V>),
    Load(BoxFuture<'static, Result<V, BoxError>>),
}

impl<V> fmt::Debug for ResponseFuture<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Ready(_) => "ResponseFuture::Hit",
            Kind::Load(_) => "ResponseFuture::Load",
        })
    }
}

// The value is only ever moved out of its `Option`, never pinned: the future is `Unpin`
// whatever `V` is.
impl<V> Unpin for ResponseFuture<V> {}

impl<V> Future for ResponseFuture<V> {
    type Output = Result<V, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Ready(v) => Poll::Ready(Ok(v
                .take()
                .expect("ResponseFuture polled after completion"))),
            Kind::Load(f) => f.as_mut().poll(cx),
        }
    }
}
