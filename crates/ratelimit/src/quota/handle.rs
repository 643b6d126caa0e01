//! The handle on a quota limiter's state.

use std::{fmt, hash::Hash, sync::Arc};

use tower_patterns_core::{
    keyed::KeyedMap,
    observe::{Health, Report, StateHandle},
};

use super::{Period, Quota, Usage};
use crate::stats::{Refusal, Stats};

/// Reads a [`QuotaLimiter`](crate::QuotaLimiter)'s state: keys counted, the default quota and
/// the rejections by kind. Get it with `limiter.handle()` or
/// [`KeyedRateLimitLayer::handle`](crate::KeyedRateLimitLayer::handle); clones share the
/// limiter's state.
///
/// As a [`StateHandle`]: pattern `ratelimit`, state `counting`, health always `ready`, and
/// the values `keys`, `max_keys`, `limit`, `window_seconds` (the longest window of the
/// default quota's period), `rejected` and `rejected_<kind>` for each kind.
pub struct QuotaLimiterHandle<Key> {
    name: Arc<str>,
    default: Quota,
    usage: KeyedMap<Key, Arc<Usage>>,
    stats: Arc<Stats>,
}

impl<Key> QuotaLimiterHandle<Key> {
    pub(super) const fn new(
        name: Arc<str>,
        default: Quota,
        usage: KeyedMap<Key, Arc<Usage>>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            name,
            default,
            usage,
            stats,
        }
    }

    /// The default quota.
    pub const fn quota(&self) -> Quota {
        self.default
    }

    /// Requests refused so far, of every kind.
    pub fn rejected(&self) -> u64 {
        self.stats.total()
    }

    /// Requests refused because their key's quota was spent.
    pub fn quota_exceeded(&self) -> u64 {
        self.stats.count(Refusal::QuotaExceeded)
    }
}

impl<Key> QuotaLimiterHandle<Key>
where
    Key: Hash + Eq + Send + Sync + 'static,
{
    /// The number of keys counted, after pending maintenance.
    pub fn keys(&self) -> u64 {
        self.usage.sync();
        self.usage.len()
    }
}

impl<Key> Clone for QuotaLimiterHandle<Key> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            default: self.default,
            usage: self.usage.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<Key> fmt::Debug for QuotaLimiterHandle<Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLimiterHandle")
            .field("name", &self.name)
            .field("quota", &self.default)
            .finish_non_exhaustive()
    }
}

impl<Key> StateHandle for QuotaLimiterHandle<Key>
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
        let period: Period = self.default.period();
        let report = Report::new(
            "ratelimit",
            self.name.to_string(),
            Health::Ready,
            "counting",
        )
        .with_value("keys", self.keys() as f64)
        .with_value("max_keys", self.usage.max_entries() as f64)
        .with_value("limit", f64::from(self.default.limit()))
        .with_value("window_seconds", period.longest().as_secs_f64());
        self.stats.report(report)
    }
}
