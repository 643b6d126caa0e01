//! The replica set's handle: every replica's lag and health, the router's counters, and the
//! operator's controls.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::state::Shared;
use crate::mark::Lsn;

/// WAL bytes a replica has not replayed (gauge; labels `name`, `replica`).
pub(crate) const LAG_BYTES: &str = "tower_patterns_consistency_replica_lag_bytes";
/// Seconds a replica is behind (gauge; labels `name`, `replica`).
pub(crate) const LAG_SECONDS: &str = "tower_patterns_consistency_replica_lag_seconds";
/// 1 while a replica answers its probes, else 0 (gauge; labels `name`, `replica`).
pub(crate) const UP: &str = "tower_patterns_consistency_replica_up";
/// Reads a replica served (counter; labels `name`, `replica`).
pub(crate) const READS: &str = "tower_patterns_consistency_replica_reads_total";
/// Reads sent to a replica that the primary served instead: its pool gave no connection in
/// time, or a new connection was behind the read's mark (counter; labels `name`, `replica`).
pub(crate) const FALLBACKS: &str = "tower_patterns_consistency_replica_fallbacks_total";
/// Reads the primary served (counter; label `name`).
pub(crate) const PRIMARY_READS: &str = "tower_patterns_consistency_router_primary_reads_total";
/// Writes routed to the primary (counter; label `name`).
pub(crate) const WRITES: &str = "tower_patterns_consistency_router_writes_total";
/// Responses left without a mark because the WAL position could not be read after them
/// (counter; label `name`).
pub(crate) const MARK_ERRORS: &str = "tower_patterns_consistency_router_mark_errors_total";
/// Times the monitor made the primary flush its WAL for a waiting read (counter; label
/// `name`).
pub(crate) const WAL_FLUSHES: &str = "tower_patterns_consistency_wal_flushes_total";

/// Registers the set's own counters (a replica registers its gauges and counters).
pub(crate) fn register(name: &str) {
    for counter in [PRIMARY_READS, WRITES, MARK_ERRORS, WAL_FLUSHES] {
        metrics::counter!(counter, "name" => name.to_owned()).absolute(0);
    }
}

/// One replica as the monitor last saw it, with the router's counts.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// Its name, as given to the builder.
    pub name: Arc<str>,
    /// It answered the last probe in time (and the router got connections from its pool).
    pub up: bool,
    /// Up and within `max_lag_bytes` and `max_lag`: it serves reads.
    pub healthy: bool,
    /// How far it has replayed the primary's WAL.
    pub replay: Lsn,
    /// How far it has received the primary's WAL (`None` when it streams nothing).
    pub receive: Option<Lsn>,
    /// WAL bytes between the primary's insert position and its replay position.
    pub lag_bytes: u64,
    /// How long it is behind (zero once it has replayed all the primary had).
    pub lag: Duration,
    /// Reads it served.
    pub reads: u64,
    /// Reads sent to it that the primary served instead: its pool gave no connection in time,
    /// or a new connection was behind the read's mark (it had restarted).
    pub fallbacks: u64,
}

/// The replica set's handle (`set.handle()`, `layer.handle()`): `Clone`, cheap, and it never
/// keeps the monitor running.
///
/// It implements [`StateHandle`] (pattern `consistency`): [`Health::Degraded`] while some
/// replica is down or too far behind, else [`Health::Ready`]; never `Unavailable`, since the
/// primary still serves every read. Its report carries `replicas`, `healthy_replicas`,
/// `max_lag_bytes`, `max_lag_seconds`, `primary_reads`, `writes`, `mark_errors` and
/// `wal_flushes`, and
/// publishes the router's counters as metrics (`report()` is the only place they are
/// published: call it from the scrape route).
#[derive(Clone)]
pub struct ReplicaSetHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ReplicaSetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetHandle")
            .field("name", &self.shared.name)
            .field("primary_lsn", &self.primary_lsn())
            .field("replicas", &self.replicas())
            .finish()
    }
}

impl ReplicaSetHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The primary's WAL insert position at the last probe (`None` before the first that
    /// reached it).
    pub fn primary_lsn(&self) -> Option<Lsn> {
        self.shared.primary.last_lsn()
    }

    /// Every replica, in the order they were added.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.shared.replicas.iter().map(status_of).collect()
    }

    /// A handle per replica, in the order they were added, each a [`StateHandle`] of its own
    /// named `<set>/<replica>`: for a status page that shows every replica's lag beside the
    /// set's report (which gives the largest).
    pub fn each_replica(&self) -> Vec<ReplicaHandle> {
        self.shared
            .replicas
            .iter()
            .enumerate()
            .map(|(index, r)| ReplicaHandle {
                shared: self.shared.clone(),
                index,
                name: format!("{}/{}", self.shared.name, r.name),
            })
            .collect()
    }

    /// Probes every node now (after a probe under way ends), whether or not the monitor runs.
    pub async fn refresh(&self) {
        self.shared.probe().await;
    }

    /// Ends the monitor (its connections close); the routers keep routing on the last probe,
    /// so reads without a mark keep going to replicas that were healthy then.
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    /// Reads the primary served (no replica could, the request asked for the primary, or a
    /// replica's pool failed).
    pub fn primary_reads(&self) -> u64 {
        self.shared.primary_reads.load(Relaxed)
    }

    /// Writes routed to the primary.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Relaxed)
    }

    /// Times the monitor made the primary flush its WAL because a request waited for a
    /// position written but not yet flushed (after an asynchronous commit, say).
    pub fn wal_flushes(&self) -> u64 {
        self.shared.wal_flushes.load(Relaxed)
    }
}

/// What the monitor last saw of `r`, with the router's counts.
fn status_of(r: &super::state::Replica) -> ReplicaStatus {
    let receive = r.receive.load(Relaxed);
    ReplicaStatus {
        name: r.name.clone(),
        up: r.up.load(Relaxed),
        healthy: r.is_healthy(),
        replay: r.replay(),
        receive: (receive != 0).then_some(Lsn(receive)),
        lag_bytes: r.lag_bytes.load(Relaxed),
        lag: Duration::try_from_secs_f64(f64::from_bits(r.lag_seconds.load(Relaxed)))
            .unwrap_or_default(),
        reads: r.reads.load(Relaxed),
        fallbacks: r.fallbacks.load(Relaxed),
    }
}

/// One replica of a set ([`ReplicaSetHandle::each_replica`]): `Clone`, cheap, and like the
/// set's handle it never keeps the monitor running.
///
/// It implements [`StateHandle`] (pattern `consistency`, named `<set>/<replica>`): state
/// `streaming` ([`Health::Ready`]: up and within the set's bounds, so it serves reads),
/// `lagging` (degraded: up but too far behind) or `down` (degraded: the primary serves its
/// reads). Its report carries `lag_bytes`, `lag_seconds`, `reads` and `fallbacks`.
#[derive(Clone)]
pub struct ReplicaHandle {
    shared: Arc<Shared>,
    index: usize,
    name: String,
}

impl ReplicaHandle {
    /// The replica as the monitor last saw it, with the router's counts.
    pub fn status(&self) -> ReplicaStatus {
        status_of(&self.shared.replicas[self.index])
    }
}

impl fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaHandle")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish()
    }
}

impl StateHandle for ReplicaHandle {
    fn pattern(&self) -> &'static str {
        "consistency"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn report(&self) -> Report {
        let r = self.status();
        let (health, state) = match (r.up, r.healthy) {
            (false, _) => (Health::Degraded, "down"),
            (true, false) => (Health::Degraded, "lagging"),
            (true, true) => (Health::Ready, "streaming"),
        };
        Report::new("consistency", self.name.clone(), health, state)
            .with_value("lag_bytes", r.lag_bytes as f64)
            .with_value("lag_seconds", r.lag.as_secs_f64())
            .with_value("reads", r.reads as f64)
            .with_value("fallbacks", r.fallbacks as f64)
    }
}

impl StateHandle for ReplicaSetHandle {
    fn pattern(&self) -> &'static str {
        "consistency"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn health(&self) -> Health {
        if self.shared.replicas.iter().all(|r| r.is_healthy()) {
            Health::Ready
        } else {
            Health::Degraded
        }
    }

    fn report(&self) -> Report {
        let shared = &self.shared;
        let name = shared.name.to_string();
        let replicas = self.replicas();
        for r in &replicas {
            let labels = [("name", name.clone()), ("replica", r.name.to_string())];
            metrics::counter!(READS, &labels).absolute(r.reads);
            metrics::counter!(FALLBACKS, &labels).absolute(r.fallbacks);
        }
        let primary_reads = shared.primary_reads.load(Relaxed);
        let writes = shared.writes.load(Relaxed);
        let mark_errors = shared.mark_errors.load(Relaxed);
        metrics::counter!(PRIMARY_READS, "name" => name.clone()).absolute(primary_reads);
        metrics::counter!(WRITES, "name" => name.clone()).absolute(writes);
        metrics::counter!(MARK_ERRORS, "name" => name.clone()).absolute(mark_errors);
        metrics::counter!(WAL_FLUSHES, "name" => name).absolute(self.wal_flushes());
        let healthy = replicas.iter().filter(|r| r.healthy).count();
        let (health, state) = if healthy == replicas.len() {
            (Health::Ready, "in_sync")
        } else {
            (Health::Degraded, "lagging")
        };
        Report::new("consistency", shared.name.to_string(), health, state)
            .with_value("replicas", replicas.len() as f64)
            .with_value("healthy_replicas", healthy as f64)
            .with_value(
                "max_lag_bytes",
                replicas.iter().map(|r| r.lag_bytes).max().unwrap_or(0) as f64,
            )
            .with_value(
                "max_lag_seconds",
                replicas
                    .iter()
                    .map(|r| r.lag.as_secs_f64())
                    .fold(0.0, f64::max),
            )
            .with_value("primary_reads", primary_reads as f64)
            .with_value("writes", writes as f64)
            .with_value("mark_errors", mark_errors as f64)
            .with_value("wal_flushes", self.wal_flushes() as f64)
    }
}
