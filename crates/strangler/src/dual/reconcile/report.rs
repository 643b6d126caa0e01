//! What a reconciliation found.

use std::fmt;

/// How a row differs between the primary and the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DifferenceKind {
    /// The primary has the row, the secondary does not.
    MissingInSecondary,
    /// The secondary has a row the primary does not.
    ExtraInSecondary,
    /// Both have the row, with another value or version.
    Differs,
}

impl DifferenceKind {
    /// `missing`, `extra` or `differs`, as in the metrics' `kind` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingInSecondary => "missing",
            Self::ExtraInSecondary => "extra",
            Self::Differs => "differs",
        }
    }
}

impl fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row that differs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Difference {
    /// The row's key.
    pub key: String,
    /// How it differs.
    pub kind: DifferenceKind,
    /// The primary's version, if it has the row.
    pub primary_version: Option<u64>,
    /// The secondary's version, if it has the row.
    pub secondary_version: Option<u64>,
    /// Whether this run repaired it.
    pub repaired: bool,
}

/// What one reconciliation found and did. Counts cover every row; `differences` lists the
/// first ones, up to the reconciler's `max_listed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReconcileReport {
    /// Rows read from the primary (tombstones included).
    pub primary_rows: u64,
    /// Rows read from the secondary.
    pub secondary_rows: u64,
    /// Rows the secondary lacks.
    pub missing: u64,
    /// Rows only the secondary has.
    pub extra: u64,
    /// Rows both have, with another value or version.
    pub differing: u64,
    /// Differences repaired (with repair on).
    pub repaired: u64,
    /// Differences left alone because the secondary's row changed after the run read it
    /// (a delivery landed meanwhile): the next run looks again.
    pub changed_during_run: u64,
    /// Missed-write records and other outbox entries cleared by repairs.
    pub cleared: u64,
    /// The first differences, in key order.
    pub differences: Vec<Difference>,
}

impl ReconcileReport {
    /// Every difference found, of all kinds.
    pub const fn total(&self) -> u64 {
        self.missing + self.extra + self.differing
    }

    /// Whether the two tables were equal.
    pub const fn is_clean(&self) -> bool {
        self.total() == 0
    }

    /// Differences this run did not repair.
    pub const fn outstanding(&self) -> u64 {
        self.total().saturating_sub(self.repaired)
    }

    /// The report as one line of JSON, for logs and admin routes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
