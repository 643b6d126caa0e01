//! The cache-aside service: answers hits at once, loads misses once per key.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_patterns_core::{BoxError, KeyExtractor};
use tower_service::Service;

use super::{
    CacheHandle,
    future::{Kind, ResponseFuture},
    shared::Shared,
};
use crate::{
    Freshness, ScopedKey,
    internal::{Count, LoadError},
    key::Scope,
    store::{CacheKey, Store},
};

/// The cache-aside service made by [`CacheLayer`](super::CacheLayer).
pub struct Cache<S, X, Sc, K, V, St> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<K, V, St>>,
    pub(crate) key: X,
    pub(crate) scope: Sc,
}

impl<S: Clone, X: Clone, Sc: Clone, K, V, St> Clone for Cache<S, X, Sc, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
            scope: self.scope.clone(),
        }
    }
}

impl<S: fmt::Debug, X, Sc, K, V, St> fmt::Debug for Cache<S, X, Sc, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.shared.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, X, Sc, K, V, St> Cache<S, X, Sc, K, V, St> {
    tower_patterns_core::inner_service_accessors!();

    /// A handle on the cache this service shares with its layer.
    pub fn handle(&self) -> CacheHandle<K, V, St> {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}
/// Starts a load of `key` through a clone of `inner` (made ready inside the load), storing its
/// value when no invalidation intervened (its flight entry leaves with it: see `Flights`).
fn start_load<S, Req, K, V, St>(
    shared: Arc<Shared<K, V, St>>,
    inner: S,
    key: ScopedKey<K>,
    req: Req,
) -> BoxFuture<'static, Result<V, LoadError>>
where
    S: Service<Req, Response = V> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    async move {
        let started = shared.epochs.now();
        let t0 = Instant::now();
        let queued = shared.queued.get().and_then(|q| q(&key));
        let res = match queued {
            Some(v) => Ok(v),
            None => inner.oneshot(req).await.map_err(Into::into),
        };
        match res {
            Ok(v) => {
                let now = Instant::now();
                if let Some(entry) = shared.entry_for(key.key(), &v, now, now - t0) {
                    shared.store_if_current(key, entry, started).await;
                }
                Ok(v)
            }
            Err(e) => {
                shared.counters.add(Count::LoadError);
                Err(LoadError(Arc::new(e)))
            }
        }
    }
    .boxed()
}

/// Reloads `key` in the background unless a load is already in flight (the inner service is
/// cloned only when a load starts).
fn refresh<S, Req, K, V, St>(
    shared: &Arc<Shared<K, V, St>>,
    inner: &S,
    key: &ScopedKey<K>,
    req: Req,
) where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (load, started) = shared.flights.join_or_start(key, || {
        start_load(shared.clone(), inner.clone(), key.clone(), req)
    });
    if started {
        shared.counters.add(Count::Refresh);
        rt.spawn(async move {
            let _ = load.await;
        });
    }
}

impl<S, Req, X, Sc, K, V, St> Service<Req> for Cache<S, X, Sc, K, V, St>
where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    X: KeyExtractor<Req, Key = K>,
    Sc: Scope<Req>,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    type Response = V;
    type Error = BoxError;
    type Future = ResponseFuture<V>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: hits never wait for the inner service; loads make their own clone
        // ready before calling it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let tenant = self.scope.tenant(&req);
        let key = match self.key.extract(&req) {
            Ok(k) if tenant.is_some() || !shared.settings.require_tenant => {
                ScopedKey::new(tenant, k)
            }
            _ => {
                shared.counters.add(Count::Bypass);
                let inner = self.inner.clone();
                return ResponseFuture {
                    kind: Kind::Load(
                        async move { inner.oneshot(req).await.map_err(Into::into) }.boxed(),
                    ),
                };
            }
        };
        let mut stale = None;
        if let Some(entry) = shared.store.peek(&key) {
            let now = Instant::now();
            match entry.freshness(now) {
                Freshness::Fresh => {
                    shared.counters.add(Count::Hit);
                    if entry.xfetch_possible(now, shared.settings.beta)
                        && entry.xfetch(now, shared.settings.beta, shared.draw())
                    {
                        refresh(shared, &self.inner, &key, req);
                    }
                    return ResponseFuture {
                        kind: Kind::Ready(Some(entry.into_value())),
                    };
                }
                Freshness::Stale if now < entry.fresh_until() + shared.settings.swr => {
                    shared.counters.add(Count::Stale);
                    refresh(shared, &self.inner, &key, req);
                    return ResponseFuture {
                        kind: Kind::Ready(Some(entry.into_value())),
                    };
                }
                Freshness::Stale => stale = Some(entry),
                Freshness::Expired => {}
            }
        }
        let shared = shared.clone();
        let inner = self.inner.clone();
        ResponseFuture {
            kind: Kind::Load(
                async move {
                    if stale.is_none() && !shared.store.is_local() {
                        match shared.store.get(&key).await {
                            Ok(Some(entry)) => {
                                let now = Instant::now();
                                match entry.freshness(now) {
                                    Freshness::Fresh => {
                                        shared.counters.add(Count::Hit);
                                        return Ok(entry.into_value());
                                    }
                                    Freshness::Stale
                                        if now < entry.fresh_until() + shared.settings.swr =>
                                    {
                                        shared.counters.add(Count::Stale);
                                        refresh(&shared, &inner, &key, req);
                                        return Ok(entry.into_value());
                                    }
                                    Freshness::Stale => stale = Some(entry),
                                    Freshness::Expired => {}
                                }
                            }
                            Ok(None) => {}
                            Err(e) => shared.store_failed(&e),
                        }
                    }
                    let (load, started) = shared.flights.join_or_start(&key, || {
                        start_load(shared.clone(), inner, key.clone(), req)
                    });
                    shared.counters.add(if started {
                        Count::Miss
                    } else {
                        Count::Coalesced
                    });
                    match load.await {
                        Ok(v) => Ok(v),
                        Err(err) => {
                            let now = Instant::now();
                            match stale {
                                Some(e) if now < e.fresh_until() + shared.settings.sie => {
                                    shared.counters.add(Count::StaleIfError);
                                    tracing::debug!(
                                        target: "tower_patterns::cache",
                                        cache = %shared.name,
                                        error = %err,
                                        "load failed; serving stale"
                                    );
                                    Ok(e.into_value())
                                }
                                _ => Err(err.into()),
                            }
                        }
                    }
                }
                .boxed(),
            ),
        }
    }
}
