//! The dual write's handle: its counts, the writes the secondary missed, a way to wait for
//! the outbox to drain and to stop the worker.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::{DualError, MissedWrite, OutboxCounts};

/// Where a dual write's worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DualStatus {
    /// Not through its first round yet.
    Starting,
    /// Delivering; its last round had no failure.
    Live,
    /// Delivering a backlog (its last round was a full batch).
    CatchingUp,
    /// The secondary failed its last delivery; the entries wait for their retry.
    SecondaryFailing,
    /// The primary failed the worker's last read or bookkeeping (writes likely fail too).
    PrimaryFailing,
    /// Stopped: by [`DualWriteHandle::stop`], or every [`DualWrite`](super::DualWrite)
    /// clone was dropped. The outbox keeps what is left for the next dual write on this
    /// primary.
    Stopped,
}

pub(crate) const STARTING: u8 = 0;
pub(crate) const LIVE: u8 = 1;
pub(crate) const CATCHING_UP: u8 = 2;
pub(crate) const SECONDARY_FAILING: u8 = 3;
pub(crate) const PRIMARY_FAILING: u8 = 4;
pub(crate) const STOPPED: u8 = 5;

/// The outbox as the worker last counted it; `round` grows with every count.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) round: u64,
    pub(crate) counts: OutboxCounts,
}

pub(crate) type ListMissed =
    Box<dyn Fn(usize) -> BoxFuture<'static, Result<Vec<MissedWrite>, DualError>> + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) wake: Notify,
    pub(crate) tally: watch::Sender<Tally>,
    pub(crate) status: AtomicU8,
    pub(crate) pending: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) list_missed: ListMissed,
}

impl Shared {
    pub(crate) fn new(name: Arc<str>, list_missed: ListMissed) -> Self {
        Self {
            name,
            stop: watch::Sender::new(false),
            wake: Notify::new(),
            tally: watch::Sender::new(Tally::default()),
            status: AtomicU8::new(STARTING),
            pending: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            list_missed,
        }
    }

    pub(crate) fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, error: &DualError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

/// A dual write's handle: `Clone`, cheap, and it never slows writes. Reports as pattern
/// `strangler`.
#[derive(Clone)]
pub struct DualWriteHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for DualWriteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWriteHandle")
            .field("name", &self.shared.name)
            .field("status", &self.status())
            .field("pending", &self.pending())
            .field("missed", &self.missed_count())
            .finish_non_exhaustive()
    }
}

impl DualWriteHandle {
    /// Where the worker stands.
    pub fn status(&self) -> DualStatus {
        match self.shared.status.load(Ordering::Relaxed) {
            STARTING => DualStatus::Starting,
            LIVE => DualStatus::Live,
            CATCHING_UP => DualStatus::CatchingUp,
            SECONDARY_FAILING => DualStatus::SecondaryFailing,
            PRIMARY_FAILING => DualStatus::PrimaryFailing,
            _ => DualStatus::Stopped,
        }
    }

    /// Writes waiting for delivery to the secondary (missed ones included), as the worker
    /// last counted them plus the writes since.
    pub fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Writes recorded as missed, as the worker last counted them.
    pub fn missed_count(&self) -> u64 {
        self.shared.missed.load(Ordering::Relaxed)
    }

    /// Up to `limit` writes the secondary has missed, oldest first, read from the primary's
    /// outbox (so they survive restarts).
    ///
    /// # Errors
    ///
    /// When the primary cannot be read.
    pub async fn missed(&self, limit: usize) -> Result<Vec<MissedWrite>, DualError> {
        (self.shared.list_missed)(limit).await
    }

    /// Writes committed on the primary through this dual write since it was built.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Rows the worker stored on the secondary since it was built.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Relaxed)
    }

    /// Deliveries the secondary refused because it held the row at that version or a newer
    /// one (the version guard); each settled its entries.
    pub fn superseded(&self) -> u64 {
        self.shared.superseded.load(Ordering::Relaxed)
    }

    /// Failed deliveries since the dual write was built (each deferred with backoff).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// The worker's last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the worker counts an empty outbox, at most `within`; true if it did.
    /// Writes made while it waits must be delivered too.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let mut rx = self.shared.tally.subscribe();
        let from = rx.borrow().round;
        self.shared.wake.notify_one();
        tokio::time::timeout(
            within,
            rx.wait_for(|t| t.round > from && t.counts.pending == 0),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Asks the worker to stop after its current round. Entries left in the outbox are
    /// delivered by the next dual write built on this primary.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Waits until the worker has stopped, at most `within`; true if it has.
    pub async fn wait_stopped(&self, within: Duration) -> bool {
        let mut rx = self.shared.tally.subscribe();
        tokio::time::timeout(
            within,
            rx.wait_for(|_| self.status() == DualStatus::Stopped),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

impl StateHandle for DualWriteHandle {
    fn pattern(&self) -> &'static str {
        "strangler"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self) -> Report {
        let missed = self.missed_count();
        let (health, state) = match self.status() {
            DualStatus::Starting => (Health::Ready, "starting"),
            DualStatus::Live => (Health::Ready, "live"),
            DualStatus::CatchingUp => (Health::Ready, "catching_up"),
            DualStatus::SecondaryFailing => (Health::Degraded, "secondary_failing"),
            DualStatus::PrimaryFailing => (Health::Unavailable, "primary_failing"),
            DualStatus::Stopped => (Health::Unavailable, "stopped"),
        };
        let health = if missed > 0 {
            health.max(Health::Degraded)
        } else {
            health
        };
        Report::new("strangler", self.shared.name.to_string(), health, state)
            .with_value("pending", self.pending() as f64)
            .with_value("missed", missed as f64)
            .with_value("written", self.written() as f64)
            .with_value("applied", self.applied() as f64)
            .with_value("superseded", self.superseded() as f64)
            .with_value("failures", self.failures() as f64)
    }
}
