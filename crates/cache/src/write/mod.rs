//! Write-through and write-behind: keeping the cache right when the data changes.
//!
//! **Write-through** ([`WriteThroughLayer`]) wraps the service that writes to the source of
//! record. The write goes to the source first; only when it succeeds does the cache change, by
//! storing the new value or dropping the key ([`WriteThroughMode`]). A failed write changes
//! nothing in the cache. A failed cache update drops the key instead, so the cache is never left
//! holding the old value; and loads that were in flight during the write never store what they
//! read before it.
//!
//! **Write-behind** ([`WriteBehind`]) answers a write once the cache holds it and writes to the
//! source later, in batches, from a bounded queue. Writes to a key that is already queued
//! replace the queued value (coalescing). A full queue makes the service not ready
//! (backpressure). [`WriteBehindHandle::flush`] writes everything queued and
//! [`WriteBehindHandle::shutdown`] does so and stops (dropping every service and handle without
//! it makes the writer flush and stop within a second). **The loss window**: a write acknowledged
//! but not yet flushed is lost if the process dies; at most `max_pending` keys and, under
//! steady load, about `max_delay` of writes.
//!
//! A write-behind is built with [`WriteBehind::builder`]`(name)`, its cache and its batch
//! writer: `WriteBehind::builder("prices-wb").cache(cache.handle()).writer(writer).build()`
//! returns the service and its [`WriteBehindHandle`], a
//! [`StateHandle`](tower_patterns_core::observe::StateHandle) (pattern `"cache"`). A write
//! refused because the queue was shut down ([`WriteBehindClosed`]) maps to `503`.
//!
//! # Metrics
//!
//! Label `name` (the write-behind's):
//!
//! | metric | kind | when |
//! |---|---|---|
//! | `tower_patterns_cache_writes_total` | counter, label `outcome` = `written` or `dropped` | each batch the writer finishes |
//! | `tower_patterns_cache_write_queue` | gauge | writes queued, when the handle reports |
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_cache::{store::MokaStore, CacheLayer, WriteThroughLayer, WriteThroughMode};
//! use tower_patterns_core::{key::key_fn, KeyError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::builder("prices").store(MokaStore::<u64, u32>::builder().build())
//!     .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
//!     .unscoped()
//!     .build()
//!     .unwrap();
//! // The write returns the stored price; the cache takes it.
//! let write = WriteThroughLayer::builder("price-writes")
//!     .cache(cache.handle())
//!     .key(key_fn(|(id, _): &(u64, u32)| Ok::<_, KeyError>(*id)))
//!     .mode(WriteThroughMode::update(|price: &u32| Some(*price)))
//!     .unscoped()
//!     .build()
//!     .unwrap();
//! let save = write.layer(service_fn(|(_, price): (u64, u32)| async move { Ok::<_, Infallible>(price) }));
//! save.oneshot((1, 250)).await.unwrap();
//! assert_eq!(cache.handle().peek(None, 1).unwrap().value(), &250);
//! # }
//! ```

mod behind;
mod behind_handle;
mod through;
mod writer;

pub use behind::{
    BatchWriter, NoCache, NoWriter, WriteBehind, WriteBehindBuilder, WriteBehindParts,
};
pub use behind_handle::{WriteBehindClosed, WriteBehindHandle};
pub use through::{NoMode, WriteThrough, WriteThroughBuilder, WriteThroughLayer, WriteThroughMode};
