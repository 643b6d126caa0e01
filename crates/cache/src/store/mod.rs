//! Where entries live: one [`Store`] trait, two in-process stores ([`QuickCacheStore`], the
//! fastest, and [`MokaStore`], with TinyLFU admission), and with
//! the `redis` feature a shared Redis store and a two-tier store (moka L1 in front of Redis L2,
//! with invalidations broadcast to every instance's L1).
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower_patterns_cache::{store::{MokaStore, Store}, Entry, ScopedKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MokaStore::<u64, String>::builder().max_entries(10_000).build();
//! let key = ScopedKey::new(None, 7);
//! let entry = Entry::new("seven".to_string(), Instant::now(), Duration::from_secs(60), Duration::ZERO);
//! store.put(key.clone(), entry).await.unwrap();
//! assert_eq!(store.peek(&key).unwrap().value(), "seven");
//! store.invalidate(&key).await.unwrap();
//! assert!(store.peek(&key).is_none());
//! # }
//! ```

mod moka_store;
mod quick_store;
#[cfg(feature = "redis")]
pub mod redis;

use std::{error::Error, fmt, future::Future, hash::Hash};

use tower_patterns_core::{BoxError, observe::Health, tenant::TenantId};

use crate::{Entry, ScopedKey};

pub use moka_store::{MokaStore, MokaStoreBuilder};
pub use quick_store::{QuickCacheStore, QuickCacheStoreBuilder};

/// What a cache key must be: cheap to clone, hashable, and printable (for Redis keys and
/// prefix invalidation). Implemented for every type that qualifies.
pub trait CacheKey: Clone + Eq + Hash + fmt::Display + fmt::Debug + Send + Sync + 'static {}

impl<T: Clone + Eq + Hash + fmt::Display + fmt::Debug + Send + Sync + 'static> CacheKey for T {}

/// A place to keep entries.
///
/// [`peek`](Store::peek) is the synchronous lookup of the process-local tier, the cache's hit
/// path; the `async` methods reach every tier. A store whose [`is_local`](Store::is_local) is
/// true has no other tier, so a miss in `peek` is final.
pub trait Store<K, V>: Send + Sync + 'static
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// The local tier's entry for `key`, if any. Must not block.
    fn peek(&self, key: &ScopedKey<K>) -> Option<Entry<V>>;

    /// Whether [`peek`](Store::peek) sees every entry (no remote tier).
    fn is_local(&self) -> bool {
        true
    }

    /// The entry for `key` from any tier.
    fn get(
        &self,
        key: &ScopedKey<K>,
    ) -> impl Future<Output = Result<Option<Entry<V>>, StoreError>> + Send {
        std::future::ready(Ok(self.peek(key)))
    }

    /// Stores `entry` under `key` in every tier.
    fn put(
        &self,
        key: ScopedKey<K>,
        entry: Entry<V>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes `key` from every tier (and, for shared tiers, from other instances' local tiers).
    fn invalidate(&self, key: &ScopedKey<K>)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes every key of `tenant`'s scope whose text starts with `prefix`.
    fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes every entry tagged `tag`.
    fn invalidate_tag(&self, tag: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes everything.
    fn invalidate_all(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Entries in the local tier (approximate) and evictions so far.
    fn stats(&self) -> StoreStats;

    /// Whether every tier answers.
    fn health(&self) -> Health {
        Health::Ready
    }

    /// Registers `hook`, called when another instance invalidates (or writes) keys of a shared
    /// tier. The cache layer registers one, so that its loads in flight do not store values
    /// older than another instance's write. Stores with no shared tier ignore it.
    fn on_remote_invalidation(&self, hook: InvalidationHook<K>) {
        let _ = hook;
    }
}

/// What another instance invalidated, as a [`Store`] reports it to its
/// [hooks](Store::on_remote_invalidation).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteInvalidation<K> {
    /// One key (written or invalidated).
    Key(ScopedKey<K>),
    /// Many keys at once (a prefix, a tag, everything, or messages possibly missed while the
    /// subscription was down).
    Bulk,
}

/// A hook for [`RemoteInvalidation`]s.
pub type InvalidationHook<K> = std::sync::Arc<dyn Fn(&RemoteInvalidation<K>) + Send + Sync>;

/// Counts a store reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Entries in the local tier (approximate: moka counts lazily).
    pub entries: u64,
    /// Entries evicted for room or expired (not invalidated); counted only where the store
    /// was asked to ([`MokaStoreBuilder::count_evictions`]).
    pub evictions: u64,
}

/// A store operation failed.
#[derive(Debug)]
pub struct StoreError {
    store: &'static str,
    op: &'static str,
    source: BoxError,
}

impl StoreError {
    /// `op` on `store` failed because of `source`.
    pub fn new(store: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            store,
            op,
            source: source.into(),
        }
    }

    /// The store (`"redis"`, ...).
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// The operation (`"get"`, `"put"`, ...).
    pub fn op(&self) -> &'static str {
        self.op
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cache store: {} failed", self.store, self.op)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Checks every in-process store keeps to: invalidation by prefix, tag, key and everything
/// spares what it should.
#[cfg(test)]
pub(crate) async fn check_invalidation_spares_other_scopes(store: impl Store<String, String>) {
    use std::time::Duration;

    let entry = |v: &str| {
        Entry::new(
            v.to_owned(),
            tokio::time::Instant::now(),
            Duration::from_secs(60),
            Duration::ZERO,
        )
    };
    let a = TenantId::new("a").unwrap();
    let b = TenantId::new("b").unwrap();
    let ka = ScopedKey::new(Some(a.clone()), "user/1".to_owned());
    let ka2 = ScopedKey::new(Some(a.clone()), "order/1".to_owned());
    let kb = ScopedKey::new(Some(b.clone()), "user/1".to_owned());
    let kt = ScopedKey::new(None, "product/9".to_owned());
    store.put(ka.clone(), entry("a1")).await.unwrap();
    store.put(ka2.clone(), entry("a2")).await.unwrap();
    store.put(kb.clone(), entry("b1")).await.unwrap();
    store
        .put(kt.clone(), entry("p9").with_tags(vec!["catalog".into()]))
        .await
        .unwrap();
    store.invalidate_prefix(Some(&a), "user/").await.unwrap();
    assert!(store.peek(&ka).is_none());
    assert_eq!(store.peek(&ka2).unwrap().value(), "a2");
    assert_eq!(store.peek(&kb).unwrap().value(), "b1");
    store.invalidate_tag("nothing").await.unwrap();
    assert!(store.peek(&kt).is_some());
    store.invalidate_tag("catalog").await.unwrap();
    assert!(store.peek(&kt).is_none());
    assert_eq!(store.peek(&kb).unwrap().value(), "b1");
    store.invalidate(&kb).await.unwrap();
    assert!(store.peek(&kb).is_none());
    assert_eq!(store.stats().entries, 1);
    store.invalidate_all().await.unwrap();
    assert_eq!(store.stats().entries, 0);
}
