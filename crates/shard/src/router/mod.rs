//! The shard router: one request to one shard, chosen by key.
//!
//! [`ShardRouter::builder`] names it and takes its three required parts (the shards, the
//! placement strategy and the key extractor); [`ShardRouter::handle`] reports it
//! ([`ShardRouterHandle`], pattern `shard`); its future is [`future::ResponseFuture`].
//!
//! # Metrics
//!
//! Nothing is recorded on a routed call. `tower_patterns_shard_shards{name}` (a gauge) is set
//! when the router is built; `tower_patterns_shard_key_errors_total{name}` counts requests
//! whose key could not be taken, `tower_patterns_shard_unrouted_total{name}` requests placed
//! on a shard the router does not have, and `tower_patterns_shard_migrating_requests_total{name}`
//! requests whose key is in a slot being moved (a [`Directory`](crate::Directory) migration;
//! with [`ShardRouterBuilder::fallback_when`], its misses are read again on the old shard).
//! Nothing is kept in the response future for them, so a routed call costs what it did.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use tower::util::Oneshot;
use tower_patterns_core::{BoxError, ConfigError, KeyExtractor, metric_name, observe::labels};
use tower_service::Service;

use crate::{Route, ShardKey, Strategy};

pub mod future;
mod handle;

use future::{Fallback, LoadGuard, ResponseFuture};
pub use handle::ShardRouterHandle;

/// A service that sends each request to one of its shards, by a key taken from the request.
///
/// Unlike tower's `Steer`, which waits until **every** inner service is ready before routing
/// to one, the router is always ready and makes only the chosen shard ready, inside the
/// response future: a slow or stuck shard holds back only its own requests. Each call drives
/// a clone of its shard (`S: Clone`), polled ready and then called.
///
/// While a [`Directory`](crate::Directory) slot migrates, reads go to the new shard first and,
/// when its answer is a miss by [`ShardRouterBuilder::fallback_when`], to the old one.
///
/// ```
/// use tower::{service_fn, ServiceExt};
/// use tower_patterns_core::{key::key_fn, BoxError, KeyError};
/// use tower_patterns_shard::{Jump, ShardRouter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shards: Vec<_> = (0..4)
///     .map(|i| service_fn(move |user: u64| async move { Ok::<_, BoxError>((i, user)) }))
///     .collect();
/// let router = ShardRouter::builder("users")
///     .shards(shards)
///     .strategy(Jump::new(4))
///     .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
///     .build()
///     .unwrap();
/// let (shard, user) = router.oneshot(42).await.unwrap();
/// assert_eq!(user, 42);
/// assert!(shard < 4);
/// # }
/// ```
pub struct ShardRouter<S, P, K, F = NoFallback> {
    shards: Arc<[S]>,
    strategy: Arc<P>,
    extractor: K,
    loads: Option<Arc<[AtomicU64]>>,
    fallback: F,
    shared: Arc<Shared>,
}

/// What every clone of one router shares: its name and the metrics of its rare paths.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    key_errors: metrics::Counter,
    unrouted: metrics::Counter,
    migrating_reads: metrics::Counter,
}

/// What a router does with a read of a migrating slot whose new shard misses: nothing
/// ([`NoFallback`], the default) or read the old shard ([`FallbackWhen`], from
/// [`ShardRouterBuilder::fallback_when`]). Sealed.
pub trait MigrationFallback<Req, Res>: Clone + sealed::Sealed {
    /// A copy of `req` for the old shard and the test of a miss, if `req` may be sent twice.
    fn prepare(&self, req: &Req) -> Option<(Req, IsMiss<Res>)>;
}

/// Whether a response of the new shard is a miss (a "not found").
pub type IsMiss<Res> = fn(&Res) -> bool;

mod sealed {
    pub trait Sealed {}
}

/// Migrating slots read the new shard only.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl sealed::Sealed for NoFallback {}

impl<Req, Res> MigrationFallback<Req, Res> for NoFallback {
    #[inline]
    fn prepare(&self, _: &Req) -> Option<(Req, IsMiss<Res>)> {
        None
    }
}

/// A miss on the new shard of a migrating slot is read again on the old one; see
/// [`ShardRouterBuilder::fallback_when`].
pub struct FallbackWhen<Req, Res> {
    is_miss: IsMiss<Res>,
    copy: fn(&Req) -> Option<Req>,
}

impl<Req, Res> Clone for FallbackWhen<Req, Res> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Res> Copy for FallbackWhen<Req, Res> {}

impl<Req, Res> fmt::Debug for FallbackWhen<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackWhen").finish_non_exhaustive()
    }
}

impl<Req, Res> sealed::Sealed for FallbackWhen<Req, Res> {}

impl<Req, Res> MigrationFallback<Req, Res> for FallbackWhen<Req, Res> {
    fn prepare(&self, req: &Req) -> Option<(Req, IsMiss<Res>)> {
        Some(((self.copy)(req)?, self.is_miss))
    }
}

impl<S, P, K: Clone, F: Clone> Clone for ShardRouter<S, P, K, F> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            strategy: self.strategy.clone(),
            extractor: self.extractor.clone(),
            loads: self.loads.clone(),
            fallback: self.fallback.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, P, K, F> fmt::Debug for ShardRouter<S, P, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouter")
            .field("name", &self.shared.name)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl ShardRouter<Unset, Unset, Unset> {
    /// A builder named `name` (it labels the metrics and the handle). The shards, the
    /// strategy and the key are required: [`ShardRouterBuilder::shards`],
    /// [`ShardRouterBuilder::strategy`] (or [`ShardRouterBuilder::shared_strategy`]) and
    /// [`ShardRouterBuilder::key`].
    pub fn builder(name: impl Into<Arc<str>>) -> ShardRouterBuilder<Unset, Unset, Unset> {
        ShardRouterBuilder {
            name: name.into(),
            shards: Unset(()),
            strategy: Unset(()),
            key: Unset(()),
            fallback: NoFallback,
        }
    }
}

/// A required part of a [`ShardRouterBuilder`] not set yet.
#[derive(Debug)]
pub struct Unset(());

/// Builds a [`ShardRouter`]: `Sh` is the shards (`Vec<S>` once set), `St` the strategy
/// (`Arc<P>` once set), `K` the key extractor, `F` what migrating reads do after a miss;
/// `build` exists once the first three are set.
pub struct ShardRouterBuilder<Sh, St, K, F = NoFallback> {
    name: Arc<str>,
    shards: Sh,
    strategy: St,
    key: K,
    fallback: F,
}

impl<Sh, St, K, F> fmt::Debug for ShardRouterBuilder<Sh, St, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouterBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<Sh, St, K, F> ShardRouterBuilder<Sh, St, K, F> {
    /// The shard services, as many as the strategy places keys on (more are allowed: a
    /// [`Directory`](crate::Directory) may grow into them). Required.
    pub fn shards<S>(self, shards: Vec<S>) -> ShardRouterBuilder<Vec<S>, St, K, F> {
        ShardRouterBuilder {
            name: self.name,
            shards,
            strategy: self.strategy,
            key: self.key,
            fallback: self.fallback,
        }
    }

    /// The placement strategy. Required (or [`Self::shared_strategy`]).
    pub fn strategy<P: Strategy>(self, strategy: P) -> ShardRouterBuilder<Sh, Arc<P>, K, F> {
        self.shared_strategy(Arc::new(strategy))
    }

    /// A placement strategy shared with other code (a [`Directory`](crate::Directory) that
    /// an operator migrates while the router serves).
    pub fn shared_strategy<P: Strategy>(
        self,
        strategy: Arc<P>,
    ) -> ShardRouterBuilder<Sh, Arc<P>, K, F> {
        ShardRouterBuilder {
            name: self.name,
            shards: self.shards,
            strategy,
            key: self.key,
            fallback: self.fallback,
        }
    }

    /// Takes each request's key. Required.
    pub fn key<K2>(self, extractor: K2) -> ShardRouterBuilder<Sh, St, K2, F> {
        ShardRouterBuilder {
            name: self.name,
            shards: self.shards,
            strategy: self.strategy,
            key: extractor,
            fallback: self.fallback,
        }
    }

    /// During a slot migration, a response for which `is_miss` holds (a "not found") from the
    /// new shard is retried on the old one, with a copy of the request made by `copy` before
    /// the first call (return `None` for requests that must not be sent twice, such as
    /// writes). Without it, migrating slots read the new shard only.
    pub fn fallback_when<Req, Res>(
        self,
        is_miss: fn(&Res) -> bool,
        copy: fn(&Req) -> Option<Req>,
    ) -> ShardRouterBuilder<Sh, St, K, FallbackWhen<Req, Res>> {
        ShardRouterBuilder {
            name: self.name,
            shards: self.shards,
            strategy: self.strategy,
            key: self.key,
            fallback: FallbackWhen { is_miss, copy },
        }
    }
}

impl<S, P: Strategy, K, F> ShardRouterBuilder<Vec<S>, Arc<P>, K, F> {
    /// Builds the router.
    ///
    /// # Errors
    ///
    /// When there are fewer shards than the strategy places keys on.
    pub fn build(self) -> Result<ShardRouter<S, P, K, F>, ConfigError> {
        let Self {
            name,
            shards,
            strategy,
            key,
            fallback,
        } = self;
        if shards.len() < strategy.shards() {
            return Err(ConfigError::new(
                "shards",
                format!(
                    "the strategy places keys on {} shards, {} given",
                    strategy.shards(),
                    shards.len()
                ),
            ));
        }
        let loads = strategy
            .needs_loads()
            .then(|| (0..shards.len()).map(|_| AtomicU64::new(0)).collect());
        let label = || name.to_string();
        metrics::gauge!(metric_name!("shard", "shards"), labels::NAME => label())
            .set(shards.len() as f64);
        let key_errors =
            metrics::counter!(metric_name!("shard", "key_errors_total"), labels::NAME => label());
        let unrouted =
            metrics::counter!(metric_name!("shard", "unrouted_total"), labels::NAME => label());
        let migrating_reads = metrics::counter!(
            metric_name!("shard", "migrating_requests_total"),
            labels::NAME => label()
        );
        Ok(ShardRouter {
            shards: shards.into(),
            strategy,
            extractor: key,
            loads,
            fallback,
            shared: Arc::new(Shared {
                name,
                key_errors,
                unrouted,
                migrating_reads,
            }),
        })
    }
}

impl<S, P: Strategy, K, F> ShardRouter<S, P, K, F> {
    /// A handle on the router: its name, shards, strategy and slots migrating.
    pub fn handle(&self) -> ShardRouterHandle {
        ShardRouterHandle::new(
            self.shared.clone(),
            self.strategy.clone(),
            self.shards.len(),
            self.loads.clone(),
        )
    }

    /// The shards' calls in flight, when the strategy counts them (a bounded-load ring).
    pub fn loads(&self) -> Option<Vec<u64>> {
        self.loads
            .as_ref()
            .map(|l| l.iter().map(|x| x.load(Relaxed)).collect())
    }
}

impl<S, P, K, F, Req> Service<Req> for ShardRouter<S, P, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Strategy,
    K: KeyExtractor<Req>,
    K::Key: ShardKey,
    F: MigrationFallback<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    /// Always ready: readiness is per shard, in the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = match self.extractor.extract(&req) {
            Ok(key) => key,
            Err(e) => {
                self.shared.key_errors.increment(1);
                return ResponseFuture::failed(e.into());
            }
        };
        let route = match &self.loads {
            Some(loads) => self.strategy.route_with_loads(&key, loads),
            None => self.strategy.route(&key),
        };
        let (primary, fallback) = match route {
            Route::To(s) => (s, None),
            Route::Migrating { to, from } => {
                self.shared.migrating_reads.increment(1);
                (to, Some(from))
            }
        };
        let Some(shard) = self.shards.get(primary) else {
            self.shared.unrouted.increment(1);
            return ResponseFuture::failed(format!("no shard {primary}").into());
        };
        let load = self
            .loads
            .as_ref()
            .map(|l| LoadGuard::new(l.clone(), primary));
        let fallback = fallback.and_then(|from| {
            let (copy, is_miss) = self.fallback.prepare(&req)?;
            Some(Fallback {
                service: self.shards.get(from)?.clone(),
                req: copy,
                is_miss,
            })
        });
        ResponseFuture::new(Oneshot::new(shard.clone(), req), fallback, load)
    }
}
