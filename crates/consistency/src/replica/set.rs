//! The replica set: its builder, the monitor's start, and the set as a [`ReadSide`].

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tower_patterns_core::ConfigError;

use super::{
    handle::ReplicaSetHandle,
    monitor,
    state::{Options, Shared, Waiter},
};
use crate::{
    mark::{Distance, Mark, MarkKind},
    read_side::{BoxWait, ReadSide},
};

/// The builder's marker for a primary not yet given: [`ReplicaSetBuilder::build`] needs one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPrimary;

/// Builds a [`ReplicaSet`]: `ReplicaSet::builder(name).primary(pool)`, then any number of
/// `.replica(name, pool)` and settings, then `.build()`.
pub struct ReplicaSetBuilder<P = NoPrimary> {
    name: Arc<str>,
    primary: P,
    replicas: Vec<(Arc<str>, Pool)>,
    options: Options,
}

impl<P> fmt::Debug for ReplicaSetBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetBuilder")
            .field("name", &self.name)
            .field(
                "replicas",
                &self.replicas.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<P> ReplicaSetBuilder<P> {
    /// The primary's pool: writes, and reads no replica can serve, go there.
    pub fn primary(self, pool: Pool) -> ReplicaSetBuilder<Pool> {
        ReplicaSetBuilder {
            name: self.name,
            primary: pool,
            replicas: self.replicas,
            options: self.options,
        }
    }

    /// A streaming replica of the primary, by a name of its own (the `replica` label of its
    /// metrics, and [`Node::Replica`](super::Node::Replica)). Names must be distinct.
    #[must_use]
    pub fn replica(mut self, name: impl Into<Arc<str>>, pool: Pool) -> Self {
        self.replicas.push((name.into(), pool));
        self
    }

    /// The most WAL a replica may have left to replay and still serve reads without a mark
    /// (default 16 MiB). Past it the replica is unhealthy: it serves no reads until it
    /// catches up.
    #[must_use]
    pub fn max_lag_bytes(mut self, bytes: u64) -> Self {
        self.options.max_lag_bytes = bytes;
        self
    }

    /// The most time a replica may be behind and still serve reads (default 30 s): how long
    /// ago the monitor first saw the primary at a position the replica has not replayed (a
    /// replica that has replayed all the primary had is 0 s behind, however long the primary
    /// has been quiet).
    #[must_use]
    pub fn max_lag(mut self, lag: Duration) -> Self {
        self.options.max_lag = lag;
        self
    }

    /// How often the monitor reads every node's WAL position (default 250 ms).
    #[must_use]
    pub fn probe_every(mut self, every: Duration) -> Self {
        self.options.probe_every = every;
        self
    }

    /// How often the monitor reads them while some request waits for a replica to reach its
    /// mark (default 2 ms). Larger than `probe_every`, it is clamped to `probe_every`.
    #[must_use]
    pub fn probe_fast(mut self, every: Duration) -> Self {
        self.options.probe_fast = every;
        self
    }

    /// How long a node may take to connect or to answer a probe before it counts as down
    /// (default 1 s).
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.options.probe_timeout = timeout;
        self
    }

    /// Whether every read's response carries the WAL position it was read at (default true):
    /// after a replica read, that replica's replay position read right after it (an upper
    /// bound of what the read saw); after a primary read, the primary's insert position. A
    /// session that sends it back never reads an older state than before (monotonic reads).
    /// It costs one short query per read on the monitor's connection to the node.
    #[must_use]
    pub fn observe_reads(mut self, observe: bool) -> Self {
        self.options.observe_reads = observe;
        self
    }
}

impl ReplicaSetBuilder<Pool> {
    /// The set, once its settings check out: a non-empty name, distinct non-empty replica
    /// names, and probe intervals and timeout above zero and at most an hour.
    ///
    /// It registers its metrics (at zero) but connects to nothing: [`ReplicaSet::spawn`]
    /// starts the monitor.
    pub fn build(self) -> Result<ReplicaSet, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let mut seen = HashSet::new();
        for (name, _) in &self.replicas {
            if name.is_empty() {
                return Err(ConfigError::new("replica", "names must not be empty"));
            }
            if !seen.insert(name.clone()) {
                return Err(ConfigError::new(
                    "replica",
                    format!("name {name:?} is given twice"),
                ));
            }
        }
        let mut options = self.options;
        for (field, value) in [
            ("probe_every", options.probe_every),
            ("probe_fast", options.probe_fast),
            ("probe_timeout", options.probe_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be more than zero"));
            }
            if value > Duration::from_secs(3600) {
                return Err(ConfigError::new(field, "must be an hour or less"));
            }
        }
        options.probe_fast = options.probe_fast.min(options.probe_every);
        let shared = Shared::new(self.name, options, self.primary, self.replicas);
        Ok(ReplicaSet {
            owner: Arc::new(Owner(shared)),
        })
    }
}

/// A PostgreSQL primary and its streaming replicas, with a monitor that follows how far each
/// replica has replayed the primary's WAL.
///
/// `Clone` (clones share everything). Built with [`ReplicaSet::builder`]; the monitor runs
/// once [`spawn`](Self::spawn)ed, until [`ReplicaSetHandle::shutdown`] or until the set and
/// every router using it are dropped. Until its first probe every replica counts as down (reads
/// go to the primary).
///
/// As a [`ReadSide`] (marks of kind [`MarkKind::Lsn`]): a mark is reached once some healthy
/// replica has replayed it, as of the last probe (atomics only); a wait makes the monitor probe
/// at `probe_fast` until it ends.
#[derive(Clone)]
pub struct ReplicaSet {
    owner: Arc<Owner>,
}

/// Held by the set's clones (and the routers', through them): the monitor ends when the last
/// goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("ReplicaSet")
            .field("name", &shared.name)
            .field(
                "replicas",
                &shared.replicas.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ReplicaSet {
    /// A builder; the name labels metrics, traces and the handle's report.
    pub fn builder(name: impl Into<Arc<str>>) -> ReplicaSetBuilder {
        ReplicaSetBuilder {
            name: name.into(),
            primary: NoPrimary,
            replicas: Vec::new(),
            options: Options {
                max_lag_bytes: 16 * 1024 * 1024,
                max_lag: Duration::from_secs(30),
                probe_every: Duration::from_millis(250),
                probe_fast: Duration::from_millis(2),
                probe_timeout: Duration::from_secs(1),
                observe_reads: true,
            },
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.owner.0
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// Starts the monitor on the current Tokio runtime. It keeps one connection per node
    /// (taken from the node's pool, so the pool makes another for requests) and ends on
    /// [`ReplicaSetHandle::shutdown`] or once the set and its routers are dropped. A second
    /// call starts nothing (its task ends at once).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    pub fn spawn(&self) -> JoinHandle<()> {
        let shared = self.shared().clone();
        if shared.spawned.swap(true, Relaxed) {
            return tokio::spawn(async {});
        }
        tokio::spawn(monitor::run(shared))
    }

    /// The set's handle: replica lag and health, counters, `refresh` and `shutdown`.
    pub fn handle(&self) -> ReplicaSetHandle {
        ReplicaSetHandle::new(self.shared().clone())
    }
}

impl ReadSide for ReplicaSet {
    type Wait = BoxWait;

    fn kind(&self) -> MarkKind {
        MarkKind::Lsn
    }

    fn reached(&self, mark: Mark) -> bool {
        mark.lsn()
            .is_some_and(|lsn| self.shared().replicas.iter().any(|r| r.has_reached(lsn)))
    }

    fn wait(&self, mark: Mark, within: Duration) -> BoxWait {
        let shared = self.shared().clone();
        let mut probed = shared.probed.subscribe();
        Box::pin(async move {
            let Some(lsn) = mark.lsn() else {
                return false;
            };
            let reached = |s: &Shared| s.replicas.iter().any(|r| r.has_reached(lsn));
            if reached(&shared) {
                return true;
            }
            let _waiting = Waiter::register(shared.clone(), lsn);
            let until = async {
                loop {
                    if probed.changed().await.is_err() {
                        return false;
                    }
                    if reached(&shared) {
                        return true;
                    }
                }
            };
            tokio::time::timeout(within, until).await.unwrap_or(false)
        })
    }

    fn distance(&self, mark: Mark) -> Option<Distance> {
        let lsn = mark.lsn()?;
        self.shared()
            .replicas
            .iter()
            .filter(|r| r.is_healthy())
            .map(|r| lsn.bytes_after(r.replay()))
            .min()
            .filter(|&behind| behind > 0)
            .map(Distance::WalBytes)
    }

    fn routes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, task::Poll};

    use deadpool_postgres::{Config, Runtime};

    use super::*;
    use crate::mark::Lsn;

    fn set() -> ReplicaSet {
        let mut config = Config::new();
        config.url = Some("postgres://postgres@127.0.0.1:1/none".into());
        let pool = || {
            config
                .create_pool(Some(Runtime::Tokio1), tokio_postgres::NoTls)
                .unwrap()
        };
        ReplicaSet::builder("waits")
            .primary(pool())
            .replica("r", pool())
            .build()
            .unwrap()
    }

    fn waiters(set: &ReplicaSet) -> usize {
        set.shared().waiters.load(Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_counts_as_a_waiter_until_it_ends_or_is_dropped() {
        let set = set();
        let mark = Mark::Lsn(Lsn(1));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let mut dropped = pin!(set.wait(mark, Duration::from_secs(1)));
            assert!(dropped.as_mut().poll(&mut cx).is_pending());
            assert_eq!(waiters(&set), 1);
            let mut second = pin!(set.wait(mark, Duration::from_secs(1)));
            assert!(second.as_mut().poll(&mut cx).is_pending());
            assert_eq!(waiters(&set), 2);
        }
        assert_eq!(
            waiters(&set),
            0,
            "dropped (cancelled) waits are no longer counted"
        );
        assert!(!set.wait(mark, Duration::from_secs(1)).await, "timed out");
        assert_eq!(
            waiters(&set),
            0,
            "a wait that timed out is no longer counted"
        );
        // A mark of the other kind is refused at once, without waiting.
        let mut other = pin!(set.wait(Mark::Position(Default::default()), Duration::from_secs(1)));
        assert_eq!(other.as_mut().poll(&mut cx), Poll::Ready(false));
        assert_eq!(waiters(&set), 0);
    }
}
