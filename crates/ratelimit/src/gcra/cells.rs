//! Where a GCRA limiter keeps its keys' cells.
//!
//! Without an idle timeout (the default) the cells live in a `quick_cache` map: S3-FIFO
//! eviction (a flood of keys seen once passes through its small queue and leaves the keys in
//! use alone; keys seen twice enter the main queue, so a flood of repeated invented keys can
//! push out a key that is not being used, which is why limits should key on validated
//! identities), a read lock per check, no read log and no clock. The bound is exact: the map
//! is sharded with an equal part of `max_keys` per shard, rounded down.
//! With an idle timeout they live in core's [`KeyedMap`] (moka), whose time-to-idle
//! expiry forgets a key nobody used for that long. The first is about ten times faster per
//! lookup on the reference machine (`benches/cache.rs`: 13 ns against 124 ns), which is most of
//! what a check costs.

use std::{borrow::Borrow, hash::Hash, sync::Arc};

use quick_cache::{
    DefaultHashBuilder, OptionsBuilder, UnitWeighter,
    sync::{Cache, DefaultLifecycle, EntryAction, EntryResult},
};
use tower_patterns_core::{
    ConfigError,
    keyed::{KeyBounds, KeyedMap, sharded_bound},
};

use crate::handle::Source;

pub(super) enum Cells<K, V> {
    /// Bounded by count only.
    Bounded(Arc<Bounded<K, V>>),
    /// Bounded by count, and idle keys forgotten.
    Idle(KeyedMap<K, V>),
}

pub(super) struct Bounded<K, V> {
    map: Cache<K, V, UnitWeighter, DefaultHashBuilder, DefaultLifecycle<K, V>>,
    max: u64,
}

impl<K, V> Clone for Cells<K, V> {
    fn clone(&self) -> Self {
        match self {
            Self::Bounded(b) => Self::Bounded(b.clone()),
            Self::Idle(m) => Self::Idle(m.clone()),
        }
    }
}

impl<K, V> Cells<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new(
        max_keys: u64,
        idle: Option<std::time::Duration>,
    ) -> Result<Self, ConfigError> {
        if let Some(idle) = idle {
            return KeyedMap::builder()
                .bounds(KeyBounds {
                    max_keys,
                    idle: Some(idle),
                })
                .build()
                .map(Self::Idle);
        }
        if max_keys == 0 {
            return Err(ConfigError::new(
                "key_bounds",
                "max_keys must be at least 1",
            ));
        }
        let capacity = usize::try_from(max_keys).unwrap_or(usize::MAX);
        let (shards, weight) = sharded_bound(max_keys);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity.min(1 << 16))
            .weight_capacity(weight)
            .build()
            .map_err(|_| ConfigError::new("key_bounds", "max_keys is out of range"))?;
        Ok(Self::Bounded(Arc::new(Bounded {
            map: Cache::with_options(
                options,
                UnitWeighter,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            max: max_keys,
        })))
    }

    #[inline]
    pub(super) fn get(&self, key: &K) -> Option<V> {
        match self {
            Self::Bounded(b) => b.map.get(key),
            Self::Idle(m) => m.get(key),
        }
    }

    /// The value of `key` if `keep` accepts it, else (or if there is none) `init()`'s, stored;
    /// atomic per key: two callers never both replace.
    pub(super) fn get_or_replace_with(
        &self,
        key: K,
        keep: impl FnOnce(&V) -> bool,
        init: impl FnOnce() -> V,
    ) -> V {
        match self {
            Self::Idle(m) => m.get_or_replace_with(key, keep, init),
            Self::Bounded(b) => {
                let found = b.map.entry(&key, None, |_, v| {
                    if keep(v) {
                        EntryAction::Retain(v.clone())
                    } else {
                        EntryAction::ReplaceWithGuard
                    }
                });
                match found {
                    EntryResult::Retained(v) => v,
                    EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                        let v = init();
                        let _ = guard.insert(v.clone());
                        v
                    }
                    // Neither is asked for: no removal, no timeout.
                    EntryResult::Removed(..) | EntryResult::Timeout => init(),
                }
            }
        }
    }

    pub(super) fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            Self::Bounded(b) => {
                b.map.remove(key);
            }
            Self::Idle(m) => m.remove(key),
        }
    }

    pub(super) fn len(&self) -> u64 {
        match self {
            Self::Bounded(b) => b.map.len() as u64,
            Self::Idle(m) => {
                m.sync();
                m.len()
            }
        }
    }

    pub(super) fn source(&self) -> Arc<dyn Source> {
        match self {
            Self::Bounded(b) => b.clone(),
            Self::Idle(m) => Arc::new(m.clone()),
        }
    }
}

impl<K, V> Source for Bounded<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn keys(&self) -> Option<(u64, u64)> {
        Some((self.map.len() as u64, self.max))
    }
}
