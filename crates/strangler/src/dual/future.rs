//! The response future of [`DualWrite`](super::DualWrite).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;

use super::{DualError, Written};

/// Response future of [`DualWrite`](super::DualWrite): the write's transaction on the
/// primary. Boxed: it runs a database round trip, beside which the allocation is nothing.
pub struct ResponseFuture {
    pub(crate) inner: BoxFuture<'static, Result<Written, DualError>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Written, DualError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
