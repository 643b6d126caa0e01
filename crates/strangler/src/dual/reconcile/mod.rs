//! The reconciler: compares the primary's table with the secondary's and, with repair on,
//! makes the secondary's rows the primary's.
//!
//! Both tables are walked in key order, a batch at a time from each (a merge join), so a run
//! holds two batches in memory whatever the tables' size. A difference is one of
//! [`DifferenceKind`]: missing in the secondary, extra in it, or held by both with another
//! value or version. The primary is the truth: a repair copies the primary's row as it is at
//! that moment over the secondary's, or removes the secondary's extra row, but only if the
//! secondary's row is still what the run saw (a delivery that landed meanwhile is never
//! undone); it then clears the outbox entries the repaired row covers, missed ones included.
//!
//! A row that is still on its way (in the outbox) shows as a difference; repairing it early
//! is harmless, as its delivery then finds the secondary up to date.

mod handle;
mod report;
mod run;

use std::{fmt, sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::task::JoinHandle;
use tower_patterns_core::{ConfigError, error::check_name};

pub use handle::ReconcilerHandle;
pub use report::{Difference, DifferenceKind, ReconcileReport};

use super::{
    DualError, NoPrimary, NoSecondary, RECONCILE_DIFFERENCES, RECONCILE_REPAIRED, RECONCILE_RUNS,
    store::{OutboxStore, RowStore},
};
use handle::Shared;

/// Builds a [`Reconciler`]: `Reconciler::builder(name)`, the required `.primary(p)` and
/// `.secondary(s)`, optional settings, `build()`.
pub struct ReconcilerBuilder<P = NoPrimary, S = NoSecondary> {
    name: Arc<str>,
    primary: P,
    secondary: S,
    settings: ReconcileSettings,
}

/// The builder's settings that change no type parameter.
struct ReconcileSettings {
    batch: usize,
    repair: bool,
    max_listed: usize,
    every: Duration,
}

impl<P, S> fmt::Debug for ReconcilerBuilder<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconcilerBuilder")
            .field("name", &self.name)
            .field("batch", &self.settings.batch)
            .field("repair", &self.settings.repair)
            .field("max_listed", &self.settings.max_listed)
            .field("every", &self.settings.every)
            .finish_non_exhaustive()
    }
}

impl<P, S> ReconcilerBuilder<P, S> {
    /// Rows read from each table at a time (default 500, 1 to 10,000).
    #[must_use]
    pub const fn batch(mut self, rows: usize) -> Self {
        self.settings.batch = rows;
        self
    }

    /// Whether runs repair what they find (default `false`: they only report).
    #[must_use]
    pub const fn repair(mut self, repair: bool) -> Self {
        self.settings.repair = repair;
        self
    }

    /// How many differences a report lists (default 100; the counts cover all).
    #[must_use]
    pub const fn max_listed(mut self, differences: usize) -> Self {
        self.settings.max_listed = differences;
        self
    }

    /// The pause between runs of [`spawn`](Reconciler::spawn)ed reconciliation (default
    /// 5 minutes, 1 ms to a day), from the end of one run to the start of the next.
    #[must_use]
    pub const fn every(mut self, pause: Duration) -> Self {
        self.settings.every = pause;
        self
    }
}

impl<S> ReconcilerBuilder<NoPrimary, S> {
    /// The primary store (required): the truth, whose outbox repairs clear.
    pub fn primary<P: OutboxStore>(self, primary: P) -> ReconcilerBuilder<P, S> {
        ReconcilerBuilder {
            name: self.name,
            primary,
            secondary: self.secondary,
            settings: self.settings,
        }
    }
}

impl<P> ReconcilerBuilder<P, NoSecondary> {
    /// The secondary store (required): what is compared with the primary and repaired.
    pub fn secondary<S: RowStore>(self, secondary: S) -> ReconcilerBuilder<P, S> {
        ReconcilerBuilder {
            name: self.name,
            primary: self.primary,
            secondary,
            settings: self.settings,
        }
    }
}

impl<P: OutboxStore, S: RowStore> ReconcilerBuilder<P, S> {
    /// Checks the settings and registers the metrics.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (as a dual write's), `batch` (0 or over 10,000) or
    /// `every` (under 1 ms or over a day).
    pub fn build(self) -> Result<Reconciler<P, S>, ConfigError> {
        check_name(&self.name)?;
        if self.settings.batch == 0 || self.settings.batch > 10_000 {
            return Err(ConfigError::new("batch", "must be 1 to 10,000 rows"));
        }
        if self.settings.every < Duration::from_millis(1)
            || self.settings.every > Duration::from_secs(86_400)
        {
            return Err(ConfigError::new("every", "must be 1 ms to 1 day"));
        }
        super::error::register();
        let name = self.name.to_string();
        metrics::counter!(RECONCILE_RUNS, "name" => name.clone()).increment(0);
        metrics::counter!(RECONCILE_REPAIRED, "name" => name.clone()).increment(0);
        for kind in [
            DifferenceKind::MissingInSecondary,
            DifferenceKind::ExtraInSecondary,
            DifferenceKind::Differs,
        ] {
            metrics::counter!(RECONCILE_DIFFERENCES, "name" => name.clone(), "kind" => kind.as_str())
                .increment(0);
        }
        Ok(Reconciler {
            inner: Arc::new(Inner {
                primary: self.primary,
                secondary: self.secondary,
                settings: run::Settings {
                    batch: self.settings.batch,
                    repair: self.settings.repair,
                    max_listed: self.settings.max_listed,
                },
                every: self.settings.every,
                shared: Arc::new(Shared::new(self.name, self.settings.repair)),
                one_at_a_time: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Inner<P, S> {
    primary: P,
    secondary: S,
    settings: run::Settings,
    every: Duration,
    shared: Arc<Shared>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// Compares (and repairs) the secondary's table against the primary's; see the
/// [module docs](self). Run it once ([`run_once`](Self::run_once)) or every so often
/// ([`spawn`](Self::spawn)). Cloning shares it; runs never overlap.
pub struct Reconciler<P, S> {
    inner: Arc<Inner<P, S>>,
}

impl<P, S> Clone for Reconciler<P, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<P, S> fmt::Debug for Reconciler<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("name", &self.inner.shared.name)
            .field("repair", &self.inner.settings.repair)
            .finish_non_exhaustive()
    }
}

impl Reconciler<NoPrimary, NoSecondary> {
    /// A builder for the reconciler named `name` (it labels metrics, logs and the handle).
    pub fn builder(name: impl Into<Arc<str>>) -> ReconcilerBuilder {
        ReconcilerBuilder {
            name: name.into(),
            primary: NoPrimary,
            secondary: NoSecondary,
            settings: ReconcileSettings {
                batch: 500,
                repair: false,
                max_listed: 100,
                every: Duration::from_secs(300),
            },
        }
    }
}

impl<P: OutboxStore, S: RowStore> Reconciler<P, S> {
    /// The handle: last report, runs, stopping the periodic task.
    pub fn handle(&self) -> ReconcilerHandle {
        ReconcilerHandle {
            shared: self.inner.shared.clone(),
        }
    }

    /// Runs one reconciliation (after any run under way ends).
    ///
    /// # Errors
    ///
    /// When either store fails, or holds a row it cannot read
    /// ([`DualError::CorruptRow`]); repairs made before the failure stay.
    pub async fn run_once(&self) -> Result<ReconcileReport, DualError> {
        let inner = &*self.inner;
        let _one = inner.one_at_a_time.lock().await;
        let shared = &inner.shared;
        shared.running.store(true, Ordering::Relaxed);
        let result = run::reconcile(&inner.primary, &inner.secondary, &inner.settings).await;
        shared.running.store(false, Ordering::Relaxed);
        shared.runs.fetch_add(1, Ordering::Relaxed);
        let name = shared.name.to_string();
        metrics::counter!(RECONCILE_RUNS, "name" => name.clone()).increment(1);
        match &result {
            Ok(report) => {
                for (kind, n) in [
                    (DifferenceKind::MissingInSecondary, report.missing),
                    (DifferenceKind::ExtraInSecondary, report.extra),
                    (DifferenceKind::Differs, report.differing),
                ] {
                    if n > 0 {
                        metrics::counter!(RECONCILE_DIFFERENCES, "name" => name.clone(), "kind" => kind.as_str())
                            .increment(n);
                    }
                }
                metrics::counter!(RECONCILE_REPAIRED, "name" => name).increment(report.repaired);
                if report.is_clean() {
                    tracing::debug!(target: "tower_patterns::strangler", reconciler = %shared.name, rows = report.primary_rows, "primary and secondary are equal");
                } else {
                    tracing::warn!(target: "tower_patterns::strangler", reconciler = %shared.name, missing = report.missing, extra = report.extra, differing = report.differing, repaired = report.repaired, "primary and secondary differ");
                }
                *lock(&shared.last) = Some(report.clone());
                *lock(&shared.last_error) = None;
            }
            Err(e) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "tower_patterns::strangler", reconciler = %shared.name, error = %e, "reconciliation failed");
                *lock(&shared.last_error) = Some(e.to_string());
            }
        }
        result
    }
}

impl<P, S> Reconciler<P, S>
where
    P: OutboxStore,
    S: RowStore,
{
    /// Runs reconciliations on a Tokio task, one at once then one every
    /// [`every`](ReconcilerBuilder::every) after the last ended, until
    /// [`ReconcilerHandle::stop`]. A failed run is logged and counted; the next runs on time.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn(&self) -> JoinHandle<()> {
        let this = self.clone();
        let mut stop = self.inner.shared.stop.subscribe();
        tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    return;
                }
                // A run under way finishes; its failure is counted and logged by `run_once`.
                let _ = this.run_once().await;
                tokio::select! {
                    () = tokio::time::sleep(this.inner.every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }
}
