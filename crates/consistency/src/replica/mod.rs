//! Middleware that routes writes to a PostgreSQL primary and reads to streaming replicas that
//! have replayed what the session wrote (feature `postgres`).
//!
//! A [`ReplicaSet`] is a primary's pool and its replicas' pools, plus a monitor
//! ([`ReplicaSet::spawn`]) that keeps one connection per node and every `probe_every` (250 ms)
//! reads the primary's `pg_current_wal_insert_lsn()` and each replica's
//! `pg_last_wal_replay_lsn()` and `pg_last_wal_receive_lsn()`. Each node has a loop of its
//! own, so a node that hangs delays only its own probes; a node that fails is reconnected at
//! most every `probe_every`. A replica is **up** when it answered within `probe_timeout`, and
//! **healthy** when it is up and behind by at most `max_lag_bytes` of WAL (16 MiB) and
//! `max_lag` (30 s). Lag in seconds is how long ago the primary first reached a position the
//! replica has not replayed (from the primary's recent positions): on a quiet primary, the
//! age of the replica's last replayed transaction would count minutes of no writes as lag.
//! The results sit in atomics, so routing a request takes no lock and sends no query.
//!
//! [`ReplicaRouterLayer`] applies a set:
//!
//! - **Writes** go to the primary. After the response, the router reads the primary's insert
//!   position and records it as the response's [`Mark`](crate::Mark) (a
//!   [`MarkResponse`](crate::MarkResponse)): the consistency layer turns it into the session's
//!   token.
//! - **Reads** go to a healthy replica that has replayed the request's
//!   [`ReadConcern::at_least`](crate::ReadConcern::at_least) (any healthy replica without one),
//!   chosen by the power of two choices on the reads each has in flight; to the primary when
//!   none qualifies, when the concern says `from_primary`, or when the chosen replica's pool
//!   gives no connection within `probe_timeout` (an error marks the replica down until the
//!   monitor reaches it again). A read that carries a mark and gets a connection its pool has
//!   just made checks the replica's replay position on it first: the replica may have
//!   restarted since its last probe and be replaying from an earlier point. With `observe_reads` (the default) the response's mark is where the read was
//!   served: the replica's replay position read just after it, an upper bound of what the read
//!   saw, so a session that sends it back never reads an older state (monotonic reads).
//!
//! The set is also a [`ReadSide`](crate::ReadSide): the consistency layer asks it whether some
//! replica has reached a token and waits for one (the monitor probes every `probe_fast`, 2 ms,
//! while a request waits), then the router picks among the replicas that have.
//!
//! The inner service receives a [`Routed`] request: the request, a pooled connection to the
//! chosen node and the [`Node`]. The response future is boxed: every request makes database
//! round trips that cost far more than the allocation.
//!
//! Why not `tower::balance::p2c::Balance`: it picks one endpoint for every request alike and
//! reserves it in `poll_ready`, before it sees the request, while this router must first
//! filter the replicas by the request's token (a replica that has not replayed it is no
//! candidate for this read, and is for the next one without a token).
//!
//! **The WAL page boundary.** Right after a record that ends exactly at a WAL page boundary,
//! `pg_current_wal_insert_lsn()` points past the next page's header (24 bytes, 40 at a segment
//! start) while a replica that replayed the record shows the boundary itself until the next
//! record. The router reduces such an insert position to the page start (it reads
//! `wal_block_size` and `wal_segment_size` once per connection to the primary), so a mark is
//! never out of a caught-up replica's reach.
//!
//! **Asynchronous commits.** With `synchronous_commit = off`, a commit is streamed to the
//! replicas only once the WAL writer flushes it (within `wal_writer_delay`, 200 ms by
//! default), so a read carrying that write's mark waits up to that long for a replica, or
//! goes to the primary.
//!
//! ```
//! use std::time::Duration;
//! use deadpool_postgres::{Config, Runtime};
//! use tokio_postgres::NoTls;
//! use tower_patterns_consistency::{Mark, Lsn, ReadSide, replica::{ReplicaRouterLayer, ReplicaSet}};
//! use tower_patterns_core::observe::StateHandle;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = |port: u16| {
//!     let mut config = Config::new();
//!     config.url = Some(format!("postgres://app@127.0.0.1:{port}/shop"));
//!     config.create_pool(Some(Runtime::Tokio1), NoTls) // connects on first use only
//! };
//! // The defaults: 16 MiB and 30 s of lag at most, a probe every 250 ms.
//! let set = ReplicaSet::builder("shop-db")
//!     .primary(pool(5432)?)
//!     .replica("replica-a", pool(5433)?)
//!     .replica("replica-b", pool(5434)?)
//!     .build()?;
//! // Customised: a tighter bound for a read-heavy page that tolerates little staleness.
//! let strict = ReplicaSet::builder("shop-db-strict")
//!     .primary(pool(5432)?)
//!     .replica("replica-a", pool(5433)?)
//!     .max_lag_bytes(1024 * 1024)
//!     .max_lag(Duration::from_secs(2))
//!     .probe_every(Duration::from_millis(100))
//!     .build()?;
//! // Until the monitor has probed them, no replica has reached anything.
//! assert!(!set.reached(Mark::Lsn(Lsn(1))));
//! assert!(ReplicaSet::builder("x").primary(pool(5432)?).replica("a", pool(1)?).replica("a", pool(2)?).build().is_err());
//! let layer = ReplicaRouterLayer::new(set.clone());
//! assert_eq!(layer.handle().replicas().len(), 2);
//! // A report per replica too, for a status page: down until the monitor reaches it.
//! let replica_a = &layer.handle().each_replica()[0];
//! assert_eq!(replica_a.name(), "shop-db/replica-a");
//! assert_eq!(replica_a.report().state, "down");
//! # drop(strict);
//! # Ok(())
//! # }
//! ```
//!
//! With a server, start the monitor and put the router in front of a service that runs SQL on
//! the connection it is given:
//!
//! ```no_run
//! # use deadpool_postgres::{Config, Runtime};
//! # use tokio_postgres::NoTls;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_patterns_consistency::replica::{ReplicaRouterLayer, ReplicaSet, Routed};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let pool = |port: u16| { let mut c = Config::new(); c.url = Some(format!("postgres://app@127.0.0.1:{port}/shop")); c.create_pool(Some(Runtime::Tokio1), NoTls) };
//! let set = ReplicaSet::builder("shop-db")
//!     .primary(pool(5432)?)
//!     .replica("replica-a", pool(5433)?)
//!     .build()?;
//! let _monitor = set.spawn();
//! let mut svc = ReplicaRouterLayer::new(set).layer(service_fn(
//!     |routed: Routed<http::Request<()>>| async move {
//!         let row = routed.client.query_one("SELECT count(*) FROM orders", &[]).await?;
//!         let count: i64 = row.get(0);
//!         Ok::<_, tokio_postgres::Error>(http::Response::new(count.to_string()))
//!     },
//! ));
//! let res = svc.ready().await?.call(http::Request::new(())).await?; // a GET: a replica
//! println!("{} orders, read at {:?}", res.body(), res.extensions().get::<tower_patterns_consistency::Mark>());
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Labels `name` (the set's) and, per replica, `replica`:
//!
//! | metric | kind | set |
//! |---|---|---|
//! | `tower_patterns_consistency_replica_lag_bytes` | gauge | by the monitor, after each probe |
//! | `tower_patterns_consistency_replica_lag_seconds` | gauge | by the monitor |
//! | `tower_patterns_consistency_replica_up` | gauge (1 or 0) | by the monitor (and 0 by the router when a pool fails) |
//! | `tower_patterns_consistency_replica_reads_total` | counter | when the handle reports |
//! | `tower_patterns_consistency_replica_fallbacks_total` | counter | when the handle reports |
//! | `tower_patterns_consistency_router_primary_reads_total` | counter (`name` only) | when the handle reports |
//! | `tower_patterns_consistency_router_writes_total` | counter (`name` only) | when the handle reports |
//! | `tower_patterns_consistency_router_mark_errors_total` | counter (`name` only) | when the handle reports |
//! | `tower_patterns_consistency_wal_flushes_total` | counter (`name` only) | when the handle reports |
//!
//! Nothing is recorded per request: the router counts in atomics and
//! [`ReplicaSetHandle`]'s `report()` publishes the counts.

mod error;
mod future;
mod handle;
mod monitor;
mod route;
mod router;
mod set;
mod state;
mod wal;

pub use error::PrimaryUnavailable;
pub use future::ResponseFuture;
pub use handle::{ReplicaHandle, ReplicaSetHandle, ReplicaStatus};
pub use router::{Node, ReplicaRouter, ReplicaRouterLayer, Routed};
pub use set::{NoPrimary, ReplicaSet, ReplicaSetBuilder};
