//! One breaker per key (host, route, tenant).

use std::{
    fmt,
    hash::Hash,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError, KeyExtractor,
    classify::{ErrorsAsFailures, Finish},
    keyed::KeyedMap,
};
use tower_service::Service;

use crate::{
    CircuitBreakerHandle, Config,
    future::{Guard, ResponseFuture},
    machine::Machine,
    observer::{Metrics, Observer},
};

pub(crate) struct KeyedShared<Key> {
    pub(crate) map: KeyedMap<Key, Arc<Machine>>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) base: Instant,
}

impl<Key> KeyedShared<Key>
where
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    fn machine(&self, key: &Key) -> Arc<Machine> {
        self.map.get_or_insert_with(key.clone(), || {
            let name: Arc<str> = format!("{}/{key}", self.config.name).into();
            Machine::new_shared(
                self.config.clone(),
                Observer::new(
                    name,
                    self.metrics.clone(),
                    false,
                    self.config.call_metrics,
                    self.base,
                ),
            )
        })
    }
}

/// Layer that gives every key its own breaker; built by
/// [`Builder::build_keyed`](crate::Builder::build_keyed).
///
/// Keys come from a [`KeyExtractor`]; a request without a usable key fails with its
/// [`KeyError`](tower_patterns_core::KeyError) (400 through the HTTP mapping). Breakers live in
/// a bounded [`KeyedMap`]: at most the configured number of keys, idle ones dropped. Metrics
/// are counted under the layer's name (keys are not labels, so their number stays bounded);
/// events and rejections name the key as `name/key`.
///
/// `Key` is the extractor's key type; it is a parameter of its own because an extractor may
/// serve several request types.
pub struct KeyedCircuitBreakerLayer<K, Key, C = ErrorsAsFailures> {
    shared: Arc<KeyedShared<Key>>,
    extractor: K,
    classifier: C,
}

impl<K: Clone, Key, C: Clone> Clone for KeyedCircuitBreakerLayer<K, Key, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, Key, C> fmt::Debug for KeyedCircuitBreakerLayer<K, Key, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<K, Key, C> KeyedCircuitBreakerLayer<K, Key, C> {
    pub(crate) fn new(shared: Arc<KeyedShared<Key>>, extractor: K, classifier: C) -> Self {
        Self {
            shared,
            extractor,
            classifier,
        }
    }

    /// A handle listing the per-key breakers.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<Key> {
        KeyedCircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, K: Clone, Key, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, Key, C> {
    type Service = KeyedCircuitBreaker<S, K, Key, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            shared: self.shared.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// Middleware with one circuit breaker per key; see [`KeyedCircuitBreakerLayer`].
///
/// It cannot fail fast in `poll_ready` (the key is in the request), so it is ready when its
/// inner service is, and rejects from `call`.
pub struct KeyedCircuitBreaker<S, K, Key, C = ErrorsAsFailures> {
    inner: S,
    shared: Arc<KeyedShared<Key>>,
    extractor: K,
    classifier: C,
}

impl<S: Clone, K: Clone, Key, C: Clone> Clone for KeyedCircuitBreaker<S, K, Key, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, Key, C> fmt::Debug for KeyedCircuitBreaker<S, K, Key, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, Key, C> KeyedCircuitBreaker<S, K, Key, C> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, K, Key, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, Key, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req, Key = Key>,
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
    C: Finish<S::Response, BoxError, Guard> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = match self.extractor.extract(&req) {
            Ok(key) => key,
            Err(e) => return ResponseFuture::failed(e.into()),
        };
        let machine = self.shared.machine(&key);
        crate::service::call(&machine, &mut self.inner, req, &self.classifier, true, None)
    }
}

/// A handle on a keyed layer's breakers.
pub struct KeyedCircuitBreakerHandle<Key> {
    shared: Arc<KeyedShared<Key>>,
}

impl<Key> Clone for KeyedCircuitBreakerHandle<Key> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<Key> fmt::Debug for KeyedCircuitBreakerHandle<Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("name", &self.shared.config.name)
            .finish()
    }
}

impl<Key> KeyedCircuitBreakerHandle<Key>
where
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    /// The breaker of `key`, if it exists.
    pub fn get<Q>(&self, key: &Q) -> Option<CircuitBreakerHandle>
    where
        Key: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.map.get(key).map(CircuitBreakerHandle::new)
    }

    /// The number of keys with a breaker; never more than the bound set with
    /// [`Builder::keys`](crate::Builder::keys).
    pub fn len(&self) -> u64 {
        self.shared.map.len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.shared.map.is_empty()
    }

    /// Every key with its breaker, for dashboards and health endpoints; at most the bound set
    /// with [`Builder::keys`](crate::Builder::keys).
    pub fn breakers(&self) -> Vec<(Arc<Key>, CircuitBreakerHandle)> {
        self.shared
            .map
            .entries()
            .map(|(k, m)| (k, CircuitBreakerHandle::new(m)))
            .collect()
    }
}
