use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter, sync::Cache};
use tower_patterns_core::{keyed::sharded_bound, tenant::TenantId};

use super::{CacheKey, Store, StoreError, StoreStats};
use crate::{Entry, ScopedKey};

type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// The fastest in-process store: a `quick_cache` map (S3-FIFO eviction, sharded, one
/// uncontended read lock per hit, no read log and no clock of its own).
///
/// A hit through the cache-aside layer costs about a third of one on moka on the 2-core
/// reference machine (see `docs/performance.md`, cache section), which is why the examples
/// start with it.
/// Bounded by entry count, or by weight with [`QuickCacheStoreBuilder::weigher`] (a weight of 0
/// counts as 1, so every entry can be evicted). The map is sharded (a few shards per core,
/// fewer for small bounds), each shard holding an equal part of the bound: the total never
/// exceeds it (it may be rounded down by up to an eighth), and with a weigher an entry heavier
/// than one shard's part is not stored. Like [`MokaStore`](super::MokaStore), every
/// entry carries its own times and the cache checks them on every read with Tokio's clock, so
/// an entry past its last servable moment is never served; it keeps its slot until evicted for
/// room or overwritten.
///
/// When to prefer [`MokaStore`](super::MokaStore): a working set far larger than the bound
/// with a long tail of one-off keys, where moka's TinyLFU admission keeps a higher hit ratio,
/// or when entries must be reclaimed by age whatever their use
/// ([`MokaStoreBuilder::reclaim_after`](super::MokaStoreBuilder::reclaim_after)).
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_patterns_cache::{store::{QuickCacheStore, Store}, Entry, ScopedKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = QuickCacheStore::<u64, String>::builder().max_entries(10_000).build();
/// let key = ScopedKey::new(None, 7);
/// let entry = Entry::new("seven".to_string(), Instant::now(), Duration::from_secs(60), Duration::ZERO);
/// store.put(key.clone(), entry).await.unwrap();
/// assert_eq!(store.peek(&key).unwrap().value(), "seven");
/// store.invalidate(&key).await.unwrap();
/// assert!(store.peek(&key).is_none());
/// # }
/// ```
///
/// Cloning shares the cache.
pub struct QuickCacheStore<K, V> {
    cache: Arc<QuickMap<K, V>>,
    evictions: Arc<AtomicU64>,
    count: bool,
}

type QuickMap<K, V> = Cache<ScopedKey<K>, Entry<V>, EntryWeight<K, V>, DefaultHashBuilder, Evicted>;

/// The weight of an entry: 1, or the user's weigher's (at least 1).
struct EntryWeight<K, V>(Option<Weigher<K, V>>);

impl<K, V> Clone for EntryWeight<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> Weighter<ScopedKey<K>, Entry<V>> for EntryWeight<K, V> {
    #[inline]
    fn weight(&self, key: &ScopedKey<K>, entry: &Entry<V>) -> u64 {
        match &self.0 {
            Some(w) => u64::from(w(key.key(), entry.value()).max(1)),
            None => 1,
        }
    }
}

/// Hands what an insert pushed out back to the insert, which drops it after the shard's lock
/// is released and counts the evictions for room (`quick_cache` reports the value a key
/// replaces the same way, and an entry too heavy to store as the new one itself).
#[derive(Clone)]
struct Evicted;

/// What one insert pushed out: the first two entries kept (to drop outside the lock and to
/// tell a replaced value from an eviction), the others counted.
struct Pushed<K, V> {
    kept: [Option<(ScopedKey<K>, Entry<V>)>; 2],
    more: u64,
}

impl<K, V> Lifecycle<ScopedKey<K>, Entry<V>> for Evicted {
    type RequestState = Pushed<K, V>;

    #[inline]
    fn begin_request(&self) -> Pushed<K, V> {
        Pushed {
            kept: [None, None],
            more: 0,
        }
    }

    #[inline]
    fn on_evict(&self, pushed: &mut Pushed<K, V>, key: ScopedKey<K>, entry: Entry<V>) {
        match pushed.kept.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((key, entry)),
            None => pushed.more += 1,
        }
    }
}

impl<K, V> Clone for QuickCacheStore<K, V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            evictions: self.evictions.clone(),
            count: self.count,
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> std::fmt::Debug for QuickCacheStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickCacheStore")
            .field("entries", &self.cache.len())
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a [`QuickCacheStore`].
pub struct QuickCacheStoreBuilder<K, V> {
    max: u64,
    weigher: Option<Weigher<K, V>>,
    estimated_entries: Option<usize>,
    count_evictions: bool,
}

impl<K, V> std::fmt::Debug for QuickCacheStoreBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickCacheStoreBuilder")
            .field("max", &self.max)
            .field("weigher", &self.weigher.is_some())
            .field("estimated_entries", &self.estimated_entries)
            .field("count_evictions", &self.count_evictions)
            .finish()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> QuickCacheStore<K, V> {
    /// A builder: 10,000 entries by default.
    pub fn builder() -> QuickCacheStoreBuilder<K, V> {
        QuickCacheStoreBuilder {
            max: 10_000,
            weigher: None,
            estimated_entries: None,
            count_evictions: false,
        }
    }

    /// Stores `entry` in this process.
    pub fn insert(&self, key: ScopedKey<K>, entry: Entry<V>) {
        let inserted = self.count.then(|| key.clone());
        let pushed = self.cache.insert_with_lifecycle(key, entry);
        if let Some(inserted) = inserted {
            // The key's own old value (replaced) or new one (too heavy) is no eviction for room.
            let kept = pushed.kept.iter().flatten();
            let evicted = kept.filter(|(k, _)| *k != inserted).count() as u64 + pushed.more;
            if evicted > 0 {
                self.evictions.fetch_add(evicted, Ordering::Relaxed);
            }
        }
    }

    /// Removes `key` from this process.
    pub fn evict(&self, key: &ScopedKey<K>) {
        self.cache.remove(key);
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Removes the keys of `tenant`'s scope that start with `prefix`.
    pub fn evict_prefix(&self, tenant: Option<&TenantId>, prefix: &str) {
        self.cache.retain(|k, _| !k.has_prefix(tenant, prefix));
    }

    /// Removes the entries tagged `tag`.
    pub fn evict_tag(&self, tag: &str) {
        self.cache
            .retain(|_, e| !e.tags().iter().any(|t| **t == *tag));
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> QuickCacheStoreBuilder<K, V> {
    /// The most entries, or the most total weight with a [`weigher`](Self::weigher).
    #[must_use]
    pub fn max_entries(mut self, max: u64) -> Self {
        self.max = max;
        self
    }

    /// Weighs entries (bytes, say); the bound then applies to the total weight. Give
    /// [`estimated_entries`](Self::estimated_entries) too, so the map is sized for them.
    #[must_use]
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// How many entries the store is expected to hold (default: the bound without a weigher,
    /// a thousandth of it with one, at least 16), which sizes the map up front.
    #[must_use]
    pub fn estimated_entries(mut self, n: usize) -> Self {
        self.estimated_entries = Some(n);
        self
    }

    /// Counts evictions for room (for [`StoreStats::evictions`] and the cache's statistics; a
    /// value replaced by a newer one for its key is not an eviction). Off by default; it costs
    /// a key clone per insert and an atomic add per insert that evicts, nothing per hit.
    #[must_use]
    pub fn count_evictions(mut self) -> Self {
        self.count_evictions = true;
        self
    }

    /// The store.
    pub fn build(self) -> QuickCacheStore<K, V> {
        let evictions = Arc::new(AtomicU64::new(0));
        let capacity = usize::try_from(self.max).unwrap_or(usize::MAX);
        let estimated = self.estimated_entries.unwrap_or(if self.weigher.is_some() {
            capacity / 1_000
        } else {
            capacity
        });
        let (shards, weight) = sharded_bound(self.max);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(estimated.max(16))
            .weight_capacity(weight)
            .build()
            .expect("both capacities are set");
        QuickCacheStore {
            cache: Arc::new(Cache::with_options(
                options,
                EntryWeight(self.weigher),
                DefaultHashBuilder::default(),
                Evicted,
            )),
            evictions,
            count: self.count_evictions,
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Store<K, V> for QuickCacheStore<K, V> {
    #[inline]
    fn peek(&self, key: &ScopedKey<K>) -> Option<Entry<V>> {
        self.cache.get(key)
    }

    async fn put(&self, key: ScopedKey<K>, entry: Entry<V>) -> Result<(), StoreError> {
        self.insert(key, entry);
        Ok(())
    }

    async fn invalidate(&self, key: &ScopedKey<K>) -> Result<(), StoreError> {
        self.evict(key);
        Ok(())
    }

    async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        self.evict_prefix(tenant, prefix);
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.evict_tag(tag);
        Ok(())
    }

    async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.clear();
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.cache.len() as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test]
    async fn prefix_and_tag_invalidation_spare_other_scopes() {
        super::super::check_invalidation_spares_other_scopes(
            QuickCacheStore::<String, String>::builder().build(),
        )
        .await;
    }

    #[test]
    fn debug_shows_the_counts_and_the_settings() {
        let builder = QuickCacheStore::<u64, u64>::builder().max_entries(7);
        assert!(format!("{builder:?}").contains("max: 7"), "{builder:?}");
        let store = builder.build();
        store.insert(
            ScopedKey::new(None, 1),
            Entry::new(1, Instant::now(), Duration::from_secs(60), Duration::ZERO),
        );
        assert!(format!("{store:?}").contains("entries: 1"), "{store:?}");
    }

    #[test]
    fn the_bound_holds_and_evictions_are_counted() {
        let store = QuickCacheStore::<u64, u64>::builder()
            .max_entries(100)
            .count_evictions()
            .build();
        for i in 0..10_000u64 {
            store.insert(
                ScopedKey::new(None, i),
                Entry::new(i, Instant::now(), Duration::from_secs(60), Duration::ZERO),
            );
        }
        let stats = store.stats();
        assert!(stats.entries <= 100, "{stats:?}");
        assert!(stats.evictions >= 9_900, "{stats:?}");
        let before = stats.evictions;
        let key = ScopedKey::new(None, 10_000u64);
        for i in 0..50u64 {
            store.insert(
                key.clone(),
                Entry::new(i, Instant::now(), Duration::from_secs(60), Duration::ZERO),
            );
        }
        assert!(
            store.stats().evictions <= before + 1,
            "overwriting one key is no eviction: {:?}",
            store.stats()
        );
        let silent = QuickCacheStore::<u64, u64>::builder()
            .max_entries(10)
            .build();
        for i in 0..100u64 {
            silent.insert(
                ScopedKey::new(None, i),
                Entry::new(i, Instant::now(), Duration::from_secs(60), Duration::ZERO),
            );
        }
        assert_eq!(silent.stats().evictions, 0, "not counted unless asked");
    }

    #[test]
    fn one_insert_that_pushes_out_many_counts_each() {
        // Ten entries of weight 1 fill the bound (one shard at this size); one of weight 5
        // pushes out at least four of them.
        let store = QuickCacheStore::<u64, String>::builder()
            .max_entries(10)
            .weigher(|_, v: &String| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .count_evictions()
            .build();
        let put = |k: u64, v: &str| {
            store.insert(
                ScopedKey::new(None, k),
                Entry::new(
                    v.to_owned(),
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                ),
            );
        };
        for k in 0..10 {
            put(k, "x");
        }
        let before = store.stats().evictions;
        put(100, "xxxxx");
        let evicted = store.stats().evictions - before;
        assert!(
            evicted >= 4,
            "{evicted} evictions counted for a weight of 5"
        );
    }

    #[test]
    fn the_weigher_bounds_the_total_weight_and_a_zero_weight_still_counts() {
        let store = QuickCacheStore::<u64, String>::builder()
            .max_entries(1_000)
            .weigher(|_, v: &String| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .estimated_entries(64)
            .build();
        for i in 0..100u64 {
            store.insert(
                ScopedKey::new(None, i),
                Entry::new(
                    "x".repeat(100),
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                ),
            );
        }
        assert!(store.stats().entries <= 10, "{:?}", store.stats());
        let zero = QuickCacheStore::<u64, String>::builder()
            .max_entries(10)
            .weigher(|_, _| 0)
            .build();
        for i in 0..100u64 {
            zero.insert(
                ScopedKey::new(None, i),
                Entry::new(
                    String::new(),
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                ),
            );
        }
        assert!(zero.stats().entries <= 10, "{:?}", zero.stats());
    }
}
