//! Cache-aside and write-through for tower services, and the caches of the CQRS read
//! side.
//!
//! - [`CacheLayer`]: **cache-aside** in front of any service whose response is `Clone`. Keys are
//!   scoped by tenant ([`ScopedKey`]), so one tenant never reads another's entry. Hits are
//!   answered from the local tier with no allocation (and, on `MokaStore`, no lock; on
//!   `QuickCacheStore` one uncontended shard read lock). Misses of one key make one
//!   inner call however many callers wait (**single flight**), and the load goes on when the
//!   caller that started it is dropped. TTL jitter, **XFetch** early refresh,
//!   **stale-while-revalidate**, **stale-if-error** (an open breaker counts), **negative
//!   caching**.
//! - [`WriteThroughLayer`]: writes go to the source of record, then update or invalidate the
//!   cache; a failed write leaves the cache untouched; a failed cache update invalidates.
//!   [`WriteBehind`]: writes land in the cache at once and reach the source in coalesced
//!   batches from a bounded queue.
//! - [`store`]: in process, [`QuickCacheStore`](store::QuickCacheStore) (the fastest hit: S3-FIFO,
//!   sharded) or [`MokaStore`](store::MokaStore) (TinyLFU admission), both with per-entry TTLs
//!   and a weigher;
//!   with the `redis` feature a shared Redis store and a two-tier store whose invalidations
//!   reach every instance's L1.
//! - [`http`]: an RFC 9111 cache for GET and HEAD (`Cache-Control`, `Vary`, `ETag` and
//!   `Last-Modified` revalidation, `Age`, `x-cache`).
//! - [`CacheHandle`]: hits, misses, stale served, coalesced waits, evictions, hit ratio;
//!   invalidation by key, prefix, tag or all.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_cache::{store::QuickCacheStore, CacheLayer};
//! use tower_patterns_core::{key::key_fn, KeyError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = CacheLayer::builder("users")
//!     .store(QuickCacheStore::<u64, String>::builder().build())
//!     .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
//!     .unscoped()
//!     .ttl(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! let db = service_fn(|id: u64| async move { Ok::<_, Infallible>(format!("user {id}")) });
//! let users = layer.layer(db);
//!
//! assert_eq!(users.clone().oneshot(7).await.unwrap(), "user 7"); // miss: loads
//! assert_eq!(users.clone().oneshot(7).await.unwrap(), "user 7"); // hit
//! let stats = layer.handle().stats();
//! assert_eq!((stats.hits, stats.misses), (1, 1));
//! # }
//! ```

pub mod aside;
mod entry;
pub mod http;
mod internal;
mod key;
mod metrics;
pub mod store;
pub mod write;

pub use aside::{Cache, CacheBuilder, CacheHandle, CacheLayer, CacheStats, NoKey, NoStore};
pub use entry::{Entry, Freshness};
pub use internal::LoadError;
pub use key::{FromExtensions, Scope, ScopeFn, ScopedKey, Unscoped};
pub use write::{
    BatchWriter, WriteBehind, WriteBehindBuilder, WriteBehindClosed, WriteBehindHandle,
    WriteBehindParts, WriteThrough, WriteThroughBuilder, WriteThroughLayer, WriteThroughMode,
};
