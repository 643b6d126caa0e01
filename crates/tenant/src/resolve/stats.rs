//! What a tenant layer counts, and the metrics it emits: only off the resolved path.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use tower_patterns_core::{
    metric_name,
    observe::labels,
    tenant::{TenantError, TenantErrorKind},
};

/// The reasons a request is refused: the `kind` label of
/// `tower_patterns_tenant_refusals_total`, and the report value of each.
pub(super) const REASONS: [(&str, &str); 8] = [
    ("malformed", "refused_malformed"),
    ("missing_credentials", "refused_missing_credentials"),
    ("invalid_credentials", "refused_invalid_credentials"),
    ("conflict", "refused_conflict"),
    ("unknown", "refused_unknown"),
    ("suspended", "refused_suspended"),
    ("unavailable", "refused_unavailable"),
    ("other", "refused_other"),
];

/// The index of `kind` in [`REASONS`].
pub(super) const fn reason(kind: TenantErrorKind) -> usize {
    match kind {
        TenantErrorKind::Malformed => 0,
        TenantErrorKind::MissingCredentials => 1,
        TenantErrorKind::InvalidCredentials => 2,
        TenantErrorKind::Conflict => 3,
        TenantErrorKind::Unknown => 4,
        TenantErrorKind::Suspended => 5,
        TenantErrorKind::Unavailable => 6,
        _ => 7,
    }
}

/// What a layer counts: only off the resolved path (a refusal, a registry lookup the request
/// waited for), never per admitted request.
pub(super) struct Stats {
    pub(super) lookups: AtomicU64,
    pub(super) refusals: [AtomicU64; REASONS.len()],
    metrics: Metrics,
}

struct Metrics {
    lookups: Counter,
    refusals: [Counter; REASONS.len()],
}

impl Stats {
    /// Counts from zero, with the metrics registered now with the installed recorder.
    pub(super) fn new(name: &str) -> Self {
        Self {
            lookups: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            metrics: Metrics {
                lookups: metrics::counter!(
                    metric_name!("tenant", "lookups_total"),
                    labels::NAME => name.to_owned()
                ),
                refusals: REASONS.map(|(kind, _)| {
                    metrics::counter!(
                        metric_name!("tenant", "refusals_total"),
                        labels::NAME => name.to_owned(),
                        labels::KIND => kind
                    )
                }),
            },
        }
    }

    /// A request whose tenant (or API key) was not cached waits for the registry.
    pub(super) fn looked_up(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.metrics.lookups.increment(1);
    }

    /// A request is refused with `err`.
    pub(super) fn refused(&self, err: &TenantError) {
        let i = reason(err.kind());
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
        self.metrics.refusals[i].increment(1);
        tracing::debug!(
            target: "tower_patterns::tenant",
            kind = REASONS[i].0,
            detail = err.detail(),
            "tenant refused"
        );
    }

    /// `result`, its error counted as a refusal.
    pub(super) fn settle<T>(&self, result: Result<T, TenantError>) -> Result<T, TenantError> {
        if let Err(err) = &result {
            self.refused(err);
        }
        result
    }
}
