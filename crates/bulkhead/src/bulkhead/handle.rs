//! Reading a bulkhead's pool from outside the request path.

use std::{fmt, sync::Arc};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::pool::Shared;

/// A handle on a bulkhead's pool. Cheap to clone.
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting())
            .field("limit", &self.limit())
            .finish()
    }
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Calls holding a permit.
    pub fn in_flight(&self) -> u64 {
        self.shared.semaphore.in_flight()
    }

    /// Permits free now.
    pub fn available(&self) -> u64 {
        self.limit().saturating_sub(self.in_flight())
    }

    /// Calls waiting for a permit.
    pub fn waiting(&self) -> u64 {
        self.shared.semaphore.waiting()
    }

    /// The current limit (it moves with an adaptive algorithm).
    pub fn limit(&self) -> u64 {
        self.shared.semaphore.limit()
    }

    /// Sets the limit by hand (an adaptive algorithm will move it again). A higher limit
    /// admits waiters at once; a lower one takes effect as permits come back.
    pub fn set_limit(&self, limit: u32) {
        self.shared.semaphore.set_limit(limit.max(1));
    }
}

impl StateHandle for BulkheadHandle {
    fn pattern(&self) -> &'static str {
        "bulkhead"
    }

    fn name(&self) -> &str {
        BulkheadHandle::name(self)
    }

    fn report(&self) -> Report {
        let (health, state) = if self.available() > 0 {
            (Health::Ready, "open")
        } else {
            (Health::Degraded, "full")
        };
        Report::new("bulkhead", self.name().to_owned(), health, state)
            .with_value("in_flight", self.in_flight() as f64)
            .with_value("waiting", self.waiting() as f64)
            .with_value("limit", self.limit() as f64)
    }
}
