//! Middleware that caches an inner service's responses by key (cache-aside): look up, on a
//! miss load through the inner service once per key, store, answer.
//!
//! [`CacheLayer::builder`]`(name)`, then [`store`](CacheBuilder::store) and
//! [`key`](CacheBuilder::key) (both required), then settings, then `build()`. The
//! [`CacheHandle`] (from [`CacheLayer::handle`] or [`Cache::handle`]) reads the counts,
//! invalidates, and reports as a [`StateHandle`](tower_patterns_core::observe::StateHandle)
//! (pattern `"cache"`).
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_cache::{store::MokaStore, CacheLayer};
//! use tower_patterns_core::{key::key_fn, KeyError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let db = service_fn(|id: u64| async move { Ok::<_, Infallible>(format!("user {id}")) });
//! // The defaults: TTL 60 s with 10% jitter, no stale serving.
//! let plain = CacheLayer::builder("users")
//!     .store(MokaStore::<u64, String>::builder().build())
//!     .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
//!     .unscoped()
//!     .build()
//!     .unwrap();
//! assert_eq!(plain.layer(db.clone()).oneshot(7).await.unwrap(), "user 7");
//! // Customised: stale answers while reloading, and for 5 minutes if the source fails.
//! let tolerant = CacheLayer::builder("users-tolerant")
//!     .store(MokaStore::<u64, String>::builder().max_entries(1_000).build())
//!     .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
//!     .unscoped()
//!     .ttl(Duration::from_secs(30))
//!     .stale_while_revalidate(Duration::from_secs(10))
//!     .stale_if_error(Duration::from_secs(300))
//!     .build()
//!     .unwrap();
//! assert_eq!(tolerant.layer(db).oneshot(8).await.unwrap(), "user 8");
//! # }
//! ```
//!
//! # Metrics
//!
//! Published when the handle reports ([`StateHandle::report`](tower_patterns_core::observe::StateHandle::report)
//! on [`CacheHandle`]), from the counts the cache keeps anyway, so that a hit pays nothing
//! for them; label `name`:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `tower_patterns_cache_hits_total` | counter | fresh values served |
//! | `tower_patterns_cache_misses_total` | counter | loads started for a missing or expired key |
//! | `tower_patterns_cache_stale_total` | counter | stale values served (while reloading, or on error) |
//! | `tower_patterns_cache_coalesced_total` | counter | callers that waited on another's load |
//! | `tower_patterns_cache_refreshes_total` | counter | background reloads started |
//! | `tower_patterns_cache_load_errors_total` | counter | loads that failed |
//! | `tower_patterns_cache_store_errors_total` | counter | store operations that failed |
//! | `tower_patterns_cache_bypassed_total` | counter | requests passed through uncached |
//! | `tower_patterns_cache_evictions_total` | counter | entries evicted (where the store counts them) |
//! | `tower_patterns_cache_entries` | gauge | entries in the local tier |
//! | `tower_patterns_cache_loads_in_flight` | gauge | loads in flight |

pub mod future;
mod handle;
mod layer;
mod service;
mod shared;

pub use handle::{CacheHandle, CacheStats};
pub use layer::{CacheBuilder, CacheLayer, NoKey, NoStore};
pub use service::Cache;
