//! The builder of the bulkhead and of the keyed bulkhead: one set of pool settings, two modes.

use std::{fmt, sync::Arc, time::Duration};

use tower_patterns_core::{ConfigError, keyed::KeyBounds};

use super::{
    BulkheadLayer,
    hold::{UntilBodyEnd, UntilResponse},
    pool::{PoolSettings, Shared},
};
use crate::adaptive::LimitAlgorithm;

/// Builds a [`BulkheadLayer`] (from [`BulkheadLayer::builder`]) or, as a
/// [`KeyedBulkheadBuilder`], a [`KeyedBulkheadLayer`](crate::KeyedBulkheadLayer) (from
/// `KeyedBulkheadLayer::builder(name)`); `build` validates the settings.
///
/// `M` is the mode: [`Unkeyed`] for one pool, [`ByKey`] for a pool per key. The waiting
/// settings and the hold apply to both (for a keyed layer, to each key's pool).
pub struct BulkheadBuilder<H = UntilResponse, M = Unkeyed> {
    pub(crate) name: Arc<str>,
    pub(crate) pool: PoolSettings,
    pub(crate) hold: H,
    pub(crate) adaptive: Option<Box<dyn LimitAlgorithm>>,
    pub(crate) mode: M,
}

/// The builder of a [`KeyedBulkheadLayer`](crate::KeyedBulkheadLayer): a [`BulkheadBuilder`]
/// in keyed mode. Its key extractor is required: `build()` exists once
/// [`key`](BulkheadBuilder::key) has set one.
pub type KeyedBulkheadBuilder<E = NoKey, Key = (), H = UntilResponse> =
    BulkheadBuilder<H, ByKey<E, Key>>;

/// The mode of a [`BulkheadBuilder`] that builds one pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unkeyed;

/// The mode of a [`KeyedBulkheadBuilder`]: the key extractor `E`, the fixed pools of keys of
/// type `Key`, the size of the others' pools and the bounds on keys.
#[derive(Clone)]
pub struct ByKey<E, Key> {
    pub(crate) extractor: E,
    pub(crate) bounds: KeyBounds,
    pub(crate) partitions: Vec<(Key, u32)>,
    pub(crate) default_size: Option<u32>,
}

impl<E, Key> fmt::Debug for ByKey<E, Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByKey")
            .field("partitions", &self.partitions.len())
            .field("default_size", &self.default_size)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

/// A keyed builder's extractor before [`key`](BulkheadBuilder::key) sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<H, M: fmt::Debug> fmt::Debug for BulkheadBuilder<H, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.pool.max_concurrent)
            .field("max_wait", &self.pool.max_wait)
            .field("max_waiting", &self.pool.max_waiting)
            .field("backpressure", &self.pool.backpressure)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl BulkheadLayer {
    /// A builder for a bulkhead named `name`. Defaults: 25 concurrent calls, no waiting
    /// (a full pool rejects at once), permits held until the response future completes.
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadBuilder {
        BulkheadBuilder::new(name.into(), Unkeyed)
    }
}

impl<M> BulkheadBuilder<UntilResponse, M> {
    /// Defaults: 25 concurrent calls, no waiting (a full pool rejects at once), permits held
    /// until the response future completes.
    pub(crate) fn new(name: Arc<str>, mode: M) -> Self {
        Self {
            name,
            pool: PoolSettings::default(),
            hold: UntilResponse,
            adaptive: None,
            mode,
        }
    }
}

impl<H, M> BulkheadBuilder<H, M> {
    /// How long a call may wait for a permit, in FIFO order (default zero: reject at once).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.pool.max_wait = wait;
        self
    }

    /// The most calls waiting at once (default 1,024, Envoy's pending-request limit, when
    /// `max_wait` is above zero). Not with [`backpressure`](Self::backpressure), whose
    /// waiters are the callers' own `poll_ready`s.
    #[must_use]
    pub fn max_waiting(mut self, n: u32) -> Self {
        self.pool.max_waiting = Some(n);
        self
    }

    /// Reserve the permit in `poll_ready`, returning `Pending` while the pool is full, in
    /// FIFO order, instead of the default of being always ready and rejecting from `call`;
    /// like tower's `ConcurrencyLimit`, for load balancers and `Buffer`s.
    ///
    /// `poll_ready` never fails because of the pool: to tower an error from `poll_ready`
    /// means the service is gone for good (a `Buffer` or a balancer drops it). So every
    /// caller waits in the queue, however many there are (each is a clone its owner polls,
    /// so the owners bound them; `max_waiting` is refused in this mode), and when a `max_wait`
    /// is set (zero means no deadline here) a caller still waiting when it runs out is told
    /// ready and its next `call` is rejected with [`Rejected`](tower_patterns_core::Rejected) (`BulkheadFull`). Under a load
    /// balancer leave `max_wait` at zero, so a full pool only ever reads as not ready.
    #[must_use]
    pub fn backpressure(mut self) -> Self {
        self.pool.backpressure = true;
        self
    }

    /// Hold each permit until the HTTP response body ends, not just the response head.
    pub fn hold_until_body_end(self) -> BulkheadBuilder<UntilBodyEnd, M> {
        BulkheadBuilder {
            name: self.name,
            pool: self.pool,
            hold: UntilBodyEnd,
            adaptive: self.adaptive,
            mode: self.mode,
        }
    }

    /// Let the limit follow latency with `algorithm` ([`Gradient2`](crate::Gradient2),
    /// [`Aimd`](crate::Aimd)); `max_concurrent` is then only the starting point, replaced by
    /// the algorithm's initial limit.
    #[must_use]
    pub fn adaptive(mut self, algorithm: impl LimitAlgorithm) -> Self {
        self.adaptive = Some(Box::new(algorithm));
        self
    }
}

impl<H> BulkheadBuilder<H, Unkeyed> {
    /// The most calls in flight at once (default 25, resilience4j's).
    #[must_use]
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.pool.max_concurrent = n;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// When `max_concurrent` is 0, or the waiting settings contradict each other (including
    /// `max_waiting` with `backpressure`).
    pub fn build(self) -> Result<BulkheadLayer<H>, ConfigError> {
        let semaphore = self.pool.semaphore(self.adaptive)?;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared::new(
                self.name.clone(),
                &self.name,
                semaphore,
                self.pool.max_wait,
                self.pool.backpressure,
            )),
            hold: self.hold,
        })
    }
}

impl<H> BulkheadBuilder<H, ByKey<NoKey, ()>> {
    /// Takes each request's key with `extractor` (a tenant, route or downstream; see
    /// [`tower_patterns_core::key`]): every key gets its own pool. The key type is the
    /// extractor's, found from the requests the service is called with (or from
    /// [`partition`](Self::partition)).
    pub fn key<E, Key>(self, extractor: E) -> KeyedBulkheadBuilder<E, Key, H> {
        BulkheadBuilder {
            name: self.name,
            pool: self.pool,
            hold: self.hold,
            adaptive: self.adaptive,
            mode: ByKey {
                extractor,
                bounds: self.mode.bounds,
                partitions: Vec::new(),
                default_size: None,
            },
        }
    }
}

impl<H, E, Key> BulkheadBuilder<H, ByKey<E, Key>> {
    /// A fixed pool of `size` for `key`, never dropped.
    #[must_use]
    pub fn partition(mut self, key: Key, size: u32) -> Self {
        self.mode.partitions.push((key, size));
        self
    }

    /// Keys without a fixed pool each get one of `size`, held in a bounded map (see
    /// [`key_bounds`](Self::key_bounds)). Without it such keys are refused with a
    /// [`KeyError`](tower_patterns_core::KeyError) (400 through the HTTP mapping).
    #[must_use]
    pub fn default_size(mut self, size: u32) -> Self {
        self.mode.default_size = Some(size);
        self
    }

    /// How many on-demand pools are kept and for how long an unused one is kept (default
    /// 10,000 keys, 10 minutes idle). A key dropped for either starts with a fresh pool.
    #[must_use]
    pub fn key_bounds(mut self, bounds: KeyBounds) -> Self {
        self.mode.bounds = bounds;
        self
    }
}
