//! The handle on a cache-aside layer: counts, invalidation, direct reads and writes, its
//! report and metrics.

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;
use tower_patterns_core::{
    observe::{Health, Report, StateHandle},
    tenant::TenantId,
};

use super::shared::Shared;
use crate::{
    Entry, ScopedKey,
    internal::Count,
    metrics::export_counts,
    store::{CacheKey, Store, StoreError},
};

/// A handle on a cache: statistics, invalidation, direct reads and writes, and a
/// [`StateHandle`] report (pattern `"cache"`). Cheap to clone; from
/// [`CacheLayer::handle`](super::CacheLayer::handle) or [`Cache::handle`](super::Cache::handle).
pub struct CacheHandle<K, V, St> {
    pub(crate) shared: Arc<Shared<K, V, St>>,
}

impl<K, V, St> Clone for CacheHandle<K, V, St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, V, St> fmt::Debug for CacheHandle<K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// What a cache has counted since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh values served.
    pub hits: u64,
    /// Loads started for a missing or expired key.
    pub misses: u64,
    /// Stale values served while a reload ran (stale-while-revalidate).
    pub stale: u64,
    /// Stale values served because the load failed (stale-if-error).
    pub stale_if_error: u64,
    /// Callers that waited on another caller's load instead of loading.
    pub coalesced: u64,
    /// Background reloads started (stale-while-revalidate and early refresh).
    pub refreshes: u64,
    /// Loads that failed.
    pub load_errors: u64,
    /// Store operations that failed (the request was answered without the store).
    pub store_errors: u64,
    /// Requests passed through uncached (no key, or no tenant where one is required).
    pub bypassed: u64,
    /// Entries evicted by the store for room or age.
    pub evictions: u64,
    /// Entries in the local tier (approximate).
    pub entries: u64,
}

impl CacheStats {
    /// Hits (fresh and stale) over all lookups that hit or missed; 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hits + self.stale;
        let total = served + self.misses + self.coalesced;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> CacheHandle<K, V, St> {
    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The counts so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let store = self.shared.store.stats();
        CacheStats {
            hits: c.get(Count::Hit),
            misses: c.get(Count::Miss),
            stale: c.get(Count::Stale),
            stale_if_error: c.get(Count::StaleIfError),
            coalesced: c.get(Count::Coalesced),
            refreshes: c.get(Count::Refresh),
            load_errors: c.get(Count::LoadError),
            store_errors: c.get(Count::StoreError),
            bypassed: c.get(Count::Bypass),
            evictions: store.evictions,
            entries: store.entries,
        }
    }

    /// Loads in flight now.
    pub fn loads_in_flight(&self) -> usize {
        self.shared.flights.in_flight()
    }

    /// The fresh or stale entry for `key` in the local tier, if any.
    pub fn peek(&self, tenant: Option<&TenantId>, key: K) -> Option<Entry<V>> {
        self.shared
            .store
            .peek(&ScopedKey::new(tenant.cloned(), key))
    }

    /// Invalidates `key` in `tenant`'s scope: every tier drops it, and no load already in
    /// flight stores its old value.
    ///
    /// # Errors
    ///
    /// When a tier fails; the local tier has dropped the entry all the same.
    pub async fn invalidate(&self, tenant: Option<&TenantId>, key: K) -> Result<(), StoreError> {
        self.shared
            .invalidate(&ScopedKey::new(tenant.cloned(), key))
            .await
    }

    /// Invalidates every key of `tenant`'s scope whose text starts with `prefix`.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_prefix(tenant, prefix).await
    }

    /// Invalidates every entry tagged `tag`.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_tag(tag).await
    }

    /// Invalidates everything.
    ///
    /// # Errors
    ///
    /// When a tier fails.
    pub async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.shared.forget_all();
        self.shared.store.invalidate_all().await
    }

    /// Stores `value` for `key` now (what a write-through does after the source accepted the
    /// write): no load in flight overwrites it with an older value. If the store fails, the
    /// key is invalidated instead, so no stale value stays behind.
    ///
    /// # Errors
    ///
    /// When storing failed; the error of the invalidation, if that failed too.
    pub async fn put(&self, tenant: Option<&TenantId>, key: K, value: V) -> Result<(), StoreError> {
        let key = ScopedKey::new(tenant.cloned(), key);
        self.shared.epochs.mark(&key);
        self.shared.flights.forget(&key);
        let Some(entry) = self
            .shared
            .entry_for(key.key(), &value, Instant::now(), Duration::ZERO)
        else {
            return self.shared.store.invalidate(&key).await;
        };
        match self.shared.store.put(key.clone(), entry).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.store_failed(&e);
                self.shared.store.invalidate(&key).await?;
                Err(e)
            }
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> StateHandle
    for CacheHandle<K, V, St>
{
    fn pattern(&self) -> &'static str {
        "cache"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store's health; the report also publishes the counts as metrics (see the
    /// [module docs](super#metrics)).
    fn report(&self) -> Report {
        let s = self.stats();
        export_counts(
            &self.shared.name,
            &[
                ("tower_patterns_cache_hits_total", s.hits),
                ("tower_patterns_cache_misses_total", s.misses),
                (
                    "tower_patterns_cache_stale_total",
                    s.stale + s.stale_if_error,
                ),
                ("tower_patterns_cache_coalesced_total", s.coalesced),
                ("tower_patterns_cache_refreshes_total", s.refreshes),
                ("tower_patterns_cache_load_errors_total", s.load_errors),
                ("tower_patterns_cache_store_errors_total", s.store_errors),
                ("tower_patterns_cache_bypassed_total", s.bypassed),
                ("tower_patterns_cache_evictions_total", s.evictions),
            ],
            &[
                ("tower_patterns_cache_entries", s.entries),
                (
                    "tower_patterns_cache_loads_in_flight",
                    self.loads_in_flight() as u64,
                ),
            ],
        );
        let health = self.shared.store.health();
        Report::new(
            "cache",
            self.shared.name.to_string(),
            health,
            match health {
                Health::Ready => "ok",
                Health::Degraded => "degraded",
                Health::Unavailable => "unavailable",
            },
        )
        .with_value("hits", s.hits as f64)
        .with_value("misses", s.misses as f64)
        .with_value("stale", (s.stale + s.stale_if_error) as f64)
        .with_value("coalesced", s.coalesced as f64)
        .with_value("evictions", s.evictions as f64)
        .with_value("entries", s.entries as f64)
        .with_value("hit_ratio", s.hit_ratio())
    }
}
