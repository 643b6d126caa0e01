//! The cache-aside layer: look up, on a miss load through the inner service once per key,
//! store, answer.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor,
    observe::{Health, Report, StateHandle},
    rng::{GOLDEN_GAMMA, mix, unit},
    tenant::TenantId,
};
use tower_service::Service;

use crate::{
    Entry, Freshness, ScopedKey,
    internal::{Count, Counters, Epochs, Flights, LoadError},
    key::{FromExtensions, Scope, ScopeFn, Unscoped},
    store::{CacheKey, RemoteInvalidation, Store, StoreError},
};

type Pred<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;
type Tagger<K, V> = Arc<dyn Fn(&K, &V) -> Vec<Box<str>> + Send + Sync>;
pub(crate) type Queued<K, V> = Arc<dyn Fn(&ScopedKey<K>) -> Option<V> + Send + Sync>;

/// The settings and state every service of one [`CacheLayer`] shares.
pub(crate) struct Shared<K, V, St> {
    pub(crate) name: Arc<str>,
    pub(crate) store: St,
    pub(crate) flights: Flights<K, V>,
    pub(crate) epochs: Epochs,
    pub(crate) counters: Counters,
    settings: Settings<K, V>,
    draws: AtomicU64,
    /// Writes queued by a write-behind, which loads must see before the source has them.
    pub(crate) queued: std::sync::OnceLock<Queued<K, V>>,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> Shared<K, V, St> {
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        unit(mix(self.settings.seed ^ n.wrapping_mul(GOLDEN_GAMMA)))
    }

    /// The longest an entry may be served past its TTL.
    fn grace(&self) -> Duration {
        self.settings.swr.max(self.settings.sie)
    }

    /// Builds the entry for a freshly loaded `value`, or `None` when it is not to be cached.
    pub(crate) fn entry_for(
        &self,
        key: &K,
        value: &V,
        now: Instant,
        load_time: Duration,
    ) -> Option<Entry<V>> {
        if self.settings.cacheable.as_ref().is_some_and(|c| !c(value)) {
            return None;
        }
        let (ttl, negative) = match &self.settings.negative {
            Some((is_negative, ttl)) if is_negative(value) => (*ttl, true),
            _ => (self.settings.ttl, false),
        };
        // Jitter only shortens: no entry lives past its configured TTL.
        let ttl = if self.settings.jitter > 0.0 {
            ttl.mul_f64(1.0 - self.settings.jitter * self.draw())
        } else {
            ttl
        };
        let tags = self
            .settings
            .tags
            .as_ref()
            .map(|t| t(key, value))
            .unwrap_or_default();
        Some(
            Entry::new(
                value.clone(),
                now,
                ttl,
                if negative {
                    Duration::ZERO
                } else {
                    self.grace()
                },
            )
            .with_load_time(load_time)
            .negative(negative)
            .with_tags(tags),
        )
    }

    /// Stores `entry` unless an invalidation since `started` forbids it; if one lands while
    /// storing, takes the entry out again.
    pub(crate) async fn store_if_current(&self, key: ScopedKey<K>, entry: Entry<V>, started: u64) {
        if !self.epochs.may_store(&key, started) {
            return;
        }
        if let Err(e) = self.store.put(key.clone(), entry).await {
            self.store_failed(&e);
        }
        if !self.epochs.may_store(&key, started)
            && let Err(e) = self.store.invalidate(&key).await
        {
            self.store_failed(&e);
        }
    }

    pub(crate) fn store_failed(&self, e: &StoreError) {
        self.counters.add(Count::StoreError);
        tracing::warn!(
            target: "tower_patterns::cache",
            cache = %self.name,
            error = %e,
            cause = ?std::error::Error::source(e),
            "cache store failed; answering without it"
        );
    }

    /// Invalidates `key` everywhere: no load in flight stores its old value, later callers do
    /// not join such a load, and every tier drops the entry.
    pub(crate) async fn invalidate(&self, key: &ScopedKey<K>) -> Result<(), StoreError> {
        self.epochs.mark(key);
        self.flights.forget(key);
        self.store.invalidate(key).await
    }

    pub(crate) fn forget_all(&self) {
        self.epochs.mark_all();
        self.flights.forget_all();
    }
}

/// Caches the responses of an inner service by key (cache-aside). Build it with
/// [`CacheLayer::builder`].
///
/// # What happens to a request
///
/// 1. Its tenant (from the [`Scope`], by default the [`TenantId`] in an HTTP request's
///    extensions) and its key (from the [`KeyExtractor`]) make the [`ScopedKey`]: tenants never
///    share entries. A request whose key cannot be taken is passed through uncached.
/// 2. **Fresh hit**: the value is answered at once, from the store's local tier, with no
///    allocation and no lock. With [early refresh](CacheLayerBuilder::early_refresh) a hit near
///    expiry may also start a background reload (XFetch).
/// 3. **Stale, within [stale-while-revalidate](CacheLayerBuilder::stale_while_revalidate)**:
///    the stale value is answered and one background reload starts.
/// 4. **Miss** (or stale beyond that): one load per key goes to the inner service however many
///    callers miss at once (single flight); the others wait for it. If the caller that started
///    the load is dropped, the others carry it on. The value is stored with the TTL (minus
///    jitter), or the negative TTL for a "not found".
/// 5. **The load fails** (an error, an open breaker): a stale value within
///    [stale-if-error](CacheLayerBuilder::stale_if_error) is answered instead; else the error.
///
/// Writes through [`WriteThroughLayer`](crate::WriteThroughLayer) and invalidations through the
/// [`CacheHandle`] stop loads already in flight from storing old values.
///
/// # Requirements
///
/// The inner service must be `Clone` (loads run on clones, made ready inside the load, so the
/// cache itself is always ready and hits never wait on the inner service's readiness), its
/// response `Clone + Send + Sync`. Background reloads are spawned on the current Tokio runtime.
pub struct CacheLayer<X, Sc, K, V, St> {
    shared: Arc<Shared<K, V, St>>,
    key: X,
    scope: Sc,
}

impl<X: Clone, Sc: Clone, K, V, St> Clone for CacheLayer<X, Sc, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
            scope: self.scope.clone(),
        }
    }
}

impl<X, Sc, K, V, St> fmt::Debug for CacheLayer<X, Sc, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.shared.name)
            .field("ttl", &self.shared.settings.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`CacheLayer`]; see its setters for the defaults.
pub struct CacheLayerBuilder<X, Sc, K, V, St> {
    name: Arc<str>,
    store: St,
    key: X,
    scope: Sc,
    settings: Settings<K, V>,
}

/// What a [`CacheLayerBuilder`] sets and every service of the layer reads.
struct Settings<K, V> {
    ttl: Duration,
    jitter: f64,
    swr: Duration,
    sie: Duration,
    beta: f64,
    negative: Option<(Pred<V>, Duration)>,
    cacheable: Option<Pred<V>>,
    tags: Option<Tagger<K, V>>,
    require_tenant: bool,
    seed: u64,
}

impl<X, Sc, K, V, St> fmt::Debug for CacheLayerBuilder<X, Sc, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("name", &self.name)
            .field("ttl", &self.settings.ttl)
            .field("jitter", &self.settings.jitter)
            .field("stale_while_revalidate", &self.settings.swr)
            .field("stale_if_error", &self.settings.sie)
            .field("early_refresh", &self.settings.beta)
            .field("require_tenant", &self.settings.require_tenant)
            .finish_non_exhaustive()
    }
}

/// The key extractor of a builder that has none yet.
#[derive(Clone, Copy, Debug)]
pub struct NoKey;

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>>
    CacheLayer<NoKey, FromExtensions, K, V, St>
{
    /// A builder for a cache named `name` (metrics and logs) over `store`.
    ///
    /// Defaults: TTL 60 s with 10% jitter, no stale serving, no early refresh, no negative
    /// caching, every `Ok` value cacheable, scope from [`FromExtensions`]. A key extractor
    /// must be set with [`key`](CacheLayerBuilder::key).
    pub fn builder(
        name: impl Into<Arc<str>>,
        store: St,
    ) -> CacheLayerBuilder<NoKey, FromExtensions, K, V, St> {
        CacheLayerBuilder {
            name: name.into(),
            store,
            key: NoKey,
            scope: FromExtensions,
            settings: Settings {
                ttl: Duration::from_secs(60),
                jitter: 0.1,
                swr: Duration::ZERO,
                sie: Duration::ZERO,
                beta: 0.0,
                negative: None,
                cacheable: None,
                tags: None,
                require_tenant: false,
                seed: 0x5eed_cace,
            },
        }
    }
}

impl<X, Sc, K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>>
    CacheLayerBuilder<X, Sc, K, V, St>
{
    /// How the key is taken from a request (a [`KeyExtractor`] whose key is `K`).
    pub fn key<X2>(self, key: X2) -> CacheLayerBuilder<X2, Sc, K, V, St> {
        CacheLayerBuilder {
            name: self.name,
            store: self.store,
            key,
            scope: self.scope,
            settings: self.settings,
        }
    }

    /// Where the tenant comes from (default [`FromExtensions`], for `http::Request`).
    pub fn scope<Sc2>(self, scope: Sc2) -> CacheLayerBuilder<X, Sc2, K, V, St> {
        CacheLayerBuilder {
            name: self.name,
            store: self.store,
            key: self.key,
            scope,
            settings: self.settings,
        }
    }

    /// No tenants: every request shares one scope (for requests that are not `http::Request`).
    pub fn unscoped(self) -> CacheLayerBuilder<X, Unscoped, K, V, St> {
        self.scope(Unscoped)
    }

    /// The tenant from a closure.
    pub fn scope_fn<Req, F: Fn(&Req) -> Option<TenantId>>(
        self,
        f: F,
    ) -> CacheLayerBuilder<X, ScopeFn<F>, K, V, St> {
        self.scope(ScopeFn(f))
    }

    /// How long a value is fresh (default 60 s).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// Shortens each TTL by a random fraction up to `jitter` (default 0.1), so entries loaded
    /// together do not expire together. In `[0, 1)`.
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// Serves a stale value for up to `window` past its TTL while one background load
    /// refreshes it (default off).
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.settings.swr = window;
        self
    }

    /// Serves a stale value for up to `window` past its TTL when the load fails: the inner
    /// service errs or a breaker in front of it rejects (default off).
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.settings.sie = window;
        self
    }

    /// XFetch early refresh: a hit reloads in the background with a probability that rises as
    /// expiry nears, faster for values that took longer to load. `beta` 1.0 is the paper's
    /// default; 0 (the default) turns it off.
    #[must_use]
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.settings.beta = beta;
        self
    }

    /// Caches values for which `is_not_found` holds for `ttl` only, with no stale serving
    /// (negative caching).
    #[must_use]
    pub fn negative(
        mut self,
        is_not_found: impl Fn(&V) -> bool + Send + Sync + 'static,
        ttl: Duration,
    ) -> Self {
        self.settings.negative = Some((Arc::new(is_not_found), ttl));
        self
    }

    /// Caches only values for which `cacheable` holds (an `Ok` response that carries an
    /// error, for one, should not be cached).
    #[must_use]
    pub fn cacheable(mut self, cacheable: impl Fn(&V) -> bool + Send + Sync + 'static) -> Self {
        self.settings.cacheable = Some(Arc::new(cacheable));
        self
    }

    /// Tags each stored entry, for [`CacheHandle::invalidate_tag`].
    #[must_use]
    pub fn tags(mut self, tags: impl Fn(&K, &V) -> Vec<Box<str>> + Send + Sync + 'static) -> Self {
        self.settings.tags = Some(Arc::new(tags));
        self
    }

    /// Passes requests with no tenant through uncached (default: they share the unscoped
    /// space). Use it where every cached response is tenant data and a missing tenant can
    /// only be a mistake in the stack.
    #[must_use]
    pub fn require_tenant(mut self) -> Self {
        self.settings.require_tenant = true;
        self
    }

    /// Seeds the jitter and early-refresh draws (tests).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// A zero TTL, a jitter outside `[0, 1)`, a negative or non-finite `beta`, a zero negative
    /// TTL, or an empty name.
    pub fn build(self) -> Result<CacheLayer<X, Sc, K, V, St>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.settings.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be more than zero"));
        }
        if !(0.0..1.0).contains(&self.settings.jitter) {
            return Err(ConfigError::new("jitter", "must be in [0, 1)"));
        }
        if !self.settings.beta.is_finite() || self.settings.beta < 0.0 {
            return Err(ConfigError::new(
                "early_refresh",
                "must be a finite number >= 0",
            ));
        }
        if self
            .settings
            .negative
            .as_ref()
            .is_some_and(|(_, ttl)| ttl.is_zero())
        {
            return Err(ConfigError::new(
                "negative",
                "the TTL must be more than zero",
            ));
        }
        let shared = Arc::new(Shared {
            name: self.name,
            store: self.store,
            flights: Flights::new(),
            epochs: Epochs::new(),
            counters: Counters::new(),
            settings: self.settings,
            draws: AtomicU64::new(0),
            queued: std::sync::OnceLock::new(),
        });
        // Another instance's write stops this instance's loads in flight from storing the
        // value they read before it. Weak: the store lives inside `shared`.
        let weak = Arc::downgrade(&shared);
        shared
            .store
            .on_remote_invalidation(Arc::new(move |what: &RemoteInvalidation<K>| {
                if let Some(shared) = weak.upgrade() {
                    match what {
                        RemoteInvalidation::Key(key) => {
                            shared.epochs.mark(key);
                            shared.flights.forget(key);
                        }
                        _ => shared.forget_all(),
                    }
                }
            }));
        Ok(CacheLayer {
            shared,
            key: self.key,
            scope: self.scope,
        })
    }
}

impl<X, Sc, K, V, St> CacheLayer<X, Sc, K, V, St> {
    /// A handle on the cache: statistics and invalidation.
    pub fn handle(&self) -> CacheHandle<K, V, St> {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, X: Clone, Sc: Clone, K, V, St> Layer<S> for CacheLayer<X, Sc, K, V, St> {
    type Service = Cache<S, X, Sc, K, V, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
            scope: self.scope.clone(),
        }
    }
}

/// The cache-aside service made by [`CacheLayer`].
pub struct Cache<S, X, Sc, K, V, St> {
    inner: S,
    shared: Arc<Shared<K, V, St>>,
    key: X,
    scope: Sc,
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

/// The response future of [`Cache`]: ready at once on a hit, boxed on the paths that load.
pub struct CacheFuture<V> {
    kind: Kind<V>,
}

enum Kind<V> {
    Ready(Option<V>),
    Load(BoxFuture<'static, Result<V, BoxError>>),
}

impl<V> fmt::Debug for CacheFuture<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Ready(_) => "CacheFuture::Hit",
            Kind::Load(_) => "CacheFuture::Load",
        })
    }
}

// The value is only ever moved out of its `Option`, never pinned: the future is `Unpin`
// whatever `V` is.
impl<V> Unpin for CacheFuture<V> {}

impl<V> Future for CacheFuture<V> {
    type Output = Result<V, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Ready(v) => {
                Poll::Ready(Ok(v.take().expect("CacheFuture polled after completion")))
            }
            Kind::Load(f) => f.as_mut().poll(cx),
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
    type Future = CacheFuture<V>;

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
                return CacheFuture {
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
                    return CacheFuture {
                        kind: Kind::Ready(Some(entry.into_value())),
                    };
                }
                Freshness::Stale if now < entry.fresh_until() + shared.settings.swr => {
                    shared.counters.add(Count::Stale);
                    refresh(shared, &self.inner, &key, req);
                    return CacheFuture {
                        kind: Kind::Ready(Some(entry.into_value())),
                    };
                }
                Freshness::Stale => stale = Some(entry),
                Freshness::Expired => {}
            }
        }
        let shared = shared.clone();
        let inner = self.inner.clone();
        CacheFuture {
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

// ---------------------------------------------------------------------------------------------
// The handle

/// A handle on a cache: statistics, invalidation, direct reads and writes. Cheap to clone.
pub struct CacheHandle<K, V, St> {
    pub(crate) shared: Arc<Shared<K, V, St>>,
}

impl<K, V, St> Clone for CacheHandle<K, V, St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, V, St> fmt::Debug for CacheHandle<K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// What a cache has counted since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh values served.
    pub hits: u64,
    /// Loads started for a missing or expired key.
    pub misses: u64,
    /// Stale values served while a reload ran (stale-while-revalidate).
    pub stale: u64,
    /// Stale values served because the load failed (stale-if-error).
    pub stale_if_error: u64,
    /// Callers that waited on another caller's load instead of loading.
    pub coalesced: u64,
    /// Background reloads started (stale-while-revalidate and early refresh).
    pub refreshes: u64,
    /// Loads that failed.
    pub load_errors: u64,
    /// Store operations that failed (the request was answered without the store).
    pub store_errors: u64,
    /// Requests passed through uncached (no key, or no tenant where one is required).
    pub bypassed: u64,
    /// Entries evicted by the store for room or age.
    pub evictions: u64,
    /// Entries in the local tier (approximate).
    pub entries: u64,
}

impl CacheStats {
    /// Hits (fresh and stale) over all lookups that hit or missed; 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hits + self.stale;
        let total = served + self.misses + self.coalesced;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> CacheHandle<K, V, St> {
    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The counts so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let store = self.shared.store.stats();
        CacheStats {
            hits: c.get(Count::Hit),
            misses: c.get(Count::Miss),
            stale: c.get(Count::Stale),
            stale_if_error: c.get(Count::StaleIfError),
            coalesced: c.get(Count::Coalesced),
            refreshes: c.get(Count::Refresh),
            load_errors: c.get(Count::LoadError),
            store_errors: c.get(Count::StoreError),
            bypassed: c.get(Count::Bypass),
            evictions: store.evictions,
            entries: store.entries,
        }
    }

    /// Loads in flight now.
    pub fn loads_in_flight(&self) -> usize {
        self.shared.flights.in_flight()
    }

    /// The fresh or stale entry for `key` in the local tier, if any.
    pub fn peek(&self, tenant: Option<&TenantId>, key: K) -> Option<Entry<V>> {
        self.shared
            .store
            .peek(&ScopedKey::new(tenant.cloned(), key))
    }

    /// Invalidates `key` in `tenant`'s scope: every tier drops it, and no load already in
    /// flight stores its old value.
    ///
    /// # Errors
    ///
    /// When a tier fails; the local tier has dropped the entry all the same.
    pub async fn invalidate(&self, tenant: Option<&TenantId>, key: K) -> Result<(), StoreError> {
        self.shared
            .invalidate(&ScopedKey::new(tenant.cloned(), key))
            .await
    }

    /// Invalidates every key of `tenant`'s scope whose text starts with `prefix`.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_prefix(tenant, prefix).await
    }

    /// Invalidates every entry tagged `tag`.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_tag(tag).await
    }

    /// Invalidates everything.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_all().await
    }

    /// Stores `value` for `key` now (what a write-through does after the source accepted the
    /// write): no load in flight overwrites it with an older value. If the store fails, the
    /// key is invalidated instead, so no stale value stays behind.
    ///
    /// # Errors
    ///
    /// When storing failed; the error of the invalidation, if that failed too.
    pub async fn put(&self, tenant: Option<&TenantId>, key: K, value: V) -> Result<(), StoreError> {
        let key = ScopedKey::new(tenant.cloned(), key);
        self.shared.epochs.mark(&key);
        self.shared.flights.forget(&key);
        let Some(entry) = self
            .shared
            .entry_for(key.key(), &value, Instant::now(), Duration::ZERO)
        else {
            return self.shared.store.invalidate(&key).await;
        };
        match self.shared.store.put(key.clone(), entry).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.store_failed(&e);
                self.shared.store.invalidate(&key).await?;
                Err(e)
            }
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> StateHandle
    for CacheHandle<K, V, St>
{
    fn pattern(&self) -> &'static str {
        "cache"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn report(&self) -> Report {
        let s = self.stats();
        let health = self.shared.store.health();
        Report::new(
            "cache",
            self.shared.name.to_string(),
            health,
            match health {
                Health::Ready => "ok",
                Health::Degraded => "degraded",
                Health::Unavailable => "unavailable",
            },
        )
        .with_value("hits", s.hits as f64)
        .with_value("misses", s.misses as f64)
        .with_value("stale", (s.stale + s.stale_if_error) as f64)
        .with_value("coalesced", s.coalesced as f64)
        .with_value("evictions", s.evictions as f64)
        .with_value("entries", s.entries as f64)
        .with_value("hit_ratio", s.hit_ratio())
    }
}
