//! The router layer and service: writes to the primary, reads to a replica that has replayed
//! the request's mark.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_patterns_core::BoxError;
use tower_patterns_cqrs::layer::{Classify, HttpClassifier, Side};
use tower_service::Service;

use super::{
    future::ResponseFuture,
    handle::ReplicaSetHandle,
    route::{self, Route},
    set::ReplicaSet,
    state::InFlight,
};
use crate::concern::{ConcernOf, MarkResponse};

/// The node a request was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The primary.
    Primary,
    /// The replica of this name (as given to [`ReplicaSetBuilder::replica`](super::ReplicaSetBuilder::replica)).
    Replica(Arc<str>),
}

impl Node {
    /// True for [`Node::Primary`].
    pub const fn is_primary(&self) -> bool {
        matches!(self, Self::Primary)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Replica(name) => write!(f, "replica {name}"),
        }
    }
}

/// What the service behind a [`ReplicaRouter`] receives: the request, a connection of the
/// chosen node's pool (returned to it when dropped), and which node that is.
#[derive(Debug)]
pub struct Routed<Req> {
    /// The request as the router received it.
    pub request: Req,
    /// A connection to the chosen node: run the request's SQL on it.
    pub client: deadpool_postgres::Object,
    /// The chosen node.
    pub node: Node,
}

/// Layer that routes writes to a [`ReplicaSet`]'s primary and reads to its replicas.
///
/// It applies a separately built set, taken whole: `ReplicaRouterLayer::new(set)`. Requests
/// are told apart by a [`Classify`] (default [`HttpClassifier::new`]: safe methods read, the
/// others write); [`classify`](Self::classify) sets another, such as a closure.
pub struct ReplicaRouterLayer<C = HttpClassifier> {
    set: ReplicaSet,
    classify: Arc<C>,
}

impl<C> Clone for ReplicaRouterLayer<C> {
    fn clone(&self) -> Self {
        Self {
            set: self.set.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C> fmt::Debug for ReplicaRouterLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaRouterLayer")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl ReplicaRouterLayer {
    /// Routes over `set`, telling reads from writes by HTTP method.
    pub fn new(set: ReplicaSet) -> Self {
        super::error::register();
        Self {
            set,
            classify: Arc::new(HttpClassifier::new()),
        }
    }
}

impl<C> ReplicaRouterLayer<C> {
    /// Tells reads ([`Side::Query`]) from writes ([`Side::Command`]) with `classify`.
    pub fn classify<C2>(self, classify: C2) -> ReplicaRouterLayer<C2> {
        ReplicaRouterLayer {
            set: self.set,
            classify: Arc::new(classify),
        }
    }

    /// The set's handle.
    pub fn handle(&self) -> ReplicaSetHandle {
        self.set.handle()
    }

    /// The set it routes over.
    pub fn set(&self) -> &ReplicaSet {
        &self.set
    }
}

impl<S, C> Layer<S> for ReplicaRouterLayer<C> {
    type Service = ReplicaRouter<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplicaRouter {
            inner,
            set: self.set.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// Service that sends writes to the primary and reads to a replica that has replayed the
/// request's [`ReadConcern`](crate::ReadConcern), calling the service it wraps with a
/// [`Routed`] request. Made by [`ReplicaRouterLayer`].
///
/// Always ready: each request gets its connection and waits for the readiness of a clone of
/// the inner service inside its response future (as tower's `Oneshot` does), so a node whose
/// pool is exhausted holds back only the requests sent to it.
pub struct ReplicaRouter<S, C = HttpClassifier> {
    inner: S,
    set: ReplicaSet,
    classify: Arc<C>,
}

impl<S: Clone, C> Clone for ReplicaRouter<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            set: self.set.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S, C> fmt::Debug for ReplicaRouter<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaRouter")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl<S, C> ReplicaRouter<S, C> {
    /// The set's handle.
    pub fn handle(&self) -> ReplicaSetHandle {
        self.set.handle()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<Req, S, C> Service<Req> for ReplicaRouter<S, C>
where
    Req: ConcernOf + Send + 'static,
    S: Service<Routed<Req>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    S::Response: MarkResponse + Send + 'static,
    C: Classify<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.set.shared().clone();
        let inner = self.inner.clone();
        match self.classify.classify(&req) {
            Side::Command => {
                shared.writes.fetch_add(1, Relaxed);
                ResponseFuture::new(Box::pin(route::write(shared, inner, req)))
            }
            Side::Query => {
                let concern = req.read_concern();
                let route = route::route_read(&shared, concern);
                let at_least = concern
                    .at_least
                    .and_then(crate::Mark::lsn)
                    .filter(|_| !concern.from_primary);
                let in_flight = match route {
                    Route::Replica(i) => Some(InFlight::start(shared.clone(), i)),
                    Route::Primary => None,
                };
                ResponseFuture::new(Box::pin(route::read(
                    shared, inner, req, route, at_least, in_flight,
                )))
            }
        }
    }
}
