//! A pool per key ("service A 40, B 30, C 30", a pool per tenant), on core's keyed-layer
//! shell.

use std::{collections::HashMap, fmt, hash::Hash, sync::Arc};

use tower_patterns_core::{
    BoxError, ConfigError, KeyError,
    classify::Finish,
    keyed::{CallThrough, Keyed, KeyedHandle, KeyedLayer, KeyedMap, MakeFor, PerKey},
    metric_name,
    observe::labels,
};
use tower_service::Service;

use crate::{
    BulkheadHandle,
    bulkhead::{
        BulkheadBuilder, ByKey, Hold, KeyedBulkheadBuilder, NoKey, ResponseFuture, UntilResponse,
        admit,
        pool::{Counters, PoolSettings, Shared},
    },
    semaphore::Semaphore,
};

/// Layer with a separate pool per key: `KeyedBulkheadLayer::builder(name).key(extractor)`,
/// fixed pools with [`partition`](KeyedBulkheadBuilder::partition), a pool of
/// [`default_size`](KeyedBulkheadBuilder::default_size) for every other key, then
/// [`build`](KeyedBulkheadBuilder::build).
///
/// Keys with a configured size get their own fixed pool; other keys share nothing either:
/// each gets a pool of the default size, held in a bounded map (or is refused with a
/// [`KeyError`], which the HTTP mapping answers with 400). Keyed pools are always ready
/// and reject from `call` (the key is only known then); like tower's `LoadShed`, a call
/// made when the inner service was not ready at the last `poll_ready` is rejected with a
/// `Rejected` of kind `LoadShed`.
///
/// ```
/// use http::{HeaderName, Request};
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_patterns_bulkhead::KeyedBulkheadLayer;
/// use tower_patterns_core::{key::{AsciiKey, HeaderKey}, observe::StateHandle, BoxError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedBulkheadLayer::builder("tenants")
///     .key(HeaderKey::new(HeaderName::from_static("x-tenant-id")))
///     .partition(AsciiKey::from_static("enterprise-co"), 200)
///     .default_size(20)
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(()) }));
/// let req = Request::get("/").header("x-tenant-id", "acme").body(()).unwrap();
/// svc.oneshot(req).await.unwrap();
/// assert_eq!(handle.get("enterprise-co").unwrap().limit(), 200);
/// assert_eq!(handle.get("acme").unwrap().limit(), 20);
/// assert_eq!(handle.report().value("keys"), Some(2.0));
/// # }
/// ```
pub type KeyedBulkheadLayer<E, Key, H = UntilResponse> = KeyedLayer<E, Key, Pools<Key>, H>;

/// Middleware with a pool per key; see [`KeyedBulkheadLayer`].
pub type KeyedBulkhead<S, E, Key, H = UntilResponse> = Keyed<S, E, Key, Pools<Key>, H>;

/// A handle on a keyed layer's pools: `get(&str)` gives a key's [`BulkheadHandle`] (fixed
/// pools and those made for an earlier request), `get_or_make(key)` makes one as a request
/// would, `entries()` lists them, and its
/// [`StateHandle`](tower_patterns_core::observe::StateHandle) report counts the keys and the
/// full pools (`degraded`).
pub type KeyedBulkheadHandle<Key> = KeyedHandle<Key, Pools<Key>>;

/// The per-key part of a [`KeyedBulkheadLayer`]: the fixed pools, the settings of the pools
/// made on demand, and the metrics they share.
pub struct Pools<Key> {
    name: Arc<str>,
    fixed: HashMap<Key, BulkheadHandle>,
    /// The size of pools made on demand; `None` refuses keys without a fixed pool.
    default_size: Option<u32>,
    settings: PoolSettings,
    /// The counters of every pool made on demand, labelled with the layer's name.
    counters: Counters,
    keys: metrics::Counter,
}

impl<Key> fmt::Debug for Pools<Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pools")
            .field("name", &self.name)
            .field("fixed_partitions", &self.fixed.len())
            .field("default_size", &self.default_size)
            .finish_non_exhaustive()
    }
}

impl<Key: Send + Sync + 'static> PerKey for Pools<Key> {
    type Instance = BulkheadHandle;
    type Builder = KeyedBulkheadBuilder;
    const PATTERN: &'static str = "bulkhead";

    fn builder(name: Arc<str>) -> KeyedBulkheadBuilder {
        BulkheadBuilder::new(
            name,
            ByKey {
                extractor: NoKey,
                bounds: Default::default(),
                partitions: Vec::new(),
                default_size: None,
            },
        )
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl<Key> MakeFor<Key> for Pools<Key>
where
    Key: Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    fn make(&self, key: &Key) -> BulkheadHandle {
        let settings = PoolSettings {
            max_concurrent: self.default_size.unwrap_or(1),
            ..self.settings
        };
        // Validated when the layer was built, so this cannot fail; fall back to a pool of one
        // rather than panic.
        let semaphore = settings
            .semaphore(None)
            .unwrap_or_else(|_| Arc::new(Semaphore::new(1, 0)));
        BulkheadHandle::new(Arc::new(Shared::with_counters(
            format!("{}/{key}", self.name).into(),
            self.counters.clone(),
            semaphore,
            settings.max_wait,
            false,
        )))
    }

    fn refuse_new(&self, _key: &Key) -> Option<KeyError> {
        self.default_size.is_none().then(|| {
            KeyError::malformed(
                format!("partition of bulkhead {}", self.name),
                "no partition for this key",
            )
        })
    }

    #[inline]
    fn fixed(&self) -> Option<&HashMap<Key, BulkheadHandle>> {
        (!self.fixed.is_empty()).then_some(&self.fixed)
    }

    fn added(&self, _map: &KeyedMap<Key, BulkheadHandle>) {
        self.keys.increment(1);
    }
}

impl<S, Req, H, Key> CallThrough<S, Req, H> for Pools<Key>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    H: Finish<S::Response, BoxError, Hold> + Clone,
    Key: Send + Sync + 'static,
{
    type Response = H::Response;
    type Future = ResponseFuture<S, Req, H>;
    const ALWAYS_READY: bool = true;

    #[inline]
    fn call(
        &self,
        pool: &BulkheadHandle,
        inner: &mut S,
        req: Req,
        hold: &H,
        inner_ready: bool,
    ) -> Self::Future {
        if !inner_ready {
            return ResponseFuture::failed(pool.shared().not_ready().into());
        }
        admit(pool.shared(), inner, req, hold, None)
    }

    fn failed(&self, err: BoxError) -> Self::Future {
        ResponseFuture::failed(err)
    }
}

impl<H, E, Key> BulkheadBuilder<H, ByKey<E, Key>> {
    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When a size is 0, a key is listed twice, the waiting settings contradict each other,
    /// the key bounds are invalid, or with [`backpressure`](BulkheadBuilder::backpressure)
    /// or [`adaptive`](BulkheadBuilder::adaptive), which a keyed bulkhead does not offer (it
    /// is always ready, the pool being known only from the request; and each key's pool would
    /// need an algorithm of its own).
    pub fn build(self) -> Result<KeyedBulkheadLayer<E, Key, H>, ConfigError>
    where
        Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
    {
        if self.pool.backpressure {
            return Err(ConfigError::new(
                "backpressure",
                "a keyed bulkhead knows the pool only from the request, so it cannot wait in poll_ready",
            ));
        }
        if self.adaptive.is_some() {
            return Err(ConfigError::new(
                "adaptive",
                "not offered for keyed bulkheads: each key's pool would need its own algorithm",
            ));
        }
        let settings = self.pool;
        let pool = |size: u32| {
            PoolSettings {
                max_concurrent: size,
                ..settings
            }
            .semaphore(None)
        };
        let mut fixed = HashMap::with_capacity(self.mode.partitions.len());
        for (key, size) in self.mode.partitions {
            let semaphore = pool(size)?;
            let name: Arc<str> = format!("{}/{key}", self.name).into();
            let shared = Shared::new(name.clone(), &name, semaphore, settings.max_wait, false);
            if fixed.contains_key(&key) {
                return Err(ConfigError::new(
                    "partition",
                    format!("key {key} is listed twice"),
                ));
            }
            fixed.insert(key, BulkheadHandle::new(Arc::new(shared)));
        }
        if let Some(size) = self.mode.default_size {
            pool(size)?;
        }
        let map = KeyedMap::builder().bounds(self.mode.bounds).build()?;
        let counters = Counters::register(&self.name);
        let keys = metrics::counter!(
            metric_name!("bulkhead", "keys_total"),
            labels::NAME => self.name.to_string()
        );
        Ok(KeyedLayer::new(
            map,
            Pools {
                name: self.name,
                fixed,
                default_size: self.mode.default_size,
                settings,
                counters,
                keys,
            },
            self.mode.extractor,
            self.hold,
        ))
    }
}
