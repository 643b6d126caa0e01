//! The loop that drives one projection.
//!
//! ```text
//! acquire (the lease, where the target has one) → open the live copy's checkpoint
//! loop: read a page after the checkpoint
//!       empty         → Live, lag 0, wait for appends (or a command from the handle)
//!       events        → apply them and the checkpoint in one transaction (compare-and-set)
//!       an event fails → the failure policy: retry it alone after a backoff, dead-letter it
//!                       (checkpoint past it, same transaction), or stop before it
//!       a corrupt row → smaller pages isolate it, the good events before it are applied,
//!                       then it fails as an event does (permanent): never skipped silently
//!       fenced        → another runner moved the checkpoint: back to acquire
//! ```
//!
//! A rebuild fills the next version of the tables from the start of the log (its own
//! checkpoint row `name#rebuild`), alternating a page for it and a page for the live copy;
//! when it reaches the live copy's position the target swaps them in one transaction. A
//! rebuild that a crash or a shutdown interrupts is discarded (its tables dropped) when the
//! runner starts again: ask for it again. The failure policy applies to the rebuild's events
//! too, except that a stop abandons the rebuild (its tables dropped, the handle's
//! `last_error` naming the event) rather than the live copy, which goes on; a retry's backoff
//! holds both copies. A failure of the rebuild's copy itself (opening it, a write, the swap)
//! that cannot pass (a permanent error, such as a failing `create` or a schema error)
//! abandons it the same way; one that may pass (a busy database, a lost connection) is
//! tried again after the backoff below, the rebuild alone waiting while the live copy goes
//! on, and abandons it after 20 failures in a row. Errors of the event store hold both
//! copies and are waited out.
//!
//! While the live copy is held (stopped, or retrying after a backoff) the runner measures
//! its lag once a second, so the gauges show the log running ahead; a measurement during a
//! backoff gives up when the backoff ends.
//!
//! Errors of the event store (a lost connection) and of the read model's database between
//! events are retried with a backoff (100 ms doubling to 10 s), the status showing them;
//! only a failure to start (the first `open`, where the projection creates its tables)
//! ends `run` with an error.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};
use tower_patterns_core::{backoff::Backoff, rng::SplitMix64};
use tower_patterns_eventstore::{Error as StoreError, EventStore, GlobalPosition, RecordedEvent};

use super::{
    ApplyError, ProjectionError, Status, Tables,
    builder::Settings,
    handle::{Control, Lag, Shared, measure_lag},
};
mod failure;

use crate::{
    metrics::Meters,
    target::{Slot, Target},
};
use failure::unreadable;

/// The suffix of a rebuild's checkpoint row.
pub(crate) const REBUILD_SUFFIX: &str = "#rebuild";

/// The event type a dead letter of a row that could not be read carries (with the nil id).
pub(crate) const UNREADABLE: &str = "(unreadable)";

/// How often, at most, the runner measures its lag while behind, stopped or retrying.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// The backoff between tries after an error of the store or the database.
const ERROR_BACKOFF: Backoff = Backoff::Exponential {
    base: Duration::from_millis(100),
    multiplier: 2.0,
};
const ERROR_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// How many failures in a row of a rebuild's copy that may pass (a busy database, a lost
/// connection) the rebuild waits out, with the backoff above, before it is abandoned: about
/// two and a half minutes.
pub(crate) const REBUILD_ATTEMPTS: u32 = 20;

/// Why a step ended early.
enum Exit {
    Shutdown,
    Fenced,
    /// A store or database error: try again after a backoff.
    Transient(ProjectionError),
    /// The failure policy stopped the rebuild (the live copy goes on).
    RebuildStopped(ProjectionError),
}

impl From<ProjectionError> for Exit {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::Fenced { .. } => Self::Fenced,
            ProjectionError::Shutdown => Self::Shutdown,
            e => Self::Transient(e),
        }
    }
}

impl From<StoreError> for Exit {
    fn from(e: StoreError) -> Self {
        Self::Transient(ProjectionError::Store(e))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Live,
    Rebuild,
}

/// One copy being filled, and where it stands.
struct Cursor {
    slot: Slot,
    position: GlobalPosition,
    /// The page size: the batch, smaller while a corrupt row is being isolated.
    limit: usize,
}

struct Runner<S, T> {
    store: Arc<S>,
    target: T,
    settings: Settings,
    shared: Arc<Shared>,
    control: watch::Receiver<Control>,
    seen: Control,
    rng: SplitMix64,
    meters: Meters,
    live: Cursor,
    rebuild: Option<Cursor>,
    rebuild_wanted: bool,
    lag_measured: Option<Instant>,
    failures: u32,
    /// Fences in a row with no progress of the stored checkpoint between them.
    fences: u32,
    /// The live checkpoint the last `start` found.
    opened_at: Option<GlobalPosition>,
    previous_delay: Duration,
    /// Failures in a row of the rebuild's copy, its last backoff, and when it may try again.
    rebuild_failures: u32,
    rebuild_previous: Duration,
    rebuild_retry_at: Option<Instant>,
}

/// Runs the projection until shut down.
pub(crate) async fn run<S: EventStore, T: Target>(
    store: Arc<S>,
    target: T,
    settings: Settings,
    shared: Arc<Shared>,
) -> Result<(), ProjectionError> {
    let control = shared.control.subscribe();
    let live = Cursor {
        slot: Slot {
            checkpoint: settings.name.to_string(),
            tables: Tables::new(settings.name.clone(), 1),
        },
        position: GlobalPosition::START,
        limit: settings.batch,
    };
    let seen = *control.borrow();
    let mut runner = Runner {
        rng: SplitMix64::new(settings.seed),
        meters: Meters::new(&settings.name),
        seen,
        control,
        store,
        target,
        settings,
        shared,
        live,
        rebuild: None,
        rebuild_wanted: false,
        lag_measured: None,
        failures: 0,
        fences: 0,
        opened_at: None,
        previous_delay: Duration::ZERO,
        rebuild_failures: 0,
        rebuild_previous: Duration::ZERO,
        rebuild_retry_at: None,
    };
    // A rebuild asked for before the runner started counts.
    runner.seen.rebuilds = 0;
    let result = runner.run().await;
    match &result {
        Ok(()) => runner.shared.set_status(Status::ShutDown),
        Err(e) => runner.shared.set_status(Status::Stopped {
            error: e.to_string(),
        }),
    }
    result
}

/// Returns when the handle asks for a shutdown.
async fn until_shutdown(control: &mut watch::Receiver<Control>) {
    // The sender lives in `Shared`, which the runner holds: `wait_for` cannot fail.
    let _ = control.wait_for(|c| c.shutdown).await;
}

impl<S: EventStore, T: Target> Runner<S, T> {
    async fn run(&mut self) -> Result<(), ProjectionError> {
        let mut started = false;
        loop {
            if self.fences >= 2 {
                // Fenced again with the checkpoint where it was: no rival is making progress,
                // so something else moves it; do not spin.
                let fenced = ProjectionError::Fenced {
                    projection: self.settings.name.to_string(),
                };
                if self.back_off(fenced).await.is_err() {
                    return Ok(());
                }
            }
            match self.start().await {
                Ok(()) => started = true,
                Err(Exit::Shutdown) => return Ok(()),
                Err(Exit::Fenced) => {
                    self.fences += 1;
                    continue;
                }
                Err(Exit::Transient(e) | Exit::RebuildStopped(e)) if !started => return Err(e),
                Err(Exit::Transient(e) | Exit::RebuildStopped(e)) => {
                    if self.back_off(e).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            }
            loop {
                match self.step().await {
                    Ok(()) => {
                        self.failures = 0;
                        self.previous_delay = Duration::ZERO;
                    }
                    Err(Exit::Shutdown) => return Ok(()),
                    Err(Exit::Fenced) => {
                        tracing::warn!(
                            target: "tower_patterns::cqrs",
                            projection = %self.settings.name,
                            "fenced: another runner moved the checkpoint"
                        );
                        if self.rebuild.take().is_some() {
                            self.rebuild_wanted = true;
                        }
                        self.rebuild_recovered();
                        self.fences += 1;
                        break;
                    }
                    Err(Exit::Transient(e) | Exit::RebuildStopped(e)) => {
                        if self.back_off(e).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Waits after an error of the store or database; `Err` on shutdown.
    async fn back_off(&mut self, error: ProjectionError) -> Result<(), ()> {
        self.failures = self.failures.saturating_add(1);
        let delay = ERROR_BACKOFF.delay(
            self.failures,
            self.previous_delay,
            ERROR_BACKOFF_CAP,
            &mut self.rng,
        );
        self.previous_delay = delay;
        tracing::warn!(
            target: "tower_patterns::cqrs",
            projection = %self.settings.name,
            attempt = self.failures,
            error = %error,
            "projection error; trying again after a backoff"
        );
        // The lag is measured through the store: not while the store is what fails.
        let measure = !matches!(error, ProjectionError::Store(_));
        self.shared.set_status(Status::Retrying {
            attempt: self.failures,
            error: error.to_string(),
        });
        self.sleep(delay, measure).await.map_err(drop)
    }

    /// Waits `delay` (or until a shutdown), measuring the lag once a second meanwhile when
    /// `measure`: a projection held back by retries shows how far the log runs ahead of it.
    async fn sleep(&mut self, delay: Duration, measure: bool) -> Result<(), Exit> {
        let until = Instant::now() + delay;
        loop {
            if measure {
                // Bounded by the backoff: a measurement waiting on a database that is down
                // (the read model's may be the store's) must not put the next try off.
                self.measure_lag_due(Some(until)).await?;
            }
            let next = self
                .lag_measured
                .filter(|_| measure)
                .map_or(until, |t| t + LAG_EVERY)
                .min(until);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = until_shutdown(&mut self.control) => return Err(Exit::Shutdown),
            }
            if Instant::now() >= until {
                return Ok(());
            }
        }
    }

    /// Measures the live copy's lag and sets the gauges, unless it was measured less than a
    /// second ago; gives up on the measurement at `deadline`.
    async fn measure_lag_due(&mut self, deadline: Option<Instant>) -> Result<(), Exit> {
        if self.lag_measured.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return Ok(());
        }
        self.lag_measured = Some(Instant::now());
        let expired = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let measured = tokio::select! {
            r = measure_lag(&*self.store, self.live.position) => Some(r),
            () = expired => None,
            () = until_shutdown(&mut self.control) => return Err(Exit::Shutdown),
        };
        match measured {
            Some(Ok(lag)) => self.shared.set_lag(lag),
            None => tracing::debug!(
                target: "tower_patterns::cqrs",
                projection = %self.settings.name,
                "lag not measured in time"
            ),
            Some(Err(e)) => tracing::debug!(
                target: "tower_patterns::cqrs",
                projection = %self.settings.name,
                error = %e,
                "lag not measured"
            ),
        }
        Ok(())
    }

    /// Acquires the right to run, opens the live copy and discards an interrupted rebuild.
    async fn start(&mut self) -> Result<(), Exit> {
        if self.control.borrow().shutdown {
            return Err(Exit::Shutdown);
        }
        {
            let name = self.settings.name.clone();
            let acquire = self.target.acquire(&name);
            tokio::pin!(acquire);
            let acquired = tokio::select! {
                biased;
                r = &mut acquire => r,
                () = std::future::ready(()) => {
                    self.shared.set_status(Status::Standby);
                    tokio::select! {
                        r = &mut acquire => r,
                        () = until_shutdown(&mut self.control) => return Err(Exit::Shutdown),
                    }
                }
            };
            acquired?;
        }
        let name = self.settings.name.clone();
        let opening = Slot {
            checkpoint: name.to_string(),
            tables: Tables::new(name.clone(), 1),
        };
        let stored = self.target.open(&opening).await?;
        if self.opened_at.is_none_or(|p| stored.position > p) {
            self.fences = 0;
        }
        self.opened_at = Some(stored.position);
        let slot = Slot {
            checkpoint: name.to_string(),
            tables: Tables::new(name, stored.version),
        };
        self.shared.set_tables(slot.tables.clone());
        self.shared.publish(stored.position);
        self.live = Cursor {
            slot,
            position: stored.position,
            limit: self.settings.batch,
        };
        self.rebuild = None;
        self.rebuild_recovered();
        let leftover = self.rebuild_slot();
        self.target.discard(&leftover).await?;
        self.shared.set_status(Status::CatchingUp);
        Ok(())
    }

    fn rebuild_slot(&self) -> Slot {
        Slot {
            checkpoint: format!("{}{REBUILD_SUFFIX}", self.settings.name),
            tables: self.live.slot.tables.next(),
        }
    }

    fn cursor(&mut self, which: Which) -> &mut Cursor {
        match which {
            Which::Live => &mut self.live,
            Which::Rebuild => self.rebuild.as_mut().unwrap_or(&mut self.live),
        }
    }

    /// Takes the handle's commands: a shutdown, or a rebuild.
    async fn take_commands(&mut self) -> Result<(), Exit> {
        let control = *self.control.borrow_and_update();
        if control.shutdown {
            return Err(Exit::Shutdown);
        }
        if control.rebuilds > self.seen.rebuilds {
            self.seen.rebuilds = control.rebuilds;
            if self.rebuild.is_none() {
                self.rebuild_wanted = true;
            }
        }
        if self.rebuild_wanted && self.rebuild_due() {
            self.rebuild_wanted = false;
            let slot = self.rebuild_slot();
            let opened = match self.target.discard(&slot).await {
                Ok(()) => self.target.open(&slot).await,
                Err(e) => Err(e),
            };
            let stored = match opened.map_err(Exit::from) {
                Ok(stored) => stored,
                // The rebuild's copy cannot be opened: tried again later if that may help
                // (the live copy goes on meanwhile), abandoned if not (its `create` failed).
                Err(Exit::Transient(e)) => {
                    if self.rebuild_failed(e).await? {
                        self.rebuild_wanted = true;
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.rebuild_wanted = true;
                    return Err(e);
                }
            };
            self.rebuild_recovered();
            tracing::info!(
                target: "tower_patterns::cqrs",
                projection = %self.settings.name,
                version = slot.tables.version(),
                "rebuild started"
            );
            self.shared.set_status(Status::Rebuilding {
                position: stored.position,
            });
            self.rebuild = Some(Cursor {
                slot,
                position: stored.position,
                limit: self.settings.batch,
            });
        }
        Ok(())
    }

    /// One turn: a page of the rebuild (or the swap), a page of the live copy, or a wait.
    async fn step(&mut self) -> Result<(), Exit> {
        self.take_commands().await?;
        let mut rebuilt = false;
        if let Some(rebuild) = self.rebuild.as_ref().filter(|_| self.rebuild_due()) {
            let result = if rebuild.position >= self.live.position {
                self.swap().await.map(|()| false)
            } else {
                let upper = self.live.position;
                self.step_cursor(Which::Rebuild, Some(upper)).await
            };
            match result {
                Ok(progressed) => {
                    rebuilt = progressed;
                    self.rebuild_recovered();
                }
                // The event store failing fails the live copy too: both wait it out.
                Err(Exit::Transient(e @ ProjectionError::Store(_))) => {
                    return Err(Exit::Transient(e));
                }
                // Its failure policy stopped the rebuild: abandoned, so it cannot hold the
                // live copy back.
                Err(Exit::RebuildStopped(e)) => self.abandon_rebuild(e).await?,
                // The rebuild's database work failed: the rebuild alone waits if that may
                // pass (the live copy goes on), and is abandoned if not.
                Err(Exit::Transient(e)) => {
                    self.rebuild_failed(e).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let progressed = self.step_cursor(Which::Live, None).await?;
        if !progressed && !rebuilt {
            self.idle().await?;
        }
        Ok(())
    }

    async fn swap(&mut self) -> Result<(), Exit> {
        let Some(rebuild) = &self.rebuild else {
            return Ok(());
        };
        self.target.swap(&self.live.slot, &rebuild.slot).await?;
        let tables = rebuild.slot.tables.clone();
        tracing::info!(
            target: "tower_patterns::cqrs",
            projection = %self.settings.name,
            version = tables.version(),
            "rebuild swapped in"
        );
        self.rebuild = None;
        self.live.slot.tables = tables.clone();
        self.shared.set_tables(tables);
        self.shared.set_status(Status::CatchingUp);
        Ok(())
    }

    /// Caught up and nothing to rebuild: waits for appends or a command.
    async fn idle(&mut self) -> Result<(), Exit> {
        if self.rebuild.is_none() {
            self.shared.set_status(Status::Live);
            if self.shared.lag_now() != Lag::default() {
                self.shared.set_lag(Lag::default());
            }
            self.lag_measured = None;
        }
        let after = self.live.position;
        // A rebuild waiting out a failure is tried again when its backoff ends.
        let retry_at = self.rebuild_retry_at;
        let rebuild_due = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.store.wait_for_events(after) => {}
            _ = self.control.changed() => {}
            () = rebuild_due => {}
        }
        Ok(())
    }

    /// Reads and applies one page of `which`; false when there was nothing to read.
    async fn step_cursor(
        &mut self,
        which: Which,
        upper: Option<GlobalPosition>,
    ) -> Result<bool, Exit> {
        let (slot, after, limit) = {
            let c = self.cursor(which);
            (c.slot.clone(), c.position, c.limit)
        };
        let mut page = match self.store.read_all(after, limit).await {
            Ok(page) => page,
            Err(e @ StoreError::Corrupt { .. }) => {
                if limit > 1 {
                    // Isolate the row: smaller pages apply the good events before it.
                    self.cursor(which).limit = (limit / 2).max(1);
                    return Ok(true);
                }
                let StoreError::Corrupt {
                    stream,
                    version,
                    position,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                let event = unreadable(stream, *version, *position);
                self.fail(which, &slot, event, ApplyError::from(e)).await?;
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(upper) = upper {
            page.retain(|e| e.position <= upper);
        }
        if page.is_empty() {
            return Ok(false);
        }
        let full = page.len() >= self.settings.batch;
        let applied = self.target.apply(&slot, after, &page).await?;
        if applied.count > 0 {
            self.advance(which, &page[applied.count - 1], applied.count);
        }
        if let Some(error) = applied.failed {
            let event = page.swap_remove(applied.count);
            self.fail(which, &slot, event, error).await?;
        }
        self.after_page(which, full).await?;
        Ok(true)
    }

    /// Sets the status after a page, and measures the lag while behind (at most once a
    /// second).
    async fn after_page(&mut self, which: Which, full: bool) -> Result<(), Exit> {
        if let Some(rebuild) = &self.rebuild {
            self.shared.set_status(Status::Rebuilding {
                position: rebuild.position,
            });
        } else if which == Which::Live && (full || *self.shared.status.borrow() != Status::Live) {
            self.shared.set_status(Status::CatchingUp);
        }
        if which == Which::Live && full {
            self.measure_lag_due(None).await?;
        }
        Ok(())
    }

    /// Records that `which` applied up to `last` (`count` events).
    fn advance(&mut self, which: Which, last: &RecordedEvent, count: usize) {
        self.meters.applied.increment(count as u64);
        self.pass(which, last.position);
    }

    fn pass(&mut self, which: Which, position: GlobalPosition) {
        self.cursor(which).position = position;
        if which == Which::Live {
            self.shared.publish(position);
        }
    }
}
