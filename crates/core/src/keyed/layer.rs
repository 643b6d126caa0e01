//! The keyed-layer shell: one instance of a pattern per key (a breaker per host, a pool per
//! tenant), the same machinery for every keyed layer.
//!
//! A keyed layer is always a bounded [`KeyedMap`] of per-key instances, a [`KeyExtractor`]
//! that takes each request's key, and a service that looks the key's instance up (making it
//! on first use) and calls through it. A pattern crate supplies only what differs:
//!
//! - a [`PerKey`] value, shared by the layer: what one instance is (usually the pattern's own
//!   handle on it), the builder `KeyedXLayer::builder(name)` returns, and with [`MakeFor`] how
//!   a key's instance is made (and which keys have a fixed one outside the bounded map);
//! - [`CallThrough`]: how one call passes through an instance, and whether the keyed service
//!   is always ready (a fail-fast pattern) or ready when its inner service is.
//!
//! The layer, service and handle are [`KeyedLayer`], [`Keyed`] and [`KeyedHandle`]; crates
//! name them with aliases (`KeyedCircuitBreakerLayer`, `KeyedBulkheadHandle`, ...), so that
//! `KeyedXLayer::builder(name)` is the entry point of every keyed layer. The key type is the
//! extractor's: the compiler finds it from the requests the service is called with.
//!
//! A request without a usable key fails with its [`KeyError`] (400 through the HTTP mapping).
//! The handle implements [`StateHandle`] when the instances do: its health is `Ready` while
//! every key is, `Unavailable` when every key (and at least one) is, and `Degraded` in
//! between, since one open breaker among many hosts leaves the others working.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//! use std::future::{ready, Ready};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_core::{
//!     key::key_fn, keyed::{CallThrough, KeyedLayer, KeyedMap, MakeFor, PerKey}, BoxError,
//!     KeyError,
//! };
//!
//! // A toy pattern: count the calls of each key.
//! #[derive(Debug)]
//! struct Counters;
//!
//! impl PerKey for Counters {
//!     type Instance = Arc<AtomicU64>;
//!     type Builder = ();
//!     const PATTERN: &'static str = "counter";
//!     fn builder(_name: Arc<str>) {}
//!     fn name(&self) -> &str { "calls" }
//! }
//!
//! impl<Key> MakeFor<Key> for Counters {
//!     fn make(&self, _key: &Key) -> Self::Instance { Arc::new(AtomicU64::new(0)) }
//! }
//!
//! impl<S: tower::Service<Req, Future = Ready<Result<u32, BoxError>>>, Req> CallThrough<S, Req, ()>
//!     for Counters
//! {
//!     type Response = u32;
//!     type Future = Ready<Result<u32, BoxError>>;
//!     const ALWAYS_READY: bool = false;
//!     fn call(&self, n: &Arc<AtomicU64>, inner: &mut S, req: Req, _: &(), _: bool) -> Self::Future {
//!         n.fetch_add(1, Ordering::Relaxed);
//!         inner.call(req)
//!     }
//!     fn failed(&self, err: BoxError) -> Self::Future { ready(Err(err)) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let by_tenant = key_fn(|t: &u32| Ok::<_, KeyError>(*t));
//! let layer = KeyedLayer::new(KeyedMap::builder().build().unwrap(), Counters, by_tenant, ());
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|t: u32| ready(Ok::<_, BoxError>(t))));
//! for tenant in [1, 1, 2] {
//!     svc.clone().oneshot(tenant).await.unwrap();
//! }
//! assert_eq!(handle.get(&1).unwrap().load(Ordering::Relaxed), 2);
//! assert_eq!(handle.len(), 2);
//! # }
//! ```

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    future::Future,
    hash::Hash,
    sync::Arc,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

use super::KeyedMap;
use crate::{
    BoxError, KeyError, KeyExtractor,
    observe::{Health, Report, StateHandle},
};

/// What a keyed layer holds per key, and how `KeyedXLayer::builder(name)` starts; see the
/// [module docs](self).
pub trait PerKey: fmt::Debug + Send + Sync + 'static {
    /// One key's instance, usually the pattern's handle on it (cheap to clone).
    type Instance: Clone + Send + Sync + 'static;
    /// What `KeyedXLayer::builder(name)` returns.
    type Builder;
    /// The pattern, as in metric names (`breaker`, `bulkhead`).
    const PATTERN: &'static str;

    /// The builder of a keyed layer named `name`.
    fn builder(name: Arc<str>) -> Self::Builder;

    /// The keyed layer's name.
    fn name(&self) -> &str;
}

/// How a [`PerKey`] makes the instance of a key of type `Key`.
pub trait MakeFor<Key>: PerKey {
    /// A new instance for `key`, which the map does not hold. Called once per new key (and
    /// again after the key was dropped from the map), never on a hit.
    fn make(&self, key: &Key) -> Self::Instance;

    /// Whether keys without a [`fixed`](Self::fixed) instance are refused (with the error
    /// returned) rather than given one from [`make`](Self::make). The default accepts them.
    fn refuse_new(&self, _key: &Key) -> Option<KeyError> {
        None
    }

    /// Instances that live outside the bounded map, looked up first and never dropped (the
    /// fixed partitions of a keyed bulkhead). The default has none.
    fn fixed(&self) -> Option<&HashMap<Key, Self::Instance>> {
        None
    }

    /// Told after a new key's instance was stored, with the map (to update a gauge of keys,
    /// for example). Runs only for new keys.
    fn added(&self, _map: &KeyedMap<Key, Self::Instance>) {}
}

/// How one call passes through a key's instance: the part of a keyed service that is the
/// pattern's own.
pub trait CallThrough<S, Req, X>: PerKey {
    /// The keyed service's response.
    type Response;
    /// The keyed service's future.
    type Future: Future<Output = Result<Self::Response, BoxError>>;
    /// `true`: the keyed service is always ready, remembers whether its inner service was,
    /// and passes that to [`call`](Self::call) (fail-fast patterns, as tower's `LoadShed`);
    /// `false`: it is ready when its inner service is, and `call` is told `true`.
    const ALWAYS_READY: bool;

    /// Calls `inner` through `instance`; `extra` is the layer's per-call setting (a
    /// classifier, how long a permit is held).
    fn call(
        &self,
        instance: &Self::Instance,
        inner: &mut S,
        req: Req,
        extra: &X,
        inner_ready: bool,
    ) -> Self::Future;

    /// A future failing with `err` (a request without a usable key).
    fn failed(&self, err: BoxError) -> Self::Future;
}

/// What every service and handle of one keyed layer shares.
struct Shell<Key, P: PerKey> {
    map: KeyedMap<Key, P::Instance>,
    per_key: P,
}

impl<Key, P> Shell<Key, P>
where
    Key: Clone + Hash + Eq + Send + Sync + 'static,
    P: MakeFor<Key>,
{
    /// The instance of `key`: a fixed one, the one in the map, or a new one.
    #[inline]
    fn instance(&self, key: &Key) -> Result<P::Instance, KeyError> {
        if let Some(fixed) = self.per_key.fixed()
            && let Some(instance) = fixed.get(key)
        {
            return Ok(instance.clone());
        }
        // A hit borrows the key; only a miss clones it.
        if let Some(instance) = self.map.get(key) {
            return Ok(instance);
        }
        self.insert(key)
    }

    #[cold]
    fn insert(&self, key: &Key) -> Result<P::Instance, KeyError> {
        if let Some(refused) = self.per_key.refuse_new(key) {
            return Err(refused);
        }
        let mut made = false;
        let instance = self.map.get_or_insert_with(key.clone(), || {
            made = true;
            self.per_key.make(key)
        });
        if made {
            self.per_key.added(&self.map);
        }
        Ok(instance)
    }
}

/// Layer with one instance of a pattern per key; see the [module docs](self). Crates name it
/// `KeyedXLayer`. Every service it makes, and every clone, shares its instances.
pub struct KeyedLayer<E, Key, P: PerKey, X> {
    shell: Arc<Shell<Key, P>>,
    extractor: E,
    extra: X,
}

impl<P: PerKey> KeyedLayer<(), (), P, ()> {
    /// The builder of a keyed layer named `name` (used in rejections, metrics and handles);
    /// its key extractor is a required part.
    pub fn builder(name: impl Into<Arc<str>>) -> P::Builder {
        P::builder(name.into())
    }
}

impl<E, Key, P: PerKey, X> KeyedLayer<E, Key, P, X> {
    /// A layer over `map`, making instances with `per_key`, taking keys with `extractor` and
    /// passing `extra` to each call. Pattern crates call this from their builder's `build()`.
    pub fn new(map: KeyedMap<Key, P::Instance>, per_key: P, extractor: E, extra: X) -> Self {
        Self {
            shell: Arc::new(Shell { map, per_key }),
            extractor,
            extra,
        }
    }

    /// A handle listing the per-key instances.
    pub fn handle(&self) -> KeyedHandle<Key, P> {
        KeyedHandle {
            shell: self.shell.clone(),
        }
    }

    /// The pattern's per-key settings.
    pub fn per_key(&self) -> &P {
        &self.shell.per_key
    }
}

impl<E: Clone, Key, P: PerKey, X: Clone> Clone for KeyedLayer<E, Key, P, X> {
    fn clone(&self) -> Self {
        Self {
            shell: self.shell.clone(),
            extractor: self.extractor.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl<E, Key, P: PerKey, X> fmt::Debug for KeyedLayer<E, Key, P, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLayer")
            .field("pattern", &P::PATTERN)
            .field("per_key", &self.shell.per_key)
            .finish_non_exhaustive()
    }
}

impl<S, E: Clone, Key, P: PerKey, X: Clone> Layer<S> for KeyedLayer<E, Key, P, X> {
    type Service = Keyed<S, E, Key, P, X>;

    fn layer(&self, inner: S) -> Self::Service {
        Keyed {
            inner,
            shell: self.shell.clone(),
            extractor: self.extractor.clone(),
            extra: self.extra.clone(),
            inner_ready: false,
        }
    }
}

/// Middleware with one instance of a pattern per key; see [`KeyedLayer`]. Crates name it
/// `KeyedX`.
pub struct Keyed<S, E, Key, P: PerKey, X> {
    inner: S,
    shell: Arc<Shell<Key, P>>,
    extractor: E,
    extra: X,
    /// For an always-ready pattern: whether the inner service was ready when last polled.
    inner_ready: bool,
}

impl<S: Clone, E: Clone, Key, P: PerKey, X: Clone> Clone for Keyed<S, E, Key, P, X> {
    fn clone(&self) -> Self {
        // A clone has not been polled.
        Self {
            inner: self.inner.clone(),
            shell: self.shell.clone(),
            extractor: self.extractor.clone(),
            extra: self.extra.clone(),
            inner_ready: false,
        }
    }
}

impl<S: fmt::Debug, E, Key, P: PerKey, X> fmt::Debug for Keyed<S, E, Key, P, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("inner", &self.inner)
            .field("pattern", &P::PATTERN)
            .field("name", &self.shell.per_key.name())
            .finish_non_exhaustive()
    }
}

impl<S, E, Key, P: PerKey, X> Keyed<S, E, Key, P, X> {
    crate::inner_service_accessors!();

    /// A handle listing the per-key instances this service shares with its layer.
    pub fn handle(&self) -> KeyedHandle<Key, P> {
        KeyedHandle {
            shell: self.shell.clone(),
        }
    }
}

impl<S, E, Key, P, X, Req> Service<Req> for Keyed<S, E, Key, P, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    E: KeyExtractor<Req, Key = Key>,
    Key: Clone + Hash + Eq + Send + Sync + 'static,
    P: MakeFor<Key> + CallThrough<S, Req, X>,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = P::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err.into())),
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                Poll::Ready(Ok(()))
            }
            // The key, and so the instance, is only known in `call`.
            Poll::Pending if P::ALWAYS_READY => {
                self.inner_ready = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let per_key = &self.shell.per_key;
        let instance = match self
            .extractor
            .extract(&req)
            .and_then(|key| self.shell.instance(&key))
        {
            Ok(instance) => instance,
            Err(err) => return per_key.failed(err.into()),
        };
        // Readiness counts for one call.
        let inner_ready = !P::ALWAYS_READY || std::mem::take(&mut self.inner_ready);
        per_key.call(&instance, &mut self.inner, req, &self.extra, inner_ready)
    }
}

/// A handle on a keyed layer's instances; see the [module docs](self). Crates name it
/// `KeyedXHandle`. Cheap to clone.
pub struct KeyedHandle<Key, P: PerKey> {
    shell: Arc<Shell<Key, P>>,
}

impl<Key, P: PerKey> Clone for KeyedHandle<Key, P> {
    fn clone(&self) -> Self {
        Self {
            shell: self.shell.clone(),
        }
    }
}

impl<Key, P: PerKey> fmt::Debug for KeyedHandle<Key, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("pattern", &P::PATTERN)
            .field("name", &self.shell.per_key.name())
            .finish_non_exhaustive()
    }
}

impl<Key, P> KeyedHandle<Key, P>
where
    Key: Clone + Hash + Eq + Send + Sync + 'static,
    P: MakeFor<Key>,
{
    /// The instance of `key`, if it has one (a fixed one, or one made for an earlier
    /// request). Lookups borrow: a map of `String` or `AsciiKey` keys takes a `&str`.
    pub fn get<Q>(&self, key: &Q) -> Option<P::Instance>
    where
        Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(fixed) = self.shell.per_key.fixed()
            && let Some(instance) = fixed.get(key)
        {
            return Some(instance.clone());
        }
        self.shell.map.get(key)
    }

    /// The instance of `key`, made now when it has none, as a request with this key would.
    ///
    /// # Errors
    ///
    /// When keys without a fixed instance are refused.
    pub fn get_or_make(&self, key: &Key) -> Result<P::Instance, KeyError> {
        self.shell.instance(key)
    }

    /// How many keys have an instance now: the fixed ones and those in the map, which never
    /// number more than the layer's `KeyBounds::max_keys`. Not for hot paths: it counts the
    /// map's entries one by one, so an instance made a moment ago is counted.
    pub fn len(&self) -> u64 {
        let fixed = self.shell.per_key.fixed().map_or(0, HashMap::len) as u64;
        fixed + self.shell.map.entries().count() as u64
    }

    /// Whether no key has an instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key with its instance, the fixed ones first, for dashboards and health
    /// endpoints; at most the fixed ones plus `KeyBounds::max_keys`. Not for hot paths: it
    /// collects.
    pub fn entries(&self) -> Vec<(Key, P::Instance)> {
        let fixed = self
            .shell
            .per_key
            .fixed()
            .into_iter()
            .flat_map(|fixed| fixed.iter().map(|(k, v)| (k.clone(), v.clone())));
        let dynamic = self.shell.map.entries().map(|(k, v)| ((*k).clone(), v));
        fixed.chain(dynamic).collect()
    }

    /// The pattern's per-key settings.
    pub fn per_key(&self) -> &P {
        &self.shell.per_key
    }
}

/// The report of a keyed layer: its health (`Ready` while every key is, `Unavailable` when
/// every key is, `Degraded` in between), state `keyed`, and the values `keys`, `degraded` and
/// `unavailable` (how many keys are in each).
impl<Key, P> StateHandle for KeyedHandle<Key, P>
where
    Key: Clone + Hash + Eq + Send + Sync + 'static,
    P: MakeFor<Key>,
    P::Instance: StateHandle,
{
    fn pattern(&self) -> &'static str {
        P::PATTERN
    }

    fn name(&self) -> &str {
        self.shell.per_key.name()
    }

    fn report(&self) -> Report {
        let (mut keys, mut degraded, mut unavailable) = (0u64, 0u64, 0u64);
        let mut count = |instance: &P::Instance| {
            keys += 1;
            match instance.health() {
                Health::Ready => {}
                Health::Degraded => degraded += 1,
                Health::Unavailable => unavailable += 1,
            }
        };
        if let Some(fixed) = self.shell.per_key.fixed() {
            fixed.values().for_each(&mut count);
        }
        self.shell.map.entries().for_each(|(_, v)| count(&v));
        let health = if keys > 0 && unavailable == keys {
            Health::Unavailable
        } else if degraded + unavailable > 0 {
            Health::Degraded
        } else {
            Health::Ready
        };
        Report::new(P::PATTERN, self.name().to_owned(), health, "keyed")
            .with_value("keys", keys as f64)
            .with_value("degraded", degraded as f64)
            .with_value("unavailable", unavailable as f64)
    }
}
