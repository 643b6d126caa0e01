//! Sharding (and sharding for a billion users): a router that sends each request
//! to one of N shards by key, the placement strategies, scatter-gather for cross-shard
//! queries, and rebalancing with live slot migration.
//!
//! - [`ShardRouter`]: a `Service` over N shard services; always ready, each shard made ready
//!   only when a request needs it (a stuck shard holds back only its own requests, unlike
//!   tower's `Steer`). Built with [`ShardRouter::builder`]; [`ShardRouter::handle`] reports
//!   it (pattern `shard`); its metrics are listed in [`router`].
//! - Strategies ([`strategy`]): [`Modulo`], [`Jump`], [`Rendezvous`], [`Ring`] (virtual nodes,
//!   bounded load), [`Range`], [`Directory`] (Redis Cluster's 16,384 slots, swapped without
//!   locks, migrated with dual reads) and [`Geo`]. Placement uses a fixed-seed hash, so every
//!   process places keys alike.
//! - [`ScatterGather`]: fan out to all or some shards with a concurrency cap and a per-shard
//!   timeout, merge, and fail or return a partial result naming the shards that did not answer.
//! - [`plan_moves`] and [`Directory::plan_resize`]: what moves when shards are added or removed.
//!
//! Replicas inside a shard: make each shard service a balancer over its replicas (tower's
//! `balance::p2c`), and the router stays unaware of them.
//!
//! # Example
//!
//! Users on 16 shards by jump hash (the default choice: minimal moves, no memory):
//!
//! ```
//! use tower::{service_fn, ServiceExt};
//! use tower_patterns_core::{key::key_fn, BoxError, KeyError};
//! use tower_patterns_shard::{Jump, Route, ShardRouter, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shards: Vec<_> = (0..16)
//!     .map(|i| service_fn(move |user: u64| async move { Ok::<_, BoxError>(i) }))
//!     .collect();
//! let strategy = Jump::new(16);
//! let Route::To(expected) = strategy.route(&42u64) else { unreachable!() };
//! let router = ShardRouter::builder("users")
//!     .shards(shards)
//!     .strategy(strategy)
//!     .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
//!     .build()
//!     .unwrap();
//! assert_eq!(router.oneshot(42).await.unwrap(), expected);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod directory;
mod key;
pub mod router;
pub mod scatter;
pub mod strategy;

pub use directory::{Directory, MovePlan, SlotMove, plan_moves};
pub use key::{GeoKey, SEED, SLOTS, ShardKey, redis_slot, stable_hash};
pub use router::{
    FallbackWhen, IsMiss, MigrationFallback, NoFallback, ShardRouter, ShardRouterBuilder,
    ShardRouterHandle,
};
pub use scatter::{
    Concat, GatherFuture, Gathered, Merge, Partial, ScatterGather, ShardError, ShardTimeout,
    SortLimit,
};
pub use strategy::{Geo, Jump, Modulo, Range, Rendezvous, Ring, Route, Strategy, jump_hash};
