//! The shard router's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_patterns_core::BoxError;
use tower_service::Service;

/// Counts a call in flight on a shard while it lives.
pub(crate) struct LoadGuard {
    loads: Arc<[AtomicU64]>,
    shard: usize,
}

impl LoadGuard {
    pub(crate) fn new(loads: Arc<[AtomicU64]>, shard: usize) -> Self {
        loads[shard].fetch_add(1, Relaxed);
        Self { loads, shard }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.loads[self.shard].fetch_sub(1, Relaxed);
    }
}

/// The old shard of a migrating slot, read again after a miss.
pub(crate) struct Fallback<S, Req, Res> {
    pub(crate) service: S,
    pub(crate) req: Req,
    pub(crate) is_miss: fn(&Res) -> bool,
}

pin_project! {
    /// Response future of [`ShardRouter`](super::ShardRouter).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: RouteState<S, Req, S::Response>,
    }
}

pin_project! {
    #[project = RouteStateProj]
    enum RouteState<S, Req, Res>
    where
        S: Service<Req>,
    {
        Primary {
            #[pin]
            fut: Oneshot<S, Req>,
            fallback: Option<Fallback<S, Req, Res>>,
            load: Option<LoadGuard>,
        },
        Fallback {
            #[pin]
            fut: Oneshot<S, Req>,
        },
        Failed {
            err: Option<BoxError>,
        },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn new(
        fut: Oneshot<S, Req>,
        fallback: Option<Fallback<S, Req, S::Response>>,
        load: Option<LoadGuard>,
    ) -> Self {
        Self {
            state: RouteState::Primary {
                fut,
                fallback,
                load,
            },
        }
    }

    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            state: RouteState::Failed { err: Some(err) },
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                RouteStateProj::Primary { fut, fallback, .. } => {
                    let result = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                    match (result, fallback.take()) {
                        (Ok(res), Some(fb)) if (fb.is_miss)(&res) => RouteState::Fallback {
                            fut: Oneshot::new(fb.service, fb.req),
                        },
                        (result, _) => return Poll::Ready(result),
                    }
                }
                RouteStateProj::Fallback { fut } => {
                    return fut.poll(cx).map_err(Into::into);
                }
                RouteStateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "route future polled after completion".into())));
                }
            };
            state.set(next);
        }
    }
}
