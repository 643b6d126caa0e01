//! The registry's caches: a bounded map whose entries expire a fixed time after they were
//! stored.
//!
//! A `quick_cache` map (S3-FIFO, sharded, one read lock per lookup) with the deadline kept
//! beside each value and checked on Tokio's clock, so paused test time expires entries. moka's
//! `time_to_live` did the same job at about six times the instructions per lookup (its read
//! log, its own clock and SipHash; `scripts/bench-callgrind tenant`), on every request the
//! tenant layer admits.

use std::{hash::Hash, sync::Arc, time::Duration};

use quick_cache::{
    DefaultHashBuilder, Equivalent, OptionsBuilder, UnitWeighter,
    sync::{Cache, DefaultLifecycle},
};
use tokio::time::Instant;
use tower_patterns_core::keyed::sharded_bound;

/// A bounded map of values that live `ttl` each. Cloning shares it.
pub(crate) struct TtlMap<K, V> {
    map: Arc<Cache<K, (V, Instant)>>,
    ttl: Duration,
}

impl<K, V> Clone for TtlMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            ttl: self.ttl,
        }
    }
}

impl<K, V> TtlMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// At most `max` entries, each served for `ttl` after it was stored.
    pub(crate) fn new(ttl: Duration, max: u64) -> Self {
        let (shards, weight) = sharded_bound(max.max(1));
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(usize::try_from(weight).unwrap_or(usize::MAX).min(1 << 16))
            .weight_capacity(weight)
            .build()
            .expect("both capacities are set");
        Self {
            map: Arc::new(Cache::with_options(
                options,
                UnitWeighter,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            )),
            ttl,
        }
    }

    /// The live value of `key`; an expired one is removed.
    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let (value, until) = self.map.get(key)?;
        if Instant::now() < until {
            return Some(value);
        }
        self.map.remove_if(key, |(_, stored)| *stored == until);
        None
    }

    /// Stores `value` under `key` for the map's time to live.
    pub(crate) fn insert(&self, key: K, value: V) {
        // A time to live too long for the clock (`Duration::MAX` for "never") lasts a century.
        let now = Instant::now();
        let until = now
            .checked_add(self.ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.map.insert(key, (value, until));
    }

    /// Entries held, expired ones not yet removed included (cheap, for `Debug`).
    pub(crate) fn held(&self) -> u64 {
        self.map.len() as u64
    }

    /// Removes `key`.
    pub(crate) fn invalidate<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.remove(key);
    }

    /// Removes every entry.
    pub(crate) fn invalidate_all(&self) {
        self.map.clear();
    }

    /// The live entries (reports only: it walks the map and clones each entry).
    pub(crate) fn live(&self) -> u64 {
        let now = Instant::now();
        self.map
            .iter()
            .filter(|(_, (_, until))| now < *until)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl_on_tokio_time() {
        let map = TtlMap::new(Duration::from_secs(10), 100);
        map.insert("a".to_owned(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        map.insert("b".to_owned(), 2);
        assert_eq!(map.get("a"), Some(1));
        assert_eq!(map.live(), 2);
        assert_eq!(map.held(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(map.get("a"), None, "expired at exactly its ttl");
        assert_eq!(map.get("b"), Some(2));
        assert_eq!(map.live(), 1);
        map.invalidate("b");
        assert_eq!(map.get("b"), None);
        map.insert("c".to_owned(), 3);
        map.invalidate_all();
        assert_eq!(map.live(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_is_removed_when_read_and_a_newer_one_is_kept() {
        let map = TtlMap::new(Duration::from_secs(10), 100);
        map.insert("a".to_owned(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(map.live(), 0, "not live at exactly its ttl");
        assert_eq!(map.get("a"), None);
        assert_eq!(map.map.len(), 0, "the expired entry left the map");
        map.insert("a".to_owned(), 2);
        assert_eq!(map.get("a"), Some(2));
        assert_eq!(map.map.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ttl_too_long_for_the_clock_lasts_instead_of_panicking() {
        let map = TtlMap::new(Duration::MAX, 10);
        map.insert(1u32, 1);
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert_eq!(map.get(&1), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_holds() {
        let map = TtlMap::new(Duration::from_secs(10), 100);
        for i in 0..10_000u32 {
            map.insert(i, i);
        }
        assert!(map.live() <= 100, "{}", map.live());
    }
}
