//! The CQRS layer's handle: how many commands and queries went through.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use tower_patterns_core::observe::{Health, Report, StateHandle};

/// Commands sent to the write side.
pub(crate) const COMMANDS: &str = "tower_patterns_cqrs_commands_total";
/// Queries sent to the read side.
pub(crate) const QUERIES: &str = "tower_patterns_cqrs_queries_total";
/// Commands that failed (refused by the adapter, the aggregate or the store).
pub(crate) const COMMAND_ERRORS: &str = "tower_patterns_cqrs_command_errors_total";

#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) name: Arc<str>,
    pub(crate) commands: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) command_errors: AtomicU64,
}

impl Stats {
    pub(crate) fn new(name: Arc<str>) -> Arc<Self> {
        for counter in [COMMANDS, QUERIES, COMMAND_ERRORS] {
            metrics::counter!(counter, "name" => name.to_string()).absolute(0);
        }
        Arc::new(Self {
            name,
            commands: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            command_errors: AtomicU64::new(0),
        })
    }
}

/// The CQRS layer's handle (`layer.handle()`, `service.handle()`): `Clone`, cheap. Its report
/// (pattern `cqrs`) counts commands, queries and failed commands, and publishes them as the
/// counters `tower_patterns_cqrs_commands_total`, `_queries_total` and
/// `_command_errors_total` (label `name`). Always `Ready`: the layer keeps no state that can
/// fail; the health of the read models is their projections' handles'.
#[derive(Clone, Debug)]
pub struct CqrsHandle {
    stats: Arc<Stats>,
}

impl CqrsHandle {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self { stats }
    }

    /// Commands sent to the write side.
    pub fn commands(&self) -> u64 {
        self.stats.commands.load(Relaxed)
    }

    /// Queries sent to the read side.
    pub fn queries(&self) -> u64 {
        self.stats.queries.load(Relaxed)
    }

    /// Commands that failed (a bad request, a refusal, a conflict, a store error).
    pub fn command_errors(&self) -> u64 {
        self.stats.command_errors.load(Relaxed)
    }
}

impl StateHandle for CqrsHandle {
    fn pattern(&self) -> &'static str {
        "cqrs"
    }

    fn name(&self) -> &str {
        &self.stats.name
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn report(&self) -> Report {
        let (c, q, e) = (self.commands(), self.queries(), self.command_errors());
        let name = self.stats.name.to_string();
        metrics::counter!(COMMANDS, "name" => name.clone()).absolute(c);
        metrics::counter!(QUERIES, "name" => name.clone()).absolute(q);
        metrics::counter!(COMMAND_ERRORS, "name" => name).absolute(e);
        #[allow(clippy::cast_precision_loss)]
        Report::new(
            "cqrs",
            self.stats.name.to_string(),
            Health::Ready,
            "routing",
        )
        .with_value("commands", c as f64)
        .with_value("queries", q as f64)
        .with_value("command_errors", e as f64)
    }
}
