//! The shard router: one request to one shard, chosen by key.

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
use tower_patterns_core::{BoxError, KeyExtractor};
use tower_service::Service;

use crate::{Route, ShardKey, Strategy};

/// A service that sends each request to one of its shards, by a key taken from the request.
///
/// Unlike tower's `Steer`, which waits until **every** inner service is ready before routing
/// to one, the router is always ready and makes only the chosen shard ready, inside the
/// response future: a slow or stuck shard holds back only its own requests. Each call drives
/// a clone of its shard (`S: Clone`), polled ready and then called.
///
/// While a [`Directory`](crate::Directory) slot migrates, reads go to the new shard first and,
/// when its answer is a miss by [`ShardRouter::fallback_when`], to the old one.
///
/// ```
/// use tower::{service_fn, ServiceExt};
/// use tower_patterns_core::{key::key_fn, BoxError, KeyError};
/// use tower_patterns_shard::{Jump, ShardRouter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shards: Vec<_> = (0..4)
///     .map(|i| service_fn(move |user: u64| async move { Ok::<_, BoxError>((i, user)) }))
///     .collect();
/// let router = ShardRouter::new(shards, Jump::new(4), key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
///     .unwrap();
/// let (shard, user) = router.oneshot(42).await.unwrap();
/// assert_eq!(user, 42);
/// assert!(shard < 4);
/// # }
/// ```
pub struct ShardRouter<S, P, K, Req = (), Res = ()> {
    shards: Arc<[S]>,
    strategy: Arc<P>,
    extractor: K,
    loads: Option<Arc<[AtomicU64]>>,
    fallback_when: Option<MissPolicy<Req, Res>>,
}

/// When to read the old shard of a migrating slot, and how to copy the request for it.
struct MissPolicy<Req, Res> {
    is_miss: fn(&Res) -> bool,
    copy: fn(&Req) -> Option<Req>,
}

impl<Req, Res> Clone for MissPolicy<Req, Res> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Res> Copy for MissPolicy<Req, Res> {}

impl<S, P, K: Clone, Req, Res> Clone for ShardRouter<S, P, K, Req, Res> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            strategy: self.strategy.clone(),
            extractor: self.extractor.clone(),
            loads: self.loads.clone(),
            fallback_when: self.fallback_when,
        }
    }
}

impl<S, P, K, Req, Res> fmt::Debug for ShardRouter<S, P, K, Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouter")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<S, P: Strategy, K, Req, Res> ShardRouter<S, P, K, Req, Res> {
    /// Routes over `shards` (as many as the strategy places keys on) by `strategy`, taking
    /// each request's key with `extractor`.
    ///
    /// # Errors
    ///
    /// When the number of shards differs from the strategy's.
    pub fn new(
        shards: Vec<S>,
        strategy: P,
        extractor: K,
    ) -> Result<Self, tower_patterns_core::ConfigError> {
        Self::shared(shards, Arc::new(strategy), extractor)
    }

    /// As [`Self::new`], with a strategy shared with other code (a [`Directory`](crate::Directory)
    /// that an operator migrates while the router serves).
    ///
    /// # Errors
    ///
    /// When the number of shards differs from the strategy's.
    pub fn shared(
        shards: Vec<S>,
        strategy: Arc<P>,
        extractor: K,
    ) -> Result<Self, tower_patterns_core::ConfigError> {
        if shards.len() < strategy.shards() {
            return Err(tower_patterns_core::ConfigError::new(
                "shards",
                format!(
                    "the strategy places keys on {} shards, {} given",
                    strategy.shards(),
                    shards.len()
                ),
            ));
        }
        let loads = strategy
            .needs_loads()
            .then(|| (0..shards.len()).map(|_| AtomicU64::new(0)).collect());
        Ok(Self {
            shards: shards.into(),
            strategy,
            extractor,
            loads,
            fallback_when: None,
        })
    }

    /// During a slot migration, a response for which `is_miss` holds (a "not found") from the
    /// new shard is retried on the old one, with a copy of the request made by `copy` before
    /// the first call (return `None` for requests that must not be sent twice, such as
    /// writes). Without it, migrating slots read the new shard only.
    #[must_use]
    pub fn fallback_when(
        mut self,
        is_miss: fn(&Res) -> bool,
        copy: fn(&Req) -> Option<Req>,
    ) -> Self {
        self.fallback_when = Some(MissPolicy { is_miss, copy });
        self
    }

    /// The shards' calls in flight, when the strategy counts them (a bounded-load ring).
    pub fn loads(&self) -> Option<Vec<u64>> {
        self.loads
            .as_ref()
            .map(|l| l.iter().map(|x| x.load(Relaxed)).collect())
    }
}

impl<S, P, K, Req> Service<Req> for ShardRouter<S, P, K, Req, S::Response>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Strategy,
    K: KeyExtractor<Req>,
    K::Key: ShardKey,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RouteFuture<S, Req>;

    /// Always ready: readiness is per shard, in the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = match self.extractor.extract(&req) {
            Ok(key) => key,
            Err(e) => return RouteFuture::failed(e.into()),
        };
        let route = match &self.loads {
            Some(loads) => self.strategy.route_with_loads(&key, loads),
            None => self.strategy.route(&key),
        };
        let (primary, fallback) = match route {
            Route::To(s) => (s, None),
            Route::Migrating { to, from } => (to, self.fallback_when.map(|f| (from, f))),
        };
        let Some(shard) = self.shards.get(primary) else {
            return RouteFuture::failed(format!("no shard {primary}").into());
        };
        let load = self
            .loads
            .as_ref()
            .map(|l| LoadGuard::new(l.clone(), primary));
        let fallback = fallback.and_then(|(from, policy)| {
            let old = self.shards.get(from)?.clone();
            Some(Fallback {
                service: old,
                req: (policy.copy)(&req)?,
                is_miss: policy.is_miss,
            })
        });
        RouteFuture {
            state: RouteState::Primary {
                fut: Oneshot::new(shard.clone(), req),
                fallback,
                load,
            },
        }
    }
}

/// Counts a call in flight on a shard while it lives.
struct LoadGuard {
    loads: Arc<[AtomicU64]>,
    shard: usize,
}

impl LoadGuard {
    fn new(loads: Arc<[AtomicU64]>, shard: usize) -> Self {
        loads[shard].fetch_add(1, Relaxed);
        Self { loads, shard }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.loads[self.shard].fetch_sub(1, Relaxed);
    }
}

struct Fallback<S, Req, Res> {
    service: S,
    req: Req,
    is_miss: fn(&Res) -> bool,
}

pin_project! {
    /// Response future of [`ShardRouter`].
    pub struct RouteFuture<S, Req>
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

impl<S: Service<Req>, Req> RouteFuture<S, Req> {
    pub(crate) fn failed(err: BoxError) -> Self {
        Self {
            state: RouteState::Failed { err: Some(err) },
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for RouteFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for RouteFuture<S, Req>
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
