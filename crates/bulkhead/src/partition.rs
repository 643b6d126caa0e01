//! Separate pools per key: "service A 40, B 30, C 30".

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tower_layer::Layer;
use tower_patterns_core::{BoxError, ConfigError, KeyError, KeyExtractor, keyed::KeyedMap};
use tower_service::Service;

use crate::{
    BulkheadHandle,
    service::{Hold, ResponseFuture, Shared, UntilResponse, admit, build_pool},
};
use tower_patterns_core::classify::Finish;

struct Partitions<Key> {
    name: Arc<str>,
    fixed: HashMap<Key, Arc<Shared>>,
    /// Pools made on demand for keys without a fixed size, bounded; `None` refuses them.
    dynamic: Option<(KeyedMap<Key, Arc<Shared>>, u32)>,
    max_wait: Duration,
    max_waiting: Option<u32>,
}

impl<Key> Partitions<Key>
where
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    fn pool(&self, key: &Key) -> Result<Arc<Shared>, KeyError> {
        if let Some(pool) = self.fixed.get(key) {
            return Ok(pool.clone());
        }
        let Some((map, size)) = &self.dynamic else {
            return Err(KeyError::malformed(
                format!("partition of bulkhead {}", self.name),
                "no partition for this key",
            ));
        };
        Ok(map.get_or_insert_with(key.clone(), || {
            // Validated when the layer was built, so this cannot fail; fall back to a pool of
            // one rather than panic.
            let semaphore = build_pool(*size, self.max_wait, self.max_waiting, false, None)
                .unwrap_or_else(|_| Arc::new(crate::semaphore::Semaphore::new(1, 0)));
            Arc::new(Shared::new(
                format!("{}/{key}", self.name).into(),
                &self.name,
                semaphore,
                self.max_wait,
                false,
            ))
        }))
    }
}

/// Layer with a separate pool per key; build it with [`PartitionedBulkheadLayer::builder`].
///
/// Keys with a configured size get their own fixed pool; other keys share nothing either:
/// each gets a pool of the default size, held in a bounded map (or is refused with a
/// [`KeyError`], which the HTTP mapping answers with 400). Partitioned pools are always ready
/// and reject from `call` (the key is only known then); like tower's `LoadShed`, a call
/// made when the inner service was not ready at the last `poll_ready` is rejected with a
/// `Rejected` of kind `LoadShed`.
pub struct PartitionedBulkheadLayer<K, Key, H = UntilResponse> {
    partitions: Arc<Partitions<Key>>,
    extractor: K,
    hold: H,
}

impl<K: Clone, Key, H: Clone> Clone for PartitionedBulkheadLayer<K, Key, H> {
    fn clone(&self) -> Self {
        Self {
            partitions: self.partitions.clone(),
            extractor: self.extractor.clone(),
            hold: self.hold.clone(),
        }
    }
}

impl<K, Key, H> fmt::Debug for PartitionedBulkheadLayer<K, Key, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedBulkheadLayer")
            .field("name", &self.partitions.name)
            .field("fixed_partitions", &self.partitions.fixed.len())
            .finish_non_exhaustive()
    }
}

impl PartitionedBulkheadLayer<(), ()> {
    /// A builder for partitioned pools named `name`.
    pub fn builder<Key>(name: impl Into<Arc<str>>) -> PartitionBuilder<Key> {
        PartitionBuilder {
            name: name.into(),
            sizes: Vec::new(),
            default_size: None,
            max_keys: 10_000,
            key_idle: Duration::from_secs(600),
            max_wait: Duration::ZERO,
            max_waiting: None,
        }
    }
}

impl<K, Key, H> PartitionedBulkheadLayer<K, Key, H>
where
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    /// A handle on the pool of `key` (made on demand for keys without a fixed size).
    ///
    /// # Errors
    ///
    /// When the key has no partition and unknown keys are refused.
    pub fn handle(&self, key: &Key) -> Result<BulkheadHandle, KeyError> {
        self.partitions.pool(key).map(BulkheadHandle::new)
    }

    /// How many partitions exist now: the fixed ones and the pools made on demand, which
    /// never number more than the `max_keys` of [`PartitionBuilder::keys`]. Not for hot
    /// paths: it counts the pools one by one, so a pool made a moment ago is counted.
    pub fn len(&self) -> u64 {
        let dynamic = self
            .partitions
            .dynamic
            .as_ref()
            .map_or(0, |(map, _)| map.entries().count());
        (self.partitions.fixed.len() + dynamic) as u64
    }

    /// Whether there are no partitions at all (no fixed ones, none made yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every partition with a handle on its pool: the fixed ones, then those made on demand
    /// (at most `max_keys`), for dashboards and health endpoints. Not for hot paths: it
    /// collects.
    pub fn partitions(&self) -> Vec<(Key, BulkheadHandle)> {
        let fixed = self
            .partitions
            .fixed
            .iter()
            .map(|(key, pool)| (key.clone(), BulkheadHandle::new(pool.clone())));
        let dynamic = self.partitions.dynamic.iter().flat_map(|(map, _)| {
            map.entries()
                .map(|(key, pool)| ((*key).clone(), BulkheadHandle::new(pool)))
        });
        fixed.chain(dynamic).collect()
    }
}

impl<S, K: Clone, Key, H: Clone> Layer<S> for PartitionedBulkheadLayer<K, Key, H> {
    type Service = PartitionedBulkhead<S, K, Key, H>;

    fn layer(&self, inner: S) -> Self::Service {
        PartitionedBulkhead {
            inner,
            partitions: self.partitions.clone(),
            extractor: self.extractor.clone(),
            hold: self.hold.clone(),
            inner_ready: false,
        }
    }
}

/// Builds a [`PartitionedBulkheadLayer`].
pub struct PartitionBuilder<Key> {
    name: Arc<str>,
    sizes: Vec<(Key, u32)>,
    default_size: Option<u32>,
    max_keys: u64,
    key_idle: Duration,
    max_wait: Duration,
    max_waiting: Option<u32>,
}

impl<Key> fmt::Debug for PartitionBuilder<Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionBuilder")
            .field("name", &self.name)
            .field("partitions", &self.sizes.len())
            .field("default_size", &self.default_size)
            .finish_non_exhaustive()
    }
}

impl<Key> PartitionBuilder<Key>
where
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    /// A fixed pool of `size` for `key`.
    #[must_use]
    pub fn partition(mut self, key: impl Into<Key>, size: u32) -> Self {
        self.sizes.push((key.into(), size));
        self
    }

    /// Keys without a fixed pool each get one of `size` (default: such keys are refused).
    #[must_use]
    pub fn default_size(mut self, size: u32) -> Self {
        self.default_size = Some(size);
        self
    }

    /// The most on-demand pools kept (default 10,000) and how long an unused one is kept
    /// (default 10 minutes).
    #[must_use]
    pub fn keys(mut self, max_keys: u64, idle: Duration) -> Self {
        self.max_keys = max_keys;
        self.key_idle = idle;
        self
    }

    /// How long a call may wait for a permit of its pool (default zero: reject at once).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The most calls waiting in each pool (default 1,024 when `max_wait` is set).
    #[must_use]
    pub fn max_waiting(mut self, n: u32) -> Self {
        self.max_waiting = Some(n);
        self
    }

    /// Builds the layer, taking each request's key with `extractor`.
    ///
    /// # Errors
    ///
    /// When a size is 0, a key is listed twice, or the waiting settings contradict each other.
    pub fn build<K>(
        self,
        extractor: K,
    ) -> Result<PartitionedBulkheadLayer<K, Key, UntilResponse>, ConfigError> {
        let mut fixed = HashMap::with_capacity(self.sizes.len());
        for (key, size) in self.sizes {
            let semaphore = build_pool(size, self.max_wait, self.max_waiting, false, None)?;
            let name: Arc<str> = format!("{}/{key}", self.name).into();
            let pool = Shared::new(name.clone(), &name, semaphore, self.max_wait, false);
            if fixed.insert(key.clone(), Arc::new(pool)).is_some() {
                return Err(ConfigError::new(
                    "partition",
                    format!("key {key} is listed twice"),
                ));
            }
        }
        let dynamic = match self.default_size {
            Some(size) => {
                build_pool(size, self.max_wait, self.max_waiting, false, None)?;
                let map = KeyedMap::builder()
                    .max_entries(self.max_keys)
                    .idle_timeout(self.key_idle)
                    .build()?;
                Some((map, size))
            }
            None => None,
        };
        Ok(PartitionedBulkheadLayer {
            partitions: Arc::new(Partitions {
                name: self.name,
                fixed,
                dynamic,
                max_wait: self.max_wait,
                max_waiting: self.max_waiting,
            }),
            extractor,
            hold: UntilResponse,
        })
    }
}

/// Middleware with a pool per key; see [`PartitionedBulkheadLayer`].
pub struct PartitionedBulkhead<S, K, Key, H = UntilResponse> {
    inner: S,
    partitions: Arc<Partitions<Key>>,
    extractor: K,
    hold: H,
    /// Whether the inner service was ready when last polled.
    inner_ready: bool,
}

impl<S: Clone, K: Clone, Key, H: Clone> Clone for PartitionedBulkhead<S, K, Key, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            partitions: self.partitions.clone(),
            extractor: self.extractor.clone(),
            hold: self.hold.clone(),
            inner_ready: false,
        }
    }
}

impl<S: fmt::Debug, K, Key, H> fmt::Debug for PartitionedBulkhead<S, K, Key, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedBulkhead")
            .field("inner", &self.inner)
            .field("name", &self.partitions.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, Key, H> PartitionedBulkhead<S, K, Key, H> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, K, Key, H, Req> Service<Req> for PartitionedBulkhead<S, K, Key, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req, Key = Key>,
    Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
    H: Finish<S::Response, BoxError, Hold> + Clone,
{
    type Response = H::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Always ready (the pool is only known in `call`); remember whether the inner
        // service is.
        self.inner_ready = match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
            polled => polled.is_ready(),
        };
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let pool = match self
            .extractor
            .extract(&req)
            .and_then(|key| self.partitions.pool(&key))
        {
            Ok(pool) => pool,
            Err(e) => return ResponseFuture::failed(e.into()),
        };
        // Readiness counts for one call.
        if !std::mem::take(&mut self.inner_ready) {
            return ResponseFuture::failed(pool.not_ready().into());
        }
        admit(&pool, &mut self.inner, req, &self.hold, None)
    }
}
