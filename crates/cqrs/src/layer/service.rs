//! The service: commands to the write side, queries to the read side.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use futures_util::future::poll_fn;
use tower_patterns_core::BoxError;
use tower_patterns_eventstore::Committed;
use tower_service::Service;

use super::{
    adapter::CommandAdapter,
    classify::{Classify, Side},
    future::ResponseFuture,
    handle::{CqrsHandle, Stats},
};

/// What every service of one layer shares.
pub(crate) struct Shared<F, A> {
    pub(crate) classify: F,
    pub(crate) adapter: A,
    pub(crate) stats: Arc<Stats>,
}

/// Service that sends commands to the write side and queries to the read side (the service it
/// wraps). Made by [`CqrsLayer`](super::CqrsLayer).
///
/// Always ready: each request waits for the readiness of its own side inside its response
/// future (on a clone of that side, as tower's `Oneshot` and axum's router do), so a saturated
/// write side never holds back queries, and no capacity is reserved on a side the request will
/// not use.
pub struct Cqrs<Q, C, F, A> {
    queries: Q,
    commands: C,
    shared: Arc<Shared<F, A>>,
}

impl<Q, C, F, A> Cqrs<Q, C, F, A> {
    pub(crate) fn new(queries: Q, commands: C, shared: Arc<Shared<F, A>>) -> Self {
        Self {
            queries,
            commands,
            shared,
        }
    }

    /// The layer's handle.
    pub fn handle(&self) -> CqrsHandle {
        CqrsHandle::new(self.shared.stats.clone())
    }

    /// The read side.
    pub fn get_ref(&self) -> &Q {
        &self.queries
    }
}

impl<Q: Clone, C: Clone, F, A> Clone for Cqrs<Q, C, F, A> {
    fn clone(&self) -> Self {
        Self::new(
            self.queries.clone(),
            self.commands.clone(),
            self.shared.clone(),
        )
    }
}

impl<Q, C, F, A> fmt::Debug for Cqrs<Q, C, F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cqrs")
            .field("name", &self.shared.stats.name)
            .finish_non_exhaustive()
    }
}

impl<Req, Q, C, F, A> Service<Req> for Cqrs<Q, C, F, A>
where
    Req: Send + 'static,
    Q: Service<Req> + Clone,
    Q::Error: Into<BoxError>,
    Q::Response: Send + 'static,
    C: Service<A::Command, Response = Committed> + Clone + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    F: Classify<Req>,
    A: CommandAdapter<Req, Q::Response>,
{
    type Response = Q::Response;
    type Error = BoxError;
    type Future = ResponseFuture<Q, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        match shared.classify.classify(&req) {
            Side::Query => {
                shared.stats.queries.fetch_add(1, Relaxed);
                ResponseFuture::query(self.queries.clone(), req)
            }
            Side::Command => {
                shared.stats.commands.fetch_add(1, Relaxed);
                let shared = shared.clone();
                let mut commands = self.commands.clone();
                ResponseFuture::command(Box::pin(async move {
                    let result = async {
                        let command = shared.adapter.command(req).await?;
                        poll_fn(|cx| commands.poll_ready(cx))
                            .await
                            .map_err(Into::into)?;
                        let committed = commands.call(command).await.map_err(Into::into)?;
                        Ok(shared.adapter.respond(committed))
                    }
                    .await;
                    if result.is_err() {
                        shared.stats.command_errors.fetch_add(1, Relaxed);
                    }
                    result
                }))
            }
        }
    }
}
