//! Rejections counted per kind: atomics the handles read, and the `metrics` counters
//! `tower_patterns_ratelimit_rejected_total{name, kind}`, registered once when a limiter is
//! built. Only refusals touch them: an admitted request costs nothing here.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics::Counter;
use tower_patterns_core::{
    BoxError, Rejected, RejectionKind, error::RateLimitInfo, metric_name, observe::labels,
};

/// Why a limiter refused a request, as the `kind` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The rate is spent (`rate_limited`).
    RateLimited,
    /// The quota of the window is spent (`quota_exceeded`).
    QuotaExceeded,
    /// Redis is unreachable and the limiter fails closed (`load_shed`).
    Unavailable,
    /// The request has no usable key (`bad_key`).
    BadKey,
    /// The rate or quota chosen for the request is not valid (`invalid_limit`).
    InvalidLimit,
}

impl Refusal {
    pub(crate) const ALL: [Self; 5] = [
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::Unavailable,
        Self::BadKey,
        Self::InvalidLimit,
    ];

    /// The `kind` label, and the report's value name.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Unavailable => "load_shed",
            Self::BadKey => "bad_key",
            Self::InvalidLimit => "invalid_limit",
        }
    }

    /// The report's value name for this kind's count.
    pub(crate) const fn value_name(self) -> &'static str {
        match self {
            Self::RateLimited => "rejected_rate_limited",
            Self::QuotaExceeded => "rejected_quota_exceeded",
            Self::Unavailable => "rejected_load_shed",
            Self::BadKey => "rejected_bad_key",
            Self::InvalidLimit => "rejected_invalid_limit",
        }
    }
}

/// A limiter's refusals, shared with its handles.
#[derive(Debug)]
pub(crate) struct Stats {
    counts: [AtomicU64; 5],
    counters: [Counter; 5],
}

impl Stats {
    /// Registers the counters with the `metrics` recorder installed now.
    pub(crate) fn register(name: &str) -> Self {
        Self {
            counts: Default::default(),
            counters: Refusal::ALL.map(|kind| {
                metrics::counter!(
                    metric_name!("ratelimit", "rejected_total"),
                    labels::NAME => name.to_owned(),
                    labels::KIND => kind.label()
                )
            }),
        }
    }

    /// Counts one refusal of `kind`.
    #[cold]
    pub(crate) fn refused(&self, kind: Refusal) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.counters[kind as usize].increment(1);
    }

    /// Counts `err` as a refusal of `kind`, and returns it.
    #[cold]
    pub(crate) fn refuse(&self, kind: Refusal, err: impl Into<BoxError>) -> BoxError {
        self.refused(kind);
        err.into()
    }

    /// Counts a spent limit (`RateLimited` for a rate, `QuotaExceeded` for a quota) and returns
    /// its [`Rejected`]: retry after `wait`, the limit's state with nothing remaining.
    #[cold]
    pub(crate) fn spent(
        &self,
        quota: bool,
        name: &Arc<str>,
        wait: Duration,
        limit: u64,
        reset: Duration,
    ) -> BoxError {
        let (refusal, kind) = if quota {
            (Refusal::QuotaExceeded, RejectionKind::QuotaExceeded)
        } else {
            (Refusal::RateLimited, RejectionKind::RateLimited)
        };
        self.refuse(
            refusal,
            Rejected::new(kind)
                .with_name(name.clone())
                .with_retry_after(wait)
                .with_limit(RateLimitInfo {
                    limit,
                    remaining: 0,
                    reset,
                }),
        )
    }

    /// The refusals of `kind` so far.
    pub(crate) fn count(&self, kind: Refusal) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Every refusal so far.
    pub(crate) fn total(&self) -> u64 {
        Refusal::ALL.iter().map(|kind| self.count(*kind)).sum()
    }

    /// Adds the counts to a report: `rejected`, then one value per kind.
    pub(crate) fn report(
        &self,
        report: tower_patterns_core::observe::Report,
    ) -> tower_patterns_core::observe::Report {
        Refusal::ALL.iter().fold(
            report.with_value("rejected", self.total() as f64),
            |report, kind| report.with_value(kind.value_name(), self.count(*kind) as f64),
        )
    }
}
