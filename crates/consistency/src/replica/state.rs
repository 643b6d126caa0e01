//! What a replica set's clones, its router, its handles and its monitor share: per node, the
//! pool, the monitor's client and the last probe's results in atomics (read without a lock on
//! the request path).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use deadpool_postgres::{ClientWrapper, Pool};
use tokio::{sync::watch, time::Instant};
use tower_patterns_core::rng::SplitMix64;

use super::wal::{self, Geometry, ProbeError};
use crate::mark::Lsn;

/// The set's settings, fixed at `build()`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) max_lag_bytes: u64,
    pub(crate) max_lag: Duration,
    pub(crate) probe_every: Duration,
    pub(crate) probe_fast: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) observe_reads: bool,
}

/// The monitor's connection to one node, shared with the router (tokio-postgres pipelines
/// concurrent queries on one client).
#[derive(Default)]
pub(crate) struct ClientSlot(Mutex<Option<Arc<ClientWrapper>>>);

impl ClientSlot {
    pub(crate) fn get(&self) -> Option<Arc<ClientWrapper>> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    pub(crate) fn set(&self, client: Option<Arc<ClientWrapper>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = client;
    }
}

/// The primary.
pub(crate) struct Primary {
    pub(crate) pool: Pool,
    pub(crate) client: ClientSlot,
    /// The last insert position read (normalised), `u64::MAX` before the first.
    pub(crate) lsn: AtomicU64,
    /// `wal_block_size` and `wal_segment_size`, 0 while unknown.
    block: AtomicU64,
    segment: AtomicU64,
    /// The positions the monitor saw the primary reach, and when it first saw each (the
    /// latest [`HISTORY`]): how long a replica has been behind.
    history: Mutex<VecDeque<(Lsn, Instant)>>,
}

/// How many of the primary's recent positions are kept to measure lag in seconds (at one
/// probe every 250 ms, about a minute; while requests wait, probes are faster and the window
/// shorter, but a lag that long makes the replica unhealthy anyway).
const HISTORY: usize = 256;

/// Since when a replica has been behind the primary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Behind {
    /// It has replayed the primary's last known position.
    CaughtUp,
    /// Since the primary first passed its replay position (or, behind everything kept, at
    /// least since the oldest position kept).
    Since(Instant),
    /// The primary has not been probed yet.
    Unknown,
}

const UNKNOWN: u64 = u64::MAX;

impl Primary {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            client: ClientSlot::default(),
            lsn: AtomicU64::new(UNKNOWN),
            block: AtomicU64::new(0),
            segment: AtomicU64::new(0),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    /// Takes `lsn`, read from the primary just now, as its last known position (unless a
    /// later one is known already), and records it.
    pub(crate) fn observe(&self, lsn: Lsn) {
        let _ = self.lsn.fetch_update(Relaxed, Relaxed, |now| {
            (now == UNKNOWN || now < lsn.0).then_some(lsn.0)
        });
        self.record(lsn);
    }

    /// Records a position the primary has reached, if it is new.
    pub(crate) fn record(&self, lsn: Lsn) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if history.back().is_some_and(|(last, _)| *last >= lsn) {
            return;
        }
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((lsn, Instant::now()));
    }

    /// Since when a replica that has replayed up to `replay` has been behind.
    pub(crate) fn behind_since(&self, replay: Lsn) -> Behind {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        match history.back() {
            None => Behind::Unknown,
            Some((last, _)) if replay >= *last => Behind::CaughtUp,
            // The first position the primary reached past `replay`: it has been behind since.
            _ => history
                .iter()
                .find(|(lsn, _)| *lsn > replay)
                .map_or(Behind::CaughtUp, |(_, at)| Behind::Since(*at)),
        }
    }

    pub(crate) fn last_lsn(&self) -> Option<Lsn> {
        let lsn = self.lsn.load(Relaxed);
        (lsn != UNKNOWN).then_some(Lsn(lsn))
    }

    pub(crate) fn geometry(&self) -> Option<Geometry> {
        Geometry::checked(self.block.load(Relaxed), self.segment.load(Relaxed))
    }

    pub(crate) fn set_geometry(&self, geometry: Option<Geometry>) {
        let (block, segment) = geometry.map_or((0, 0), |g| (g.block, g.segment));
        self.block.store(block, Relaxed);
        self.segment.store(segment, Relaxed);
    }

    /// The primary's insert position now: on the monitor's client, else on a connection of
    /// the pool (reading the WAL geometry there first if the monitor has not yet).
    pub(crate) async fn insert_lsn_now(&self, within: Duration) -> Result<Lsn, ProbeError> {
        let read = async {
            if let Some(client) = self.client.get()
                && let Ok(lsn) = wal::insert_lsn(&client, self.geometry()).await
            {
                return Ok(lsn);
            }
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| ProbeError::NoConnection(e.to_string()))?;
            if self.geometry().is_none() {
                self.set_geometry(wal::geometry(&client).await?);
            }
            wal::insert_lsn(&client, self.geometry()).await
        };
        let lsn = tokio::time::timeout(within, read)
            .await
            .map_err(|_| ProbeError::TimedOut)??;
        self.observe(lsn);
        Ok(lsn)
    }
}

/// One replica: its pool, the monitor's client, the last probe and the router's counters.
pub(crate) struct Replica {
    pub(crate) name: Arc<str>,
    pub(crate) pool: Pool,
    pub(crate) client: ClientSlot,
    pub(crate) up: AtomicBool,
    pub(crate) healthy: AtomicBool,
    pub(crate) replay: AtomicU64,
    pub(crate) receive: AtomicU64,
    pub(crate) lag_bytes: AtomicU64,
    /// An `f64`'s bits.
    pub(crate) lag_seconds: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) reads: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) gauges: Gauges,
}

/// A replica's gauges, looked up once at `build()` (the monitor sets them after every probe).
pub(crate) struct Gauges {
    pub(crate) lag_bytes: metrics::Gauge,
    pub(crate) lag_seconds: metrics::Gauge,
    pub(crate) up: metrics::Gauge,
}

impl Replica {
    pub(crate) fn new(set: &str, name: Arc<str>, pool: Pool) -> Self {
        let gauge = |what: &'static str| {
            let g = metrics::gauge!(what, "name" => set.to_owned(), "replica" => name.to_string());
            g.set(0.0);
            g
        };
        let gauges = Gauges {
            lag_bytes: gauge(super::handle::LAG_BYTES),
            lag_seconds: gauge(super::handle::LAG_SECONDS),
            up: gauge(super::handle::UP),
        };
        for counter in [super::handle::READS, super::handle::FALLBACKS] {
            metrics::counter!(counter, "name" => set.to_owned(), "replica" => name.to_string())
                .absolute(0);
        }
        Self {
            name,
            pool,
            client: ClientSlot::default(),
            up: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            replay: AtomicU64::new(0),
            receive: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_seconds: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            reads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            gauges,
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub(crate) fn replay(&self) -> Lsn {
        Lsn(self.replay.load(Relaxed))
    }

    /// True when a read here now sees everything up to `lsn`.
    pub(crate) fn has_reached(&self, lsn: Lsn) -> bool {
        self.is_healthy() && self.replay() >= lsn
    }

    /// The router could not get a connection from its pool: down until the monitor reaches it
    /// again.
    pub(crate) fn mark_down(&self) {
        self.healthy.store(false, Relaxed);
        self.up.store(false, Relaxed);
        self.gauges.up.set(0.0);
    }

    /// Its replay position now: on the monitor's client, else on a connection of its pool;
    /// at most `within`.
    pub(crate) async fn replay_lsn_now(&self, within: Duration) -> Result<Lsn, ProbeError> {
        let read = async {
            if let Some(client) = self.client.get()
                && let Ok(lsn) = wal::replay_lsn(&client).await
            {
                return Ok(lsn);
            }
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| ProbeError::NoConnection(e.to_string()))?;
            wal::replay_lsn(&client).await
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| ProbeError::TimedOut)?
    }
}

/// Everything one set shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) options: Options,
    pub(crate) primary: Primary,
    pub(crate) replicas: Box<[Replica]>,
    /// Requests waiting for a mark: the monitor probes at `probe_fast` while any are.
    pub(crate) waiters: AtomicUsize,
    /// The latest WAL position any request has waited for (it only grows): while the
    /// primary has not flushed that far, the monitor makes it flush (see `monitor`).
    pub(crate) wanted: AtomicU64,
    /// Nudges sent to the primary.
    pub(crate) wal_flushes: AtomicU64,
    /// Bumped after every probe.
    pub(crate) probed: watch::Sender<u64>,
    /// Bumped to wake the monitor's loops early (a first waiter: probe fast from now).
    pub(crate) wake: watch::Sender<u64>,
    /// True once the monitor must end.
    pub(crate) stop: watch::Sender<bool>,
    /// Each node's reconnect schedule, behind a lock per node (the monitor's loop and
    /// `refresh()` take turns).
    pub(crate) prober: super::monitor::Prober,
    pub(crate) spawned: AtomicBool,
    /// Seeds the per-read SplitMix64 generator of the two random picks.
    pub(crate) rng: AtomicU64,
    pub(crate) primary_reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) mark_errors: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        options: Options,
        primary: Pool,
        replicas: Vec<(Arc<str>, Pool)>,
    ) -> Arc<Self> {
        super::handle::register(&name);
        let replicas: Box<[Replica]> = replicas
            .into_iter()
            .map(|(r, pool)| Replica::new(&name, r, pool))
            .collect();
        let prober = super::monitor::Prober::new(replicas.len());
        Arc::new(Self {
            options,
            primary: Primary::new(primary),
            replicas,
            waiters: AtomicUsize::new(0),
            wanted: AtomicU64::new(0),
            wal_flushes: AtomicU64::new(0),
            probed: watch::Sender::new(0),
            wake: watch::Sender::new(0),
            stop: watch::Sender::new(false),
            prober,
            spawned: AtomicBool::new(false),
            rng: AtomicU64::new(0),
            primary_reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            mark_errors: AtomicU64::new(0),
            name,
        })
    }

    /// A generator for one read's two picks (one atomic add: each read gets its own seed).
    pub(crate) fn rng(&self) -> SplitMix64 {
        SplitMix64::new(self.rng.fetch_add(1, Relaxed))
    }

    /// Asks the monitor to end.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// A request waiting for a mark, counted while it lives.
pub(crate) struct Waiter(Arc<Shared>);

impl Waiter {
    /// Counts a request waiting for `wanted` (a token of another instance may be past the
    /// primary's position this monitor last saw: the flush step caps it at the primary's
    /// insert position).
    pub(crate) fn register(shared: Arc<Shared>, wanted: Lsn) -> Self {
        shared.wanted.fetch_max(wanted.0, Relaxed);
        if shared.waiters.fetch_add(1, Relaxed) == 0 {
            shared.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        Self(shared)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // The last waiter gone: nothing is wanted any more.
        if self.0.waiters.fetch_sub(1, Relaxed) == 1 {
            self.0.wanted.store(0, Relaxed);
        }
    }
}

/// A read in flight on a replica, counted for the two-choice pick while it lives.
pub(crate) struct InFlight(pub(crate) Arc<Shared>, pub(crate) usize);

impl InFlight {
    pub(crate) fn start(shared: Arc<Shared>, replica: usize) -> Self {
        shared.replicas[replica].in_flight.fetch_add(1, Relaxed);
        Self(shared, replica)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.replicas[self.1].in_flight.fetch_sub(1, Relaxed);
    }
}
