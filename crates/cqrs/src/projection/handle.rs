//! The projection's handle: position, lag, status, and the operator's controls.
//! (Skeleton: the runner's owner completes it.)

use std::{fmt, sync::Arc};

use tower_patterns_eventstore::EventStore;

/// Where a projection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Not started yet.
    Starting,
}

/// A projection's lag behind the head of the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Events not yet applied (counted up to a bound).
    pub events: u64,
    /// Seconds between the last applied event and the head, as the store recorded them.
    pub seconds: f64,
}

/// The state a runner and its handles share.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
}

impl Shared {
    pub(crate) fn new<S: EventStore>(name: Arc<str>, _store: Arc<S>) -> Arc<Self> {
        Arc::new(Self { name })
    }
}

/// A projection's handle: `Clone`, cheap, and it never slows the runner.
#[derive(Clone)]
pub struct ProjectionHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProjectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl ProjectionHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}
