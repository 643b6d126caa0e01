//! The response future of [`ReplicaRouter`](super::ReplicaRouter).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tower_patterns_core::BoxError;

/// Response future of [`ReplicaRouter`](super::ReplicaRouter): getting a connection from the
/// chosen node's pool, waiting for the inner service, its call, and reading the WAL position
/// for the response's mark, in one boxed future. The box costs far less than the database
/// round trips every request makes.
pub struct ResponseFuture<Res> {
    inner: BoxFuture<'static, Result<Res, BoxError>>,
}

impl<Res> ResponseFuture<Res> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<Res, BoxError>>) -> Self {
        Self { inner }
    }
}

impl<Res> Future for ResponseFuture<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<Res> fmt::Debug for ResponseFuture<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
