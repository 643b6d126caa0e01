//! The one handle every limiter gives out.

use std::{fmt, hash::Hash, sync::Arc};

use tower_patterns_core::{
    keyed::KeyedMap,
    observe::{Health, Report, StateHandle},
};

use crate::{
    period::Quota,
    rate::Rate,
    stats::{Refusal, Stats},
};

/// A limiter's default limit, as its handle reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A GCRA rate (the in-process and the Redis limiter).
    Rate(Rate),
    /// An allowance per window (the quota limiter).
    Quota(Quota),
}

/// What a handle reads beyond the counts of refusals: the keys a limiter holds, or the health
/// of the store it counts in.
pub(crate) trait Source: Send + Sync {
    /// Keys held and the most that may be, for a limiter that holds its keys.
    fn keys(&self) -> Option<(u64, u64)> {
        None
    }

    /// Health and state, for a limiter over a store that may be unreachable.
    fn health(&self) -> Option<(Health, &'static str)> {
        None
    }

    /// Checks that could not reach the store.
    fn unavailable(&self) -> u64 {
        0
    }
}

impl<K, V> Source for KeyedMap<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn keys(&self) -> Option<(u64, u64)> {
        self.sync();
        Some((self.len(), self.max_entries()))
    }
}

/// Reads a limiter's state: its name, default limit, keys held, refusals by kind and, for the
/// Redis limiter, the health of Redis. Get it with
/// [`KeyedRateLimitLayer::handle`](crate::KeyedRateLimitLayer::handle), from the service, or
/// from a limiter (`limiter.handle()`); clones share the limiter's state, and reading it costs
/// the request path nothing.
///
/// As a [`StateHandle`]: pattern `ratelimit`; health `ready`, except a Redis limiter's
/// `degraded` from a failure until Redis answers again (a limiter refusing requests is doing
/// its job); state `limiting` (GCRA in process), `counting` (quota), `connected` or
/// `unreachable` (Redis). Values: `keys` and `max_keys` (limiters holding their keys), `burst`
/// and `interval_seconds` (a rate) or `limit` and `window_seconds` (a quota, its longest
/// window), `unavailable` (Redis), `rejected`, and `rejected_<kind>` for each kind
/// (`rate_limited`, `quota_exceeded`, `load_shed`, `bad_key`, `invalid_limit`).
#[derive(Clone)]
pub struct KeyedRateLimitHandle {
    name: Arc<str>,
    limit: Limit,
    source: Arc<dyn Source>,
    stats: Arc<Stats>,
}

impl KeyedRateLimitHandle {
    pub(crate) fn new(
        name: Arc<str>,
        limit: Limit,
        source: Arc<dyn Source>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            name,
            limit,
            source,
            stats,
        }
    }

    /// The default limit (a rate or a quota; per-request ones may differ).
    pub const fn limit(&self) -> Limit {
        self.limit
    }

    /// The number of keys held, after pending maintenance; `None` where the keys live in Redis.
    pub fn keys(&self) -> Option<u64> {
        self.source.keys().map(|(held, _)| held)
    }

    /// Requests refused so far, of every kind (a spent limit, a missing key, an invalid limit,
    /// Redis unreachable while failing closed).
    pub fn rejected(&self) -> u64 {
        self.stats.total()
    }

    /// Requests refused because their key's rate was spent.
    pub fn rate_limited(&self) -> u64 {
        self.stats.count(Refusal::RateLimited)
    }

    /// Requests refused because their key's quota was spent.
    pub fn quota_exceeded(&self) -> u64 {
        self.stats.count(Refusal::QuotaExceeded)
    }

    /// Checks that could not reach Redis (always 0 in process).
    pub fn unavailable(&self) -> u64 {
        self.source.unavailable()
    }
}

impl fmt::Debug for KeyedRateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitHandle")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl StateHandle for KeyedRateLimitHandle {
    fn pattern(&self) -> &'static str {
        "ratelimit"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn health(&self) -> Health {
        self.source
            .health()
            .map_or(Health::Ready, |(health, _)| health)
    }

    fn report(&self) -> Report {
        let (health, state) = self.source.health().unwrap_or(match self.limit {
            Limit::Rate(_) => (Health::Ready, "limiting"),
            Limit::Quota(_) => (Health::Ready, "counting"),
        });
        let mut report = Report::new("ratelimit", self.name.to_string(), health, state);
        if let Some((held, max)) = self.source.keys() {
            report = report
                .with_value("keys", held as f64)
                .with_value("max_keys", max as f64);
        }
        report = match self.limit {
            Limit::Rate(rate) => report
                .with_value("burst", f64::from(rate.burst_size()))
                .with_value("interval_seconds", rate.interval().as_secs_f64()),
            Limit::Quota(quota) => report
                .with_value("limit", f64::from(quota.limit()))
                .with_value("window_seconds", quota.period().longest().as_secs_f64()),
        };
        if self.source.health().is_some() {
            report = report.with_value("unavailable", self.source.unavailable() as f64);
        }
        self.stats.report(report)
    }
}
