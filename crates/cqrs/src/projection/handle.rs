//! The projection's handle: position, lag, status, and the operator's controls.
//!
//! The runner publishes its position in a `tokio::sync::watch` after every commit, so
//! [`ProjectionHandle::position`] is a read of a shared value and
//! [`ProjectionHandle::wait_for`] parks on the channel (no polling): what read-your-writes
//! builds on.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tower_patterns_core::observe::{Health, Report, StateHandle};
use tower_patterns_eventstore::{EventStore, GlobalPosition};

use super::{ProjectionError, Tables};

/// Where a projection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Not started yet.
    Starting,
    /// Waiting for the right to run (another process holds the projection's lease).
    Standby,
    /// Applying events, behind the head of the log.
    CatchingUp,
    /// Caught up: it applies events as they are appended.
    Live,
    /// An event (or the event store, or the read model's database) failed; the runner tries
    /// again after a backoff.
    Retrying {
        /// The attempts that failed so far (1 after the first failure).
        attempt: u32,
        /// The last error.
        error: String,
    },
    /// The failure policy stopped the projection before an event; its checkpoint stays just
    /// before it. [`ProjectionHandle::resume`] tries the event again.
    Stopped {
        /// Why, naming the event's stream, version and position.
        error: String,
    },
    /// A rebuild fills the next version of the tables beside the live one, which keeps up.
    Rebuilding {
        /// Where the rebuild stands.
        position: GlobalPosition,
    },
    /// Shut down through the handle.
    ShutDown,
}

impl Status {
    /// The status in one word, as reports show it: `starting`, `standby`, `catching_up`,
    /// `live`, `retrying`, `stopped`, `rebuilding` or `shut_down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::CatchingUp => "catching_up",
            Self::Live => "live",
            Self::Retrying { .. } => "retrying",
            Self::Stopped { .. } => "stopped",
            Self::Rebuilding { .. } => "rebuilding",
            Self::ShutDown => "shut_down",
        }
    }

    /// How a projection in this status is doing: live, catching up or rebuilding is
    /// ready; starting, on standby or retrying is degraded; stopped or shut down is
    /// unavailable.
    pub fn health(&self) -> Health {
        match self {
            Self::CatchingUp | Self::Live | Self::Rebuilding { .. } => Health::Ready,
            Self::Starting | Self::Standby | Self::Retrying { .. } => Health::Degraded,
            Self::Stopped { .. } | Self::ShutDown => Health::Unavailable,
        }
    }
}

/// A projection's lag behind the head of the log.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Lag {
    /// Events not yet applied (counted up to 100,000).
    pub events: u64,
    /// Seconds between the first event not applied yet and the head of the log, as the store
    /// recorded them (0 when caught up).
    pub seconds: f64,
}

/// The most events a lag query counts.
pub(crate) const LAG_COUNT_LIMIT: u64 = 100_000;

/// What the handle asks of the runner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Control {
    pub(crate) shutdown: bool,
    pub(crate) resumes: u64,
    pub(crate) rebuilds: u64,
}

type LagFuture<'a> = Pin<Box<dyn Future<Output = Result<Lag, ProjectionError>> + Send + 'a>>;

/// The store, with its type erased, for lag queries from the handle.
trait LagProbe: Send + Sync {
    fn lag(&self, after: GlobalPosition) -> LagFuture<'_>;
}

struct StoreProbe<S>(Arc<S>);

impl<S: EventStore> LagProbe for StoreProbe<S> {
    fn lag(&self, after: GlobalPosition) -> LagFuture<'_> {
        Box::pin(measure_lag(&*self.0, after))
    }
}

/// The lag of a projection that applied everything up to `after`: two or three indexed
/// queries (count, head, the first event not applied).
pub(crate) async fn measure_lag<S: EventStore>(
    store: &S,
    after: GlobalPosition,
) -> Result<Lag, ProjectionError> {
    let events = store.count_after(after, LAG_COUNT_LIMIT).await?;
    if events == 0 {
        return Ok(Lag::default());
    }
    let head = store.head().await?;
    let first = store.read_all(after, 1).await;
    let seconds = match (head, first) {
        (Some(head), Ok(first)) => first.first().map_or(0.0, |f| {
            let micros = head
                .metadata
                .recorded_at_micros
                .saturating_sub(f.metadata.recorded_at_micros);
            micros as f64 / 1e6
        }),
        // A corrupt first event has no readable time: count events only.
        _ => 0.0,
    };
    Ok(Lag { events, seconds })
}

/// The state a runner and its handles share.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) position: watch::Sender<GlobalPosition>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) control: watch::Sender<Control>,
    tables: Mutex<Tables>,
    lag_events: AtomicU64,
    lag_seconds: AtomicU64,
    last_error: Mutex<Option<Arc<ProjectionError>>>,
    probe: Box<dyn LagProbe>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new<S: EventStore>(name: Arc<str>, store: Arc<S>) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::new(Tables::new(name.clone(), 1)),
            name,
            position: watch::Sender::new(GlobalPosition::START),
            status: watch::Sender::new(Status::Starting),
            control: watch::Sender::new(Control::default()),
            lag_events: AtomicU64::new(0),
            lag_seconds: AtomicU64::new(0),
            last_error: Mutex::new(None),
            probe: Box::new(StoreProbe(store)),
        })
    }

    pub(crate) fn set_status(&self, status: Status) {
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    pub(crate) fn publish(&self, position: GlobalPosition) {
        self.position.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
    }

    pub(crate) fn set_tables(&self, tables: Tables) {
        *lock(&self.tables) = tables;
    }

    pub(crate) fn set_error(&self, error: ProjectionError) {
        *lock(&self.last_error) = Some(Arc::new(error));
    }

    /// Stores the lag and sets the gauges.
    pub(crate) fn set_lag(&self, lag: Lag) {
        self.lag_events.store(lag.events, Ordering::Relaxed);
        self.lag_seconds
            .store(lag.seconds.to_bits(), Ordering::Relaxed);
        crate::metrics::set_lag(&self.name, lag);
    }

    pub(crate) fn lag_now(&self) -> Lag {
        Lag {
            events: self.lag_events.load(Ordering::Relaxed),
            seconds: f64::from_bits(self.lag_seconds.load(Ordering::Relaxed)),
        }
    }
}

/// A projection's handle: `Clone`, cheap, and it never slows the runner.
///
/// It implements [`StateHandle`] (pattern `cqrs`): live, catching up or rebuilding is
/// [`Health::Ready`], starting, on standby or retrying is [`Health::Degraded`], stopped or shut
/// down is [`Health::Unavailable`]; the report carries `position`, `commit`, `version`,
/// `lag_events` and `lag_seconds` (as last measured: the runner measures once a second while
/// behind, stopped or retrying an event, and [`lag`](Self::lag) measures now).
#[derive(Clone)]
pub struct ProjectionHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProjectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("name", &self.shared.name)
            .field("position", &self.position())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl ProjectionHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The position of the last event applied (and committed) to the live copy.
    pub fn position(&self) -> GlobalPosition {
        *self.shared.position.borrow()
    }

    /// Where the projection stands now.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// The live copy's tables: what readers query.
    pub fn tables(&self) -> Tables {
        lock(&self.shared.tables).clone()
    }

    /// The error that last stopped the projection (or abandoned a rebuild), typed: a
    /// [`ProjectionError::Apply`] names the event's stream, version and position.
    pub fn last_error(&self) -> Option<Arc<ProjectionError>> {
        lock(&self.shared.last_error).clone()
    }

    /// Waits until the live copy has applied every event up to `position`, at most `within`:
    /// true once it has (at once when it already has, even with `within` zero), false when
    /// the time ran out. Parks on the runner's position channel: no polling.
    pub async fn wait_for(&self, position: GlobalPosition, within: Duration) -> bool {
        let mut rx = self.shared.position.subscribe();
        if *rx.borrow_and_update() >= position {
            return true;
        }
        if within.is_zero() {
            return false;
        }
        matches!(
            tokio::time::timeout(within, rx.wait_for(|p| *p >= position)).await,
            Ok(Ok(_))
        )
    }

    /// Measures the lag now (a count of the events after the position, bounded at 100,000,
    /// and the head's time), and sets the lag gauges.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when the event store fails.
    pub async fn lag(&self) -> Result<Lag, ProjectionError> {
        let lag = self.shared.probe.lag(self.position()).await?;
        self.shared.set_lag(lag);
        Ok(lag)
    }

    /// Tries the event that stopped the projection again (its attempts start over). No
    /// effect unless it is [`Status::Stopped`].
    pub fn resume(&self) {
        self.shared.control.send_modify(|c| c.resumes += 1);
    }

    /// Builds the next version of the read model from the start of the log into fresh
    /// tables while the live copy keeps up, then swaps them in one transaction
    /// ([`tables`](Self::tables) then names the new copy). A rebuild already under way is
    /// not restarted; one interrupted by a shutdown or a crash is discarded when the runner
    /// starts again. If the failure policy stops it, the rebuild is abandoned (its tables
    /// dropped; [`last_error`](Self::last_error) names the event) and the live copy goes on.
    /// A failure of the new copy itself (its tables' creation, a write, the swap) abandons
    /// it the same way when trying again cannot help; one that may pass (a busy or
    /// unreachable database) is tried again after a backoff while the live copy goes on,
    /// up to 20 times in a row.
    /// For an external effect a rebuild replays the log into the same effect (which must take
    /// repeats: an inbox, or idempotent writes).
    pub fn rebuild(&self) {
        self.shared.control.send_modify(|c| c.rebuilds += 1);
    }

    /// Stops the runner at its next step (between transactions): `run()` returns `Ok`.
    pub fn shutdown(&self) {
        self.shared.control.send_modify(|c| c.shutdown = true);
    }

    /// Waits until the status satisfies `pred`, at most `within`; returns the status seen
    /// last. For tests and operators' tools.
    pub async fn wait_for_status(
        &self,
        within: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Status {
        let mut rx = self.shared.status.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| pred(s))).await;
        rx.borrow().clone()
    }
}

impl StateHandle for ProjectionHandle {
    fn pattern(&self) -> &'static str {
        "cqrs"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn health(&self) -> Health {
        self.shared.status.borrow().health()
    }

    fn report(&self) -> Report {
        let status = self.status();
        let position = self.position();
        let lag = self.shared.lag_now();
        crate::metrics::set_lag(&self.shared.name, lag);
        Report::new(
            "cqrs",
            self.shared.name.to_string(),
            status.health(),
            status.as_str(),
        )
        .with_value("position", position.index as f64)
        .with_value("commit", position.commit as f64)
        .with_value("version", f64::from(self.tables().version()))
        .with_value("lag_events", lag.events as f64)
        .with_value("lag_seconds", lag.seconds)
    }
}
