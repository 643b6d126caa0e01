//! The consistency layer's handle: what its sessions ran into.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use crate::mark::MarkKind;

/// Reads that had to wait for the read side.
pub(crate) const WAITS: &str = "tower_patterns_consistency_waits_total";
/// Reads the read side had not caught up with in time, by what the layer did (`outcome`:
/// `unavailable`, `primary`, `stale`).
pub(crate) const BEHIND: &str = "tower_patterns_consistency_behind_total";
/// Requests refused for a malformed, forged or foreign token.
pub(crate) const BAD_TOKENS: &str = "tower_patterns_consistency_bad_tokens_total";
/// Tokens issued (a write's, or a read that moved the session forward).
pub(crate) const ISSUED: &str = "tower_patterns_consistency_tokens_issued_total";

const OUTCOMES: [&str; 3] = ["unavailable", "primary", "stale"];

#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) name: Arc<str>,
    pub(crate) kind: MarkKind,
    pub(crate) waits: AtomicU64,
    /// Indexed as [`OUTCOMES`].
    pub(crate) behind: [AtomicU64; 3],
    pub(crate) bad_tokens: AtomicU64,
    pub(crate) issued: AtomicU64,
}

impl Stats {
    pub(crate) fn new(name: Arc<str>, kind: MarkKind) -> Arc<Self> {
        for counter in [WAITS, BAD_TOKENS, ISSUED] {
            metrics::counter!(counter, "name" => name.to_string()).absolute(0);
        }
        for outcome in OUTCOMES {
            metrics::counter!(BEHIND, "name" => name.to_string(), "outcome" => outcome).absolute(0);
        }
        Arc::new(Self {
            name,
            kind,
            waits: AtomicU64::new(0),
            behind: Default::default(),
            bad_tokens: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        })
    }
}

/// The consistency layer's handle (`layer.handle()`, `service.handle()`): `Clone`, cheap. Its
/// report (pattern `consistency`) counts the reads that waited, the reads the read side had
/// not caught up with in time (by outcome), the requests refused for a bad token and the
/// tokens issued, and publishes them as `tower_patterns_consistency_waits_total`,
/// `_behind_total` (label `outcome`: `unavailable`, `primary`, `stale`),
/// `_bad_tokens_total` and `_tokens_issued_total` (label `name`). Always `Ready`: the read
/// side's own handle (a projection's, a replica set's) says how it is doing.
#[derive(Clone, Debug)]
pub struct ConsistencyHandle {
    stats: Arc<Stats>,
}

impl ConsistencyHandle {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self { stats }
    }

    /// Reads that found the read side behind their token and waited for it.
    pub fn waits(&self) -> u64 {
        self.stats.waits.load(Relaxed)
    }

    /// Reads refused with a 503 because the read side was still behind after the wait.
    pub fn unavailable(&self) -> u64 {
        self.stats.behind[0].load(Relaxed)
    }

    /// Reads sent to the primary because the read side was still behind after the wait.
    pub fn from_primary(&self) -> u64 {
        self.stats.behind[1].load(Relaxed)
    }

    /// Reads answered stale (and marked so) because the read side was still behind.
    pub fn stale(&self) -> u64 {
        self.stats.behind[2].load(Relaxed)
    }

    /// Requests refused for a malformed, forged or foreign token.
    pub fn bad_tokens(&self) -> u64 {
        self.stats.bad_tokens.load(Relaxed)
    }

    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.stats.issued.load(Relaxed)
    }
}

impl StateHandle for ConsistencyHandle {
    fn pattern(&self) -> &'static str {
        "consistency"
    }

    fn name(&self) -> &str {
        &self.stats.name
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self) -> Report {
        let s = &self.stats;
        let name = s.name.to_string();
        let (waits, bad, issued) = (self.waits(), self.bad_tokens(), self.issued());
        metrics::counter!(WAITS, "name" => name.clone()).absolute(waits);
        metrics::counter!(BAD_TOKENS, "name" => name.clone()).absolute(bad);
        metrics::counter!(ISSUED, "name" => name.clone()).absolute(issued);
        let mut report = Report::new(
            "consistency",
            name.clone(),
            Health::Ready,
            match s.kind {
                MarkKind::Position => "following read models",
                MarkKind::Lsn => "following replicas",
            },
        )
        .with_value("waits", waits as f64);
        for (i, outcome) in OUTCOMES.into_iter().enumerate() {
            let n = s.behind[i].load(Relaxed);
            metrics::counter!(BEHIND, "name" => name.clone(), "outcome" => outcome).absolute(n);
            report = report.with_value(
                match i {
                    0 => "behind_unavailable",
                    1 => "behind_primary",
                    _ => "behind_stale",
                },
                n as f64,
            );
        }
        report
            .with_value("bad_tokens", bad as f64)
            .with_value("tokens_issued", issued as f64)
    }
}
