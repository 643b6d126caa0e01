//! The cache-aside layer and its builder.

use std::{fmt, sync::Arc, sync::atomic::AtomicU64, time::Duration};

use tower_layer::Layer;
use tower_patterns_core::{ConfigError, tenant::TenantId};

use super::{
    Cache, CacheHandle,
    shared::{Settings, Shared},
};
use crate::{
    internal::{Counters, Epochs, Flights},
    key::{FromExtensions, ScopeFn, Unscoped},
    store::{CacheKey, RemoteInvalidation, Store},
};

/// Caches the responses of an inner service by key (cache-aside). Build it with
/// [`CacheLayer::builder`].
///
/// # What happens to a request
///
/// 1. Its tenant (from the [`Scope`](crate::Scope), by default the [`TenantId`] in an HTTP request's
///    extensions) and its key (from the [`KeyExtractor`](tower_patterns_core::KeyExtractor)) make the [`ScopedKey`](crate::ScopedKey): tenants never
///    share entries. A request whose key cannot be taken is passed through uncached.
/// 2. **Fresh hit**: the value is answered at once, from the store's local tier, with no
///    allocation and no lock. With [early refresh](CacheBuilder::early_refresh) a hit near
///    expiry may also start a background reload (XFetch).
/// 3. **Stale, within [stale-while-revalidate](CacheBuilder::stale_while_revalidate)**:
///    the stale value is answered and one background reload starts.
/// 4. **Miss** (or stale beyond that): one load per key goes to the inner service however many
///    callers miss at once (single flight); the others wait for it. If the caller that started
///    the load is dropped, the others carry it on. The value is stored with the TTL (minus
///    jitter), or the negative TTL for a "not found".
/// 5. **The load fails** (an error, an open breaker): a stale value within
///    [stale-if-error](CacheBuilder::stale_if_error) is answered instead; else the error.
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
    pub(crate) shared: Arc<Shared<K, V, St>>,
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
pub struct CacheBuilder<X, Sc, K, V, St> {
    name: Arc<str>,
    store: St,
    key: X,
    scope: Sc,
    settings: Settings<K, V>,
}

impl<X, Sc, K, V, St> fmt::Debug for CacheBuilder<X, Sc, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
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

/// The store of a builder that has none yet.
#[derive(Clone, Copy, Debug)]
pub struct NoStore;

impl CacheLayer<NoKey, FromExtensions, (), (), NoStore> {
    /// A builder for a cache named `name` (reports, metrics and logs); its store comes next,
    /// with [`store`](CacheBuilder::store), then its key with [`key`](CacheBuilder::key).
    ///
    /// Defaults: TTL 60 s with 10% jitter, no stale serving, no early refresh, no negative
    /// caching, every `Ok` value cacheable, scope from [`FromExtensions`].
    pub fn builder(
        name: impl Into<Arc<str>>,
    ) -> CacheBuilder<NoKey, FromExtensions, (), (), NoStore> {
        CacheBuilder {
            name: name.into(),
            store: NoStore,
            key: NoKey,
            scope: FromExtensions,
            settings: Settings::default(),
        }
    }
}

impl CacheBuilder<NoKey, FromExtensions, (), (), NoStore> {
    /// Where entries live ([`MokaStore`](crate::store::MokaStore), or a Redis tier); its key
    /// and value types are the cache's.
    pub fn store<K, V, St>(self, store: St) -> CacheBuilder<NoKey, FromExtensions, K, V, St>
    where
        K: CacheKey,
        V: Clone + Send + Sync + 'static,
        St: Store<K, V>,
    {
        CacheBuilder {
            name: self.name,
            store,
            key: NoKey,
            scope: FromExtensions,
            settings: Settings::default(),
        }
    }
}

impl<X, Sc, K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>>
    CacheBuilder<X, Sc, K, V, St>
{
    /// How the key is taken from a request (a [`KeyExtractor`](tower_patterns_core::KeyExtractor) whose key is `K`).
    pub fn key<X2>(self, key: X2) -> CacheBuilder<X2, Sc, K, V, St> {
        CacheBuilder {
            name: self.name,
            store: self.store,
            key,
            scope: self.scope,
            settings: self.settings,
        }
    }

    /// Where the tenant comes from (default [`FromExtensions`], for `http::Request`).
    pub fn scope<Sc2>(self, scope: Sc2) -> CacheBuilder<X, Sc2, K, V, St> {
        CacheBuilder {
            name: self.name,
            store: self.store,
            key: self.key,
            scope,
            settings: self.settings,
        }
    }

    /// No tenants: every request shares one scope (for requests that are not `http::Request`).
    pub fn unscoped(self) -> CacheBuilder<X, Unscoped, K, V, St> {
        self.scope(Unscoped)
    }

    /// The tenant from a closure.
    pub fn scope_fn<Req, F: Fn(&Req) -> Option<TenantId>>(
        self,
        f: F,
    ) -> CacheBuilder<X, ScopeFn<F>, K, V, St> {
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
