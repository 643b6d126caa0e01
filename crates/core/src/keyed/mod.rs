//! A bounded map of per-key instances (a breaker per host, a bulkhead per tenant).
//!
//! Per-key state must not grow with the number of keys clients invent. [`KeyedMap`] holds at
//! most `max_entries` instances and drops those not used for `idle_timeout`.
//!
//! It is a thin layer over [`moka::sync::Cache`], chosen over a hand-written map because it
//! is well kept, lock-free on reads, bounded with a TinyLFU admission policy that keeps keys in
//! steady use when a flood of one-off keys arrives (tested: 10 keys in use survive 50,000
//! one-off keys in a map of 100), and creates a missing entry once when many callers ask for
//! it at the same moment (`get_with`).
//!
//! What to know:
//! - The bound holds as [`KeyedMap::len`] and [`KeyedMap::entries`] see it. moka applies
//!   insertions and evictions in batches (its maintenance), so entries past the bound live
//!   until the next batch. The map counts the entries it added since it last ran that
//!   maintenance; `len` and `entries` run it first when those could pass the bound.
//! - In memory, the map holds at most `max_entries` plus a slack of `max(1, max_entries / 64)`
//!   entries (plus, under concurrency, one per caller inserting at that moment): an insert
//!   runs the maintenance only once the entries added since the last one could pass the bound
//!   by more than the slack. A full map thus pays for the maintenance once per slack of new
//!   keys, not on every new key, and callers do not queue behind it on each one. Lookups of
//!   existing keys do none of this.
//! - An evicted key (or a new key that the admission policy did not keep) starts fresh the
//!   next time it is seen. Where fresh state would be a hole (a rate limit per client-chosen
//!   key), validate keys first, for example against the tenant registry.
//! - Idle expiry follows moka's own monotonic clock, not tokio's: paused test time does not
//!   expire entries. It is a memory bound, not a behaviour to rely on.
//!
//! ```
//! use std::{sync::{atomic::{AtomicU32, Ordering}, Arc}, time::Duration};
//! use tower_patterns_core::keyed::KeyedMap;
//!
//! let breakers: KeyedMap<&'static str, Arc<AtomicU32>> = KeyedMap::builder()
//!     .max_entries(10_000)
//!     .idle_timeout(Duration::from_secs(600))
//!     .build()
//!     .unwrap();
//!
//! let a = breakers.get_or_insert_with("host-a", || Arc::new(AtomicU32::new(0)));
//! a.fetch_add(1, Ordering::Relaxed);
//! // The same key gives the same instance.
//! let again = breakers.get_or_insert_with("host-a", || Arc::new(AtomicU32::new(0)));
//! assert_eq!(again.load(Ordering::Relaxed), 1);
//! ```

use std::{
    fmt,
    hash::Hash,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::ConfigError;

pub mod layer;
pub use layer::{CallThrough, Keyed, KeyedHandle, KeyedLayer, MakeFor, PerKey};

/// A bounded map of per-key instances; see the [module docs](self).
pub struct KeyedMap<K, V> {
    cache: moka::sync::Cache<K, V>,
    /// Entries added since this map last ran moka's maintenance: what moka's count may lack.
    /// Shared by clones, as the cache is.
    unsynced: Arc<AtomicU64>,
    max_entries: u64,
    /// How far past the bound inserts may take the map before they run the maintenance.
    slack: u64,
    /// How many times the maintenance ran, shared by clones.
    #[cfg(test)]
    maintenance_runs: Arc<AtomicU64>,
}

impl<K, V> Clone for KeyedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            unsynced: self.unsynced.clone(),
            max_entries: self.max_entries,
            slack: self.slack,
            #[cfg(test)]
            maintenance_runs: self.maintenance_runs.clone(),
        }
    }
}

impl<K, V> fmt::Debug for KeyedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedMap")
            .field("entries", &self.cache.entry_count())
            .field("max_entries", &self.cache.policy().max_capacity())
            .field("idle_timeout", &self.cache.policy().time_to_idle())
            .finish()
    }
}

impl<K, V> KeyedMap<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder with the defaults: 10,000 entries, 10 minutes idle.
    pub fn builder() -> KeyedMapBuilder<K, V> {
        KeyedMapBuilder::default()
    }

    /// The instance for `key`, created by `init` when there is none.
    ///
    /// When several callers miss the same key at once, `init` runs once and all get its value.
    pub fn get_or_insert_with(&self, key: K, init: impl FnOnce() -> V) -> V {
        let mut added = false;
        let value = self.cache.get_with(key, || {
            added = true;
            init()
        });
        if added {
            self.added();
        }
        value
    }

    /// The instance for `key`, if there is one.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.get(key)
    }

    /// The instance for `key` when `keep` accepts it; otherwise (none, or one `keep` rejects)
    /// a new one from `init`, stored in its place.
    ///
    /// Callers racing on one key are served one at a time, so they all end with the same
    /// instance: none of them keeps state in an instance that another has just replaced.
    ///
    /// ```
    /// use tower_patterns_core::keyed::KeyedMap;
    ///
    /// let limits: KeyedMap<&'static str, u32> = KeyedMap::builder().build().unwrap();
    /// assert_eq!(limits.get_or_replace_with("acme", |_| true, || 10), 10);
    /// assert_eq!(limits.get_or_replace_with("acme", |&v| v == 10, || 20), 10);
    /// assert_eq!(limits.get_or_replace_with("acme", |&v| v == 20, || 20), 20);
    /// ```
    pub fn get_or_replace_with(
        &self,
        key: K,
        keep: impl FnOnce(&V) -> bool,
        init: impl FnOnce() -> V,
    ) -> V {
        let entry = self
            .cache
            .entry(key)
            .and_upsert_with(|current| match current {
                Some(entry) if keep(entry.value()) => entry.into_value(),
                _ => init(),
            });
        if entry.is_fresh() && !entry.is_old_value_replaced() {
            self.added();
        }
        entry.into_value()
    }

    /// Inserts or replaces the instance for `key`.
    pub fn insert(&self, key: K, value: V) {
        self.cache.insert(key, value);
        self.added();
    }

    /// One entry was (or may have been) added: once the entries added since the last
    /// maintenance could take the map past its bound by more than the slack, run the
    /// maintenance, which evicts (or refuses) what does not fit.
    fn added(&self) {
        let unsynced = self.unsynced.fetch_add(1, Ordering::AcqRel) + 1;
        if self.cache.entry_count().saturating_add(unsynced)
            > self.max_entries.saturating_add(self.slack)
        {
            self.sync();
        }
    }

    /// Runs the maintenance when the entries added since the last one could take the map
    /// past its bound, so that what is read next is within it.
    fn sync_if_past_bound(&self) {
        let unsynced = self.unsynced.load(Ordering::Acquire);
        if self.cache.entry_count().saturating_add(unsynced) > self.max_entries {
            self.sync();
        }
    }

    /// Removes the instance for `key`.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.invalidate(key);
    }

    /// The number of entries, as of the last maintenance (see [`Self::sync`]); never more
    /// than [`Self::max_entries`]: it runs the maintenance first when the entries added since
    /// could pass the bound.
    pub fn len(&self) -> u64 {
        self.sync_if_past_bound();
        self.cache.entry_count()
    }

    /// Whether the map is empty, as of the last maintenance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the pending maintenance now: evictions and expiries, and the entry count.
    pub fn sync(&self) {
        // Every entry counted until now was added before this swap, so the maintenance below
        // applies it; entries added from now on are counted for the next one.
        self.unsynced.swap(0, Ordering::AcqRel);
        #[cfg(test)]
        self.maintenance_runs.fetch_add(1, Ordering::Relaxed);
        self.cache.run_pending_tasks();
    }

    /// Every key with its instance, for listing per-key state (dashboards, health endpoints);
    /// never more than [`Self::max_entries`]: it runs the maintenance first when the entries
    /// added since the last one could pass the bound. Entries inserted by other threads while
    /// the listing runs may show up too, one per inserting caller at most.
    pub fn entries(&self) -> impl Iterator<Item = (Arc<K>, V)> + '_ {
        self.sync_if_past_bound();
        self.cache.iter()
    }

    /// The bound on the number of entries.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }
}

/// How to shard a `quick_cache` map so that it holds at most `max` weight in all: the
/// number of shards (a power of two: four per core as `quick_cache` chooses, fewer for small
/// bounds, at least 1) and the weight capacity to give it, `max` rounded down to a multiple of
/// the shards.
///
/// `quick_cache` gives each shard the capacity divided by the shards, rounded up, so a bound
/// left to its defaults grows with the machine's cores (1,000 became 1,024 on 8 cores). For
/// this workspace's maps built on it (the cache store, the GCRA limiter's keys, the tenant
/// registry); not part of the public API.
///
/// ```
/// use tower_patterns_core::keyed::sharded_bound;
///
/// let (shards, capacity) = sharded_bound(1_000);
/// assert!(shards.is_power_of_two());
/// assert!(capacity <= 1_000 && capacity % shards as u64 == 0);
/// assert_eq!(sharded_bound(1), (1, 1));
/// ```
#[doc(hidden)]
pub fn sharded_bound(max: u64) -> (usize, u64) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let wanted = cores.saturating_mul(4).next_power_of_two();
    // At least 8 of the bound per shard, so rounding down loses at most an eighth.
    let most = usize::try_from((max / 8).max(1)).unwrap_or(usize::MAX);
    let most = 1usize << (usize::BITS - 1 - most.leading_zeros());
    let shards = wanted.min(most).max(1);
    (shards, (max / shards as u64).max(1) * shards as u64)
}

/// How many keys a keyed layer keeps, and for how long an unused one stays: the one bound of
/// every keyed layer (`.key_bounds(KeyBounds { .. })` on its builder), enforced by [`KeyedMap`].
///
/// ```
/// use std::time::Duration;
/// use tower_patterns_core::keyed::KeyBounds;
///
/// let bounds = KeyBounds { max_keys: 50_000, ..KeyBounds::default() };
/// assert_eq!(bounds.idle, Some(Duration::from_secs(600)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBounds {
    /// The most keys kept at once (default 10,000; at least 1). The least recently useful key
    /// goes first when a new one arrives at the bound.
    pub max_keys: u64,
    /// A key not used for this long is dropped (default 10 minutes); `None` drops keys only
    /// for the bound. A zero duration is refused by `build()`.
    pub idle: Option<Duration>,
}

impl Default for KeyBounds {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            idle: Some(Duration::from_secs(600)),
        }
    }
}

/// Builds a [`KeyedMap`]; `build` validates the settings.
pub struct KeyedMapBuilder<K, V> {
    max_entries: u64,
    idle_timeout: Option<Duration>,
    /// Set through [`bounds`](Self::bounds): errors name `key_bounds`, the setting the user
    /// wrote.
    from_bounds: bool,
    _marker: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Default for KeyedMapBuilder<K, V> {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            idle_timeout: Some(Duration::from_secs(600)),
            from_bounds: false,
            _marker: PhantomData,
        }
    }
}

impl<K, V> Clone for KeyedMapBuilder<K, V> {
    fn clone(&self) -> Self {
        Self {
            max_entries: self.max_entries,
            idle_timeout: self.idle_timeout,
            from_bounds: self.from_bounds,
            _marker: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for KeyedMapBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedMapBuilder")
            .field("max_entries", &self.max_entries)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl<K, V> KeyedMapBuilder<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The most entries the map holds (default 10,000; at least 1).
    #[must_use]
    pub const fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Entries not read or written for this long are dropped (default 10 minutes).
    #[must_use]
    pub const fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Both bounds at once, as keyed layers take them.
    #[must_use]
    pub const fn bounds(mut self, bounds: KeyBounds) -> Self {
        self.max_entries = bounds.max_keys;
        self.idle_timeout = bounds.idle;
        self.from_bounds = true;
        self
    }

    /// Entries are never dropped for being idle; only the bound on entries applies.
    #[must_use]
    pub const fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// Builds the map.
    ///
    /// # Errors
    ///
    /// When `max_entries` is 0 or `idle_timeout` is zero.
    pub fn build(self) -> Result<KeyedMap<K, V>, ConfigError> {
        if self.max_entries == 0 {
            let (field, reason) = if self.from_bounds {
                ("key_bounds", "max_keys must be at least 1")
            } else {
                ("max_entries", "must be at least 1")
            };
            return Err(ConfigError::new(field, reason));
        }
        let mut builder = moka::sync::Cache::builder().max_capacity(self.max_entries);
        if let Some(idle) = self.idle_timeout {
            if idle.is_zero() {
                let field = if self.from_bounds {
                    "key_bounds"
                } else {
                    "idle_timeout"
                };
                return Err(ConfigError::new(
                    field,
                    "the idle time must be greater than zero",
                ));
            }
            builder = builder.time_to_idle(idle);
        }
        Ok(KeyedMap {
            cache: builder.build(),
            unsynced: Arc::new(AtomicU64::new(0)),
            max_entries: self.max_entries,
            slack: (self.max_entries / 64).max(1),
            #[cfg(test)]
            maintenance_runs: Arc::new(AtomicU64::new(0)),
        })
    }
}

#[cfg(test)]
mod tests;
