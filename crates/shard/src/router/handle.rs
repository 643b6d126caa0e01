//! The shard router's handle.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::Shared;
use crate::Strategy;

/// What the handle reads of a strategy, whatever its type.
trait Placement: Send + Sync {
    fn kind(&self) -> &'static str;
    fn migrating_slots(&self) -> usize;
}

impl<P: Strategy> Placement for P {
    fn kind(&self) -> &'static str {
        Strategy::kind(self)
    }

    fn migrating_slots(&self) -> usize {
        Strategy::migrating_slots(self)
    }
}

/// A handle on a [`ShardRouter`](super::ShardRouter), from
/// [`ShardRouter::handle`](super::ShardRouter::handle). Cheap to clone; reading it costs the
/// routed calls nothing.
///
/// Its [`StateHandle`] report has pattern `shard`, the router's name, health ready (a router
/// has no failure state of its own: each shard's health is its own layers'), the placement
/// strategy's [`kind`](Strategy::kind) as its state (`jump`, `directory`, ...) and values
/// `shards`, `migrating_slots` (moves in progress: slots of a
/// [`Directory`](crate::Directory) between [`begin`](crate::Directory::begin) and
/// [`complete`](crate::Directory::complete)) and, for a strategy that counts them,
/// `in_flight` (calls in flight on all shards).
#[derive(Clone)]
pub struct ShardRouterHandle {
    shared: Arc<Shared>,
    placement: Arc<dyn Placement>,
    shards: usize,
    loads: Option<Arc<[AtomicU64]>>,
}

impl ShardRouterHandle {
    pub(crate) fn new<P: Strategy>(
        shared: Arc<Shared>,
        strategy: Arc<P>,
        shards: usize,
        loads: Option<Arc<[AtomicU64]>>,
    ) -> Self {
        Self {
            shared,
            placement: strategy,
            shards,
            loads,
        }
    }

    /// The number of shard services.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The placement strategy's kind (`jump`, `directory`, ...).
    pub fn strategy(&self) -> &'static str {
        self.placement.kind()
    }

    /// Slots being moved now.
    pub fn migrating_slots(&self) -> usize {
        self.placement.migrating_slots()
    }
}

impl fmt::Debug for ShardRouterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouterHandle")
            .field("name", &self.shared.name)
            .field("shards", &self.shards)
            .field("strategy", &self.strategy())
            .finish_non_exhaustive()
    }
}

impl StateHandle for ShardRouterHandle {
    fn pattern(&self) -> &'static str {
        "shard"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn report(&self) -> Report {
        let report = Report::new(
            "shard",
            self.shared.name.to_string(),
            Health::Ready,
            self.strategy(),
        )
        .with_value("shards", self.shards as f64)
        .with_value("migrating_slots", self.migrating_slots() as f64);
        match &self.loads {
            Some(loads) => report.with_value(
                "in_flight",
                loads.iter().map(|l| l.load(Relaxed)).sum::<u64>() as f64,
            ),
            None => report,
        }
    }
}
