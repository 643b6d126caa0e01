//! The orchestrator's handle: counts for dashboards.

use std::sync::{Arc, atomic::Ordering};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::Inner;

/// A handle on an [`Orchestrator`](super::Orchestrator): what this process has done with
/// sagas since it started. Health is `Degraded` while a saga that got stuck here has not been
/// retried or resolved by an operator here (`stuck_now`); the list of every stuck saga, from
/// any process, is [`Orchestrator::stuck`](super::Orchestrator::stuck).
pub struct OrchestratorHandle {
    inner: Arc<dyn Counts>,
}

impl Clone for OrchestratorHandle {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl std::fmt::Debug for OrchestratorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorHandle")
            .field("name", &self.inner.name())
            .finish_non_exhaustive()
    }
}

trait Counts: Send + Sync {
    fn name(&self) -> &str;
    fn owner(&self) -> &str;
    fn values(&self) -> [(&'static str, u64); 11];
}

impl<S: Send + Sync, I: Send + Sync> Counts for Inner<S, I> {
    fn name(&self) -> &str {
        &self.name
    }

    fn owner(&self) -> &str {
        &self.owner
    }

    fn values(&self) -> [(&'static str, u64); 11] {
        let s = &self.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        [
            ("running", self.driving().len() as u64),
            ("started", get(&s.started)),
            ("completed", get(&s.completed)),
            ("compensated", get(&s.compensated)),
            ("failed", get(&s.failed)),
            ("stuck", get(&s.stuck)),
            ("stuck_now", get(&s.stuck_now)),
            ("resolved", get(&s.resolved)),
            ("resumed", get(&s.resumed)),
            ("lease_lost", get(&s.lost)),
            ("errors", get(&s.errors)),
        ]
    }
}

impl OrchestratorHandle {
    pub(super) fn new<S: Send + Sync + 'static, I: Send + Sync + 'static>(
        inner: Arc<Inner<S, I>>,
    ) -> Self {
        Self { inner }
    }

    /// This process's owner name in leases.
    pub fn owner(&self) -> &str {
        self.inner.owner()
    }

    /// The count named `what`: `running` (driven here now), `started`, `completed`,
    /// `compensated`, `failed`, `stuck` (sagas that got stuck here, in all), `stuck_now` (of
    /// those, not yet retried or resolved here), `resolved`, `resumed` (taken over from a dead
    /// process), `lease_lost`, `errors`.
    pub fn count(&self, what: &str) -> Option<u64> {
        self.inner
            .values()
            .into_iter()
            .find(|(w, _)| *w == what)
            .map(|(_, v)| v)
    }
}

impl StateHandle for OrchestratorHandle {
    fn pattern(&self) -> &'static str {
        "saga"
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn report(&self) -> Report {
        let values = self.inner.values();
        let stuck = values.iter().any(|(w, v)| *w == "stuck_now" && *v > 0);
        let (health, state) = if stuck {
            (Health::Degraded, "stuck")
        } else {
            (Health::Ready, "running")
        };
        let mut report = Report::new("saga", self.inner.name().to_owned(), health, state);
        for (what, value) in values {
            #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let value = value as f64;
            report = report.with_value(what, value);
        }
        report
    }
}
