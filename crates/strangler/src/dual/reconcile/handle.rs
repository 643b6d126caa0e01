//! The reconciler's handle: its last report, its runs, a way to stop its periodic task.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::watch;
use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::ReconcileReport;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) repair: bool,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) running: AtomicBool,
    pub(crate) runs: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) last: Mutex<Option<ReconcileReport>>,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(name: Arc<str>, repair: bool) -> Self {
        Self {
            name,
            repair,
            stop: watch::Sender::new(false),
            running: AtomicBool::new(false),
            runs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }
}

/// A reconciler's handle: `Clone` and cheap. Reports as pattern `strangler`: ready while the
/// last run left no difference unrepaired, degraded otherwise or when it failed.
#[derive(Clone)]
pub struct ReconcilerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ReconcilerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconcilerHandle")
            .field("name", &self.shared.name)
            .field("runs", &self.runs())
            .finish_non_exhaustive()
    }
}

impl ReconcilerHandle {
    /// The last successful run's report.
    pub fn last_report(&self) -> Option<ReconcileReport> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs finished (successful or not).
    pub fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Relaxed)
    }

    /// Runs that failed.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// The last run's failure, cleared by a successful run.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a run is under way.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Stops the periodic task after its current run (a run under way finishes).
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

impl StateHandle for ReconcilerHandle {
    fn pattern(&self) -> &'static str {
        "strangler"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self) -> Report {
        let last = self.last_report();
        let failed = self.last_error().is_some();
        let outstanding = last.as_ref().map_or(0, ReconcileReport::outstanding);
        let health = if failed || outstanding > 0 {
            Health::Degraded
        } else {
            Health::Ready
        };
        let state = match (&last, self.is_running()) {
            (_, true) => "running",
            (None, false) => "not_run",
            (Some(r), false) if r.is_clean() => "equal",
            (Some(_), false) if outstanding == 0 => "repaired",
            (Some(_), false) => "differences",
        };
        let last = last.unwrap_or_default();
        Report::new("strangler", self.shared.name.to_string(), health, state)
            .with_value("runs", self.runs() as f64)
            .with_value("failures", self.failures() as f64)
            .with_value("missing", last.missing as f64)
            .with_value("extra", last.extra as f64)
            .with_value("differing", last.differing as f64)
            .with_value("repaired", last.repaired as f64)
            .with_value("repair", if self.shared.repair { 1.0 } else { 0.0 })
    }
}
