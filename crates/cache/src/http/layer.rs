//! The HTTP cache's layer, its builder and the state its services share.

use std::{fmt, sync::Arc, time::Duration};

use http::HeaderMap;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_patterns_core::{ConfigError, tenant::TenantId};

use super::{
    HttpCache, HttpCacheHandle, HttpCacheStats,
    origin::Fetched,
    storable::Limits,
    stored::{MAX_VARIANTS, Stored, Variants},
};
use crate::{
    Entry, ScopedKey,
    internal::{Counters, Flights},
    store::{MokaStore, Store},
};

/// An RFC 9111 cache for GET and HEAD; see the [module docs](super).
#[derive(Clone)]
pub struct HttpCacheLayer {
    pub(crate) shared: Arc<HttpShared>,
}

/// The state every service of one [`HttpCacheLayer`] shares.
pub(crate) struct HttpShared {
    pub(crate) name: Arc<str>,
    pub(crate) store: MokaStore<String, Variants>,
    pub(crate) counters: Counters,
    pub(crate) limits: Limits,
    /// Origin requests in flight, one per URL: the cache-aside layer's single flight.
    pub(crate) flights: Flights<String, Fetched>,
}

impl fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("name", &self.shared.name)
            .field("max_body", &self.shared.limits.max_body)
            .field("default_ttl", &self.shared.limits.default_ttl)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpCacheLayer`].
#[derive(Debug, Clone)]
pub struct HttpCacheBuilder {
    name: Arc<str>,
    max_entries: u64,
    max_bytes: Option<u64>,
    max_body: usize,
    default_ttl: Option<Duration>,
}

impl HttpCacheLayer {
    /// A builder for a cache named `name` (reports, metrics): 10,000 URLs, bodies up to 1 MiB,
    /// no heuristic freshness.
    pub fn builder(name: impl Into<Arc<str>>) -> HttpCacheBuilder {
        HttpCacheBuilder {
            name: name.into(),
            max_entries: 10_000,
            max_bytes: None,
            max_body: 1 << 20,
            default_ttl: None,
        }
    }

    /// A handle on the cache: counts, purges, its report.
    pub fn handle(&self) -> HttpCacheHandle {
        HttpCacheHandle {
            shared: self.shared.clone(),
        }
    }

    /// Hits, misses and stale answers so far (as [`HttpCacheHandle::stats`]).
    pub fn stats(&self) -> HttpCacheStats {
        self.handle().stats()
    }

    /// Origin requests in flight now (as [`HttpCacheHandle::loads_in_flight`]).
    pub fn loads_in_flight(&self) -> usize {
        self.handle().loads_in_flight()
    }

    /// Drops every stored variant of `host` + `path_and_query` in `tenant`'s scope (as
    /// [`HttpCacheHandle::purge`]).
    pub fn purge(&self, tenant: Option<&TenantId>, host: &str, path_and_query: &str) {
        self.handle().purge(tenant, host, path_and_query);
    }
}

impl HttpCacheBuilder {
    /// The most URLs stored (default 10,000).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bounds the store by total body bytes instead of URLs.
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// The largest body stored (default 1 MiB); larger responses stream through.
    #[must_use]
    pub fn max_body(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }

    /// Freshness for responses that give none, with a cacheable status (RFC 9111 §4.2.2
    /// heuristic freshness; default none: such responses are not stored).
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// An empty name, a zero bound or a zero default TTL.
    pub fn build(self) -> Result<HttpCacheLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.max_entries == 0 || self.max_bytes == Some(0) {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        if self.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("default_ttl", "must be more than zero"));
        }
        let store = match self.max_bytes {
            Some(bytes) => MokaStore::builder()
                .max_entries(bytes)
                .weigher(|k: &String, v: &Variants| {
                    let body: usize = v.iter().map(|e| e.value().body.len() + 256).sum();
                    u32::try_from(body + k.len()).unwrap_or(u32::MAX)
                })
                .build(),
            None => MokaStore::builder().max_entries(self.max_entries).build(),
        };
        Ok(HttpCacheLayer {
            shared: Arc::new(HttpShared {
                name: self.name,
                store,
                counters: Counters::new(),
                limits: Limits {
                    max_body: self.max_body,
                    default_ttl: self.default_ttl,
                },
                flights: Flights::new(),
            }),
        })
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl HttpShared {
    /// The stored variant of `key` that the request headers `req` match.
    pub(crate) fn lookup(
        &self,
        key: &ScopedKey<String>,
        req: &HeaderMap,
    ) -> Option<Arc<Entry<Stored>>> {
        let variants = self.store.peek(key)?;
        variants
            .value()
            .iter()
            .find(|e| e.value().matches(req))
            .cloned()
    }

    /// Stores `entry` as the newest variant of `key`, replacing one chosen by the same request
    /// headers.
    pub(crate) fn insert(&self, key: &ScopedKey<String>, entry: Arc<Entry<Stored>>) {
        let mut variants: Vec<_> = self
            .store
            .peek(key)
            .map(|v| v.value().as_ref().clone())
            .unwrap_or_default();
        variants.retain(|e| e.value().vary != entry.value().vary);
        variants.insert(0, entry);
        variants.truncate(MAX_VARIANTS);
        let now = Instant::now();
        let longest = variants
            .iter()
            .map(|e| e.lifetime(now))
            .max()
            .unwrap_or_default();
        let holder = Entry::new(Arc::new(variants), now, longest, Duration::ZERO);
        self.store.insert(key.clone(), holder);
    }

    pub(crate) fn purge(&self, tenant: Option<&TenantId>, host: &str, path_and_query: &str) {
        self.store.evict(&ScopedKey::new(
            tenant.cloned(),
            format!("{host}{path_and_query}"),
        ));
    }
}
