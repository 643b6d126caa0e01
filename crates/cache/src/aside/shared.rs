//! The settings and state every service of one cache-aside layer shares.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower_patterns_core::rng::{GOLDEN_GAMMA, mix, unit};

use crate::{
    Entry, ScopedKey,
    internal::{Count, Counters, Epochs, Flights},
    store::{CacheKey, Store, StoreError},
};

pub(crate) type Pred<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;
pub(crate) type Tagger<K, V> = Arc<dyn Fn(&K, &V) -> Vec<Box<str>> + Send + Sync>;
pub(crate) type Queued<K, V> = Arc<dyn Fn(&ScopedKey<K>) -> Option<V> + Send + Sync>;

/// The settings and state every service of one [`CacheLayer`](super::CacheLayer) shares.
pub(crate) struct Shared<K, V, St> {
    pub(crate) name: Arc<str>,
    pub(crate) store: St,
    pub(crate) flights: Flights<K, V>,
    pub(crate) epochs: Epochs,
    pub(crate) counters: Counters,
    pub(crate) settings: Settings<K, V>,
    pub(crate) draws: AtomicU64,
    /// Writes queued by a write-behind, which loads must see before the source has them.
    pub(crate) queued: std::sync::OnceLock<Queued<K, V>>,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> Shared<K, V, St> {
    pub(crate) fn draw(&self) -> f64 {
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
/// What a [`CacheBuilder`](super::CacheBuilder) sets and every service of the layer reads.
pub(crate) struct Settings<K, V> {
    pub(crate) ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) beta: f64,
    pub(crate) negative: Option<(Pred<V>, Duration)>,
    pub(crate) cacheable: Option<Pred<V>>,
    pub(crate) tags: Option<Tagger<K, V>>,
    pub(crate) require_tenant: bool,
    pub(crate) seed: u64,
}

impl<K, V> Default for Settings<K, V> {
    fn default() -> Self {
        Self {
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
        }
    }
}
