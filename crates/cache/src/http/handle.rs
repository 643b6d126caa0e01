//! The handle on an HTTP cache: its counts, purges, and its report and metrics.

use std::{fmt, sync::Arc};

use tower_patterns_core::{
    observe::{Health, Report, StateHandle},
    tenant::TenantId,
};

use super::layer::HttpShared;
use crate::{internal::Count, metrics::export_counts, store::Store};

/// A handle on an [`HttpCacheLayer`](super::HttpCacheLayer): counts, purges, and a
/// [`StateHandle`] report (pattern `"cache"`). Cheap to clone; from
/// [`HttpCacheLayer::handle`](super::HttpCacheLayer::handle) or
/// [`HttpCache::handle`](super::HttpCache::handle).
#[derive(Clone)]
pub struct HttpCacheHandle {
    pub(crate) shared: Arc<HttpShared>,
}

impl fmt::Debug for HttpCacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// What an [`HttpCacheLayer`](super::HttpCacheLayer) has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpCacheStats {
    /// Fresh stored responses served (304s to conditional requests included).
    pub hits: u64,
    /// Requests that went to the origin for want of a usable stored response.
    pub misses: u64,
    /// Stale responses served (stale-while-revalidate and stale-if-error).
    pub stale: u64,
    /// Requests that waited for another request's origin response.
    pub coalesced: u64,
    /// Stored responses revalidated with the origin (answered 304).
    pub revalidated: u64,
    /// Requests not eligible for caching (methods, `no-store`, `Authorization`).
    pub bypassed: u64,
}

impl HttpCacheHandle {
    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Hits, misses and stale answers so far.
    pub fn stats(&self) -> HttpCacheStats {
        let c = &self.shared.counters;
        HttpCacheStats {
            hits: c.get(Count::Hit),
            misses: c.get(Count::Miss),
            stale: c.get(Count::Stale) + c.get(Count::StaleIfError),
            coalesced: c.get(Count::Coalesced),
            revalidated: c.get(Count::Refresh),
            bypassed: c.get(Count::Bypass),
        }
    }

    /// Origin requests in flight now: one per URL whose misses share it. A request leaves
    /// this count when it completes, or when every request waiting for it is dropped first.
    pub fn loads_in_flight(&self) -> usize {
        self.shared.flights.in_flight()
    }

    /// Drops every stored variant of `host` + `path_and_query` in `tenant`'s scope.
    pub fn purge(&self, tenant: Option<&TenantId>, host: &str, path_and_query: &str) {
        self.shared.purge(tenant, host, path_and_query);
    }
}

impl StateHandle for HttpCacheHandle {
    fn pattern(&self) -> &'static str {
        "cache"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Always ready (an in-process store); the report also publishes the counts as metrics
    /// (see the [module docs](super#metrics)).
    fn report(&self) -> Report {
        let s = self.stats();
        let store = self.shared.store.stats();
        let c = &self.shared.counters;
        export_counts(
            &self.shared.name,
            &[
                ("tower_patterns_cache_hits_total", s.hits),
                ("tower_patterns_cache_misses_total", s.misses),
                ("tower_patterns_cache_stale_total", s.stale),
                ("tower_patterns_cache_coalesced_total", s.coalesced),
                ("tower_patterns_cache_refreshes_total", s.revalidated),
                ("tower_patterns_cache_bypassed_total", s.bypassed),
                ("tower_patterns_cache_evictions_total", store.evictions),
            ],
            &[
                ("tower_patterns_cache_entries", store.entries),
                (
                    "tower_patterns_cache_loads_in_flight",
                    self.loads_in_flight() as u64,
                ),
            ],
        );
        let lookups = s.hits + s.stale + s.misses + s.coalesced;
        Report::new("cache", self.shared.name.to_string(), Health::Ready, "ok")
            .with_value("hits", s.hits as f64)
            .with_value("misses", s.misses as f64)
            .with_value("stale", s.stale as f64)
            .with_value("stale_if_error", c.get(Count::StaleIfError) as f64)
            .with_value("coalesced", s.coalesced as f64)
            .with_value("revalidated", s.revalidated as f64)
            .with_value("bypassed", s.bypassed as f64)
            .with_value("evictions", store.evictions as f64)
            .with_value("entries", store.entries as f64)
            .with_value(
                "hit_ratio",
                if lookups == 0 {
                    0.0
                } else {
                    (s.hits + s.stale) as f64 / lookups as f64
                },
            )
    }
}
