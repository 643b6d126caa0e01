//! Redis tiers (feature `redis`): [`RedisStore`], shared by every instance, and
//! [`TieredStore`], moka L1 in front of Redis L2 with invalidations broadcast over Redis
//! pub/sub to every instance's L1.
//!
//! Needs Redis 7 or later (tag sets use `PEXPIRE ... GT`/`NX`). Values are JSON (serde). Keys are `<prefix>:k:<tenant>:<key>` (`-` for no tenant); a tag is a
//! set `<prefix>:t:<tag>` of the keys it names. Every Redis call has a deadline (250 ms by
//! default), so a Redis that is gone costs a request at most that long, once per connection
//! attempt, and never fails it: the cache answers from the inner service and reports.
//!
//! # Two tiers and their consistency
//!
//! A [`TieredStore`] reads L1, then L2 (copying an L2 hit into L1). A put, an invalidation, a
//! prefix or tag invalidation is applied locally and published on `<prefix>:inv`; every other
//! instance drops the same keys from its L1. A Redis hit read while an invalidation or a put of its
//! key (local or another instance's) lands is answered but not copied into L1, so the change
//! cannot be undone by a read that started before it. While an instance's subscription is down it
//! cannot hear those messages, so its L1 may serve a value another instance changed; when the
//! subscription comes back it clears its whole L1. During a Redis outage the L1s serve what
//! they hold for at most their TTL, and no instance can tell the others anything.
//!
//! ```no_run
//! use tower_patterns_cache::store::redis::{RedisStore, TieredStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_cache::store::StoreError> {
//! let l2 = RedisStore::<u64, String>::builder("users")
//!     .url("redis://127.0.0.1:6379")
//!     .build()?;
//! let tiered = TieredStore::new(l2, 10_000);
//! # let _ = tiered;
//! # Ok(()) }
//! ```

mod single;
mod tiered;
mod wire;

pub use single::{NoUrl, RedisStore, RedisStoreBuilder};
pub use tiered::TieredStore;
