//! The handle on a GCRA limiter's state.

use std::{fmt, hash::Hash, sync::Arc};

use tower_patterns_core::{
    keyed::KeyedMap,
    observe::{Health, Report, StateHandle},
};

use super::{Cell, Rate};
use crate::stats::{Refusal, Stats};

/// Reads a [`GcraLimiter`](crate::GcraLimiter)'s state: keys held, the default rate and the
/// rejections by kind. Get it with `limiter.handle()` or
/// [`KeyedRateLimitLayer::handle`](crate::KeyedRateLimitLayer::handle); clones share the
/// limiter's state.
///
/// As a [`StateHandle`]: pattern `ratelimit`, state `limiting`, health always `ready` (a
/// limiter refusing requests is doing its job), and the values `keys`, `max_keys`, `burst`,
/// `interval_seconds`, `rejected` and `rejected_<kind>` for each kind (`rate_limited`,
/// `quota_exceeded`, `load_shed`, `bad_key`, `invalid_limit`).
pub struct GcraLimiterHandle<Key> {
    name: Arc<str>,
    default: Rate,
    cells: KeyedMap<Key, Arc<Cell>>,
    stats: Arc<Stats>,
}

impl<Key> GcraLimiterHandle<Key> {
    pub(super) const fn new(
        name: Arc<str>,
        default: Rate,
        cells: KeyedMap<Key, Arc<Cell>>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            name,
            default,
            cells,
            stats,
        }
    }

    /// The default rate.
    pub const fn rate(&self) -> Rate {
        self.default
    }

    /// Requests refused so far, of every kind (a spent rate, a missing key, an invalid rate).
    pub fn rejected(&self) -> u64 {
        self.stats.total()
    }

    /// Requests refused because their key's rate was spent.
    pub fn rate_limited(&self) -> u64 {
        self.stats.count(Refusal::RateLimited)
    }
}

impl<Key> GcraLimiterHandle<Key>
where
    Key: Hash + Eq + Send + Sync + 'static,
{
    /// The number of keys held, after pending maintenance.
    pub fn keys(&self) -> u64 {
        self.cells.sync();
        self.cells.len()
    }
}

impl<Key> Clone for GcraLimiterHandle<Key> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            default: self.default,
            cells: self.cells.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<Key> fmt::Debug for GcraLimiterHandle<Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcraLimiterHandle")
            .field("name", &self.name)
            .field("rate", &self.default)
            .finish_non_exhaustive()
    }
}

impl<Key> StateHandle for GcraLimiterHandle<Key>
where
    Key: Hash + Eq + Send + Sync + 'static,
{
    fn pattern(&self) -> &'static str {
        "ratelimit"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn report(&self) -> Report {
        let report = Report::new(
            "ratelimit",
            self.name.to_string(),
            Health::Ready,
            "limiting",
        )
        .with_value("keys", self.keys() as f64)
        .with_value("max_keys", self.cells.max_entries() as f64)
        .with_value("burst", f64::from(self.default.burst_size()))
        .with_value("interval_seconds", self.default.interval().as_secs_f64());
        self.stats.report(report)
    }
}
