//! Write-through: the write reaches the source of record, then the cache.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tower_layer::Layer;
use tower_patterns_core::{BoxError, ConfigError, KeyExtractor, tenant::TenantId};
use tower_service::Service;

use super::NoCache;
use crate::{
    CacheHandle, NoKey,
    key::{FromExtensions, Scope, ScopeFn, Unscoped},
    store::{CacheKey, Store},
};

type ValueOf<R, V> = Arc<dyn Fn(&R) -> Option<V> + Send + Sync>;

/// What a successful write does to the cache.
pub struct WriteThroughMode<R, V> {
    value: Option<ValueOf<R, V>>,
}

impl<R, V> Clone for WriteThroughMode<R, V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
        }
    }
}

impl<R, V> fmt::Debug for WriteThroughMode<R, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.value.is_some() {
            "WriteThroughMode::Update"
        } else {
            "WriteThroughMode::Invalidate"
        })
    }
}

impl<R, V> WriteThroughMode<R, V> {
    /// Drop the key: the next read loads the new value from the source.
    pub fn invalidate() -> Self {
        Self { value: None }
    }

    /// Store the value `value_of` takes from the write's response (`None`: drop the key).
    pub fn update(value_of: impl Fn(&R) -> Option<V> + Send + Sync + 'static) -> Self {
        Self {
            value: Some(Arc::new(value_of)),
        }
    }
}

/// Makes writes update or invalidate a cache after the source of record accepted them. Build it
/// with [`WriteThroughLayer::builder`].
pub struct WriteThroughLayer<X, Sc, R, K, V, St> {
    name: Arc<str>,
    cache: CacheHandle<K, V, St>,
    key: X,
    scope: Sc,
    mode: WriteThroughMode<R, V>,
}

impl<X: Clone, Sc: Clone, R, K, V, St> Clone for WriteThroughLayer<X, Sc, R, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            cache: self.cache.clone(),
            key: self.key.clone(),
            scope: self.scope.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<X, Sc, R, K, V, St> fmt::Debug for WriteThroughLayer<X, Sc, R, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThroughLayer")
            .field("name", &self.name)
            .field("cache", &self.cache.shared.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The mode of a [`WriteThroughBuilder`] that has none yet.
#[derive(Debug, Clone, Copy)]
pub struct NoMode;

/// Builds a [`WriteThroughLayer`]: [`WriteThroughLayer::builder`]`(name)`, then
/// [`cache`](Self::cache), [`key`](Self::key) and [`mode`](Self::mode) (all required), then
/// the scope, then [`build`](WriteThroughBuilder::build).
#[derive(Debug, Clone)]
pub struct WriteThroughBuilder<C = NoCache, X = NoKey, M = NoMode, Sc = FromExtensions> {
    name: Arc<str>,
    cache: C,
    key: X,
    mode: M,
    scope: Sc,
}

impl WriteThroughLayer<NoKey, FromExtensions, (), (), (), ()> {
    /// A builder for the write-through named `name` (logs, debug output). The tenant comes
    /// from the request extensions unless set otherwise; use the same scope as the cache's.
    pub fn builder(name: impl Into<Arc<str>>) -> WriteThroughBuilder {
        WriteThroughBuilder {
            name: name.into(),
            cache: NoCache,
            key: NoKey,
            mode: NoMode,
            scope: FromExtensions,
        }
    }
}

impl<C, X, M, Sc> WriteThroughBuilder<C, X, M, Sc> {
    /// The cache the writes keep right (its handle).
    pub fn cache<K, V, St>(
        self,
        cache: CacheHandle<K, V, St>,
    ) -> WriteThroughBuilder<CacheHandle<K, V, St>, X, M, Sc> {
        WriteThroughBuilder {
            name: self.name,
            cache,
            key: self.key,
            mode: self.mode,
            scope: self.scope,
        }
    }

    /// How a write's key is taken (a [`KeyExtractor`] whose key is the cache's).
    pub fn key<X2>(self, key: X2) -> WriteThroughBuilder<C, X2, M, Sc> {
        WriteThroughBuilder {
            name: self.name,
            cache: self.cache,
            key,
            mode: self.mode,
            scope: self.scope,
        }
    }

    /// What a successful write does to the cache.
    pub fn mode<R, V>(
        self,
        mode: WriteThroughMode<R, V>,
    ) -> WriteThroughBuilder<C, X, WriteThroughMode<R, V>, Sc> {
        WriteThroughBuilder {
            name: self.name,
            cache: self.cache,
            key: self.key,
            mode,
            scope: self.scope,
        }
    }

    /// Takes the tenant with `scope` (default [`FromExtensions`]).
    pub fn scope<Sc2>(self, scope: Sc2) -> WriteThroughBuilder<C, X, M, Sc2> {
        WriteThroughBuilder {
            name: self.name,
            cache: self.cache,
            key: self.key,
            mode: self.mode,
            scope,
        }
    }

    /// No tenants.
    pub fn unscoped(self) -> WriteThroughBuilder<C, X, M, Unscoped> {
        self.scope(Unscoped)
    }

    /// The tenant from a closure.
    pub fn scope_fn<Req, F: Fn(&Req) -> Option<TenantId>>(
        self,
        f: F,
    ) -> WriteThroughBuilder<C, X, M, ScopeFn<F>> {
        self.scope(ScopeFn(f))
    }
}

impl<X, Sc, R, K, V, St> WriteThroughBuilder<CacheHandle<K, V, St>, X, WriteThroughMode<R, V>, Sc> {
    /// The layer.
    ///
    /// # Errors
    ///
    /// An empty name.
    pub fn build(self) -> Result<WriteThroughLayer<X, Sc, R, K, V, St>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        Ok(WriteThroughLayer {
            name: self.name,
            cache: self.cache,
            key: self.key,
            scope: self.scope,
            mode: self.mode,
        })
    }
}

impl<S, X: Clone, Sc: Clone, R, K, V, St> Layer<S> for WriteThroughLayer<X, Sc, R, K, V, St> {
    type Service = WriteThrough<S, X, Sc, R, K, V, St>;

    fn layer(&self, inner: S) -> Self::Service {
        WriteThrough {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`WriteThroughLayer`].
pub struct WriteThrough<S, X, Sc, R, K, V, St> {
    inner: S,
    layer: WriteThroughLayer<X, Sc, R, K, V, St>,
}

impl<S: Clone, X: Clone, Sc: Clone, R, K, V, St> Clone for WriteThrough<S, X, Sc, R, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, X, Sc, R, K, V, St> fmt::Debug for WriteThrough<S, X, Sc, R, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThrough")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, X, Sc, R, K, V, St> WriteThrough<S, X, Sc, R, K, V, St> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, Req, X, Sc, R, K, V, St> Service<Req> for WriteThrough<S, X, Sc, R, K, V, St>
where
    S: Service<Req, Response = R>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req, Key = K>,
    Sc: Scope<Req>,
    R: Send + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let tenant = self.layer.scope.tenant(&req);
        // A write whose key cannot be taken is refused: letting it through would leave the
        // cache holding the old value.
        let key = match self.layer.key.extract(&req) {
            Ok(k) => k,
            Err(e) => return std::future::ready(Err(e.into())).boxed(),
        };
        let cache = self.layer.cache.clone();
        let value_of = self.layer.mode.value.clone();
        let write = self.inner.call(req);
        async move {
            let res = write.await.map_err(Into::into)?;
            let outcome = match value_of.as_ref().and_then(|f| f(&res)) {
                Some(v) => cache.put(tenant.as_ref(), key, v).await,
                None => cache.invalidate(tenant.as_ref(), key).await,
            };
            if let Err(e) = outcome {
                // The source has the write; the local tier has dropped the key. Report, and
                // answer the write's success.
                tracing::error!(
                    target: "tower_patterns::cache",
                    cache = %cache.name(),
                    error = %e,
                    cause = ?std::error::Error::source(&e),
                    "write-through: the cache step failed after the write; the key was dropped locally"
                );
            }
            Ok(res)
        }
        .boxed()
    }
}
