//! One reconciliation: both tables walked in key order, batch by batch (a merge join).

use std::collections::VecDeque;

use super::report::{Difference, DifferenceKind, ReconcileReport};
use crate::dual::{
    DualError, Row,
    store::{OutboxStore, RowStore},
};

/// One side of the merge: a store read in pages after the last key seen.
struct Side<'a, S> {
    store: &'a S,
    which: &'static str,
    page: VecDeque<Row>,
    after: Option<String>,
    done: bool,
    batch: usize,
    rows: u64,
}

impl<'a, S: RowStore> Side<'a, S> {
    const fn new(store: &'a S, which: &'static str, batch: usize) -> Self {
        Self {
            store,
            which,
            page: VecDeque::new(),
            after: None,
            done: false,
            batch,
            rows: 0,
        }
    }

    /// Reads the next page if this one is used up.
    async fn fill(&mut self) -> Result<(), DualError> {
        if !self.page.is_empty() || self.done {
            return Ok(());
        }
        let rows = self.store.scan(self.after.as_deref(), self.batch).await?;
        self.done = rows.len() < self.batch;
        // The merge is only right over keys in strictly increasing order.
        let mut last = self.after.as_deref();
        for row in &rows {
            if last.is_some_and(|l| l >= row.key.as_str()) {
                return Err(DualError::store(
                    format!("reconcile: scan the {}", self.which),
                    format!(
                        "rows out of key order ({:?} after {:?}): the store's scan must return keys in byte order",
                        row.key,
                        last.unwrap_or_default()
                    ),
                ));
            }
            last = Some(&row.key);
        }
        if let Some(row) = rows.last() {
            self.after = Some(row.key.clone());
        }
        self.rows += rows.len() as u64;
        self.page.extend(rows);
        Ok(())
    }
}

/// What a reconciler passes to a run.
pub(crate) struct Settings {
    pub(crate) batch: usize,
    pub(crate) repair: bool,
    pub(crate) max_listed: usize,
}

/// Walks both tables; with `repair`, makes the secondary's rows the primary's.
pub(crate) async fn reconcile<P: OutboxStore, S: RowStore>(
    primary: &P,
    secondary: &S,
    settings: &Settings,
) -> Result<ReconcileReport, DualError> {
    let mut report = ReconcileReport::default();
    let mut p = Side::new(primary, "primary", settings.batch);
    let mut s = Side::new(secondary, "secondary", settings.batch);
    loop {
        p.fill().await?;
        s.fill().await?;
        let (kind, key, pv, sv) = match (p.page.front(), s.page.front()) {
            (None, None) => break,
            (Some(a), Some(b)) if a.key == b.key => {
                let differs = a != b;
                let (key, pv, sv) = (a.key.clone(), a.version, b.version);
                p.page.pop_front();
                s.page.pop_front();
                if !differs {
                    continue;
                }
                (DifferenceKind::Differs, key, Some(pv), Some(sv))
            }
            (Some(a), b) if b.is_none_or(|b| a.key < b.key) => {
                let found = (
                    DifferenceKind::MissingInSecondary,
                    a.key.clone(),
                    Some(a.version),
                    None,
                );
                p.page.pop_front();
                found
            }
            (_, Some(b)) => {
                let found = (
                    DifferenceKind::ExtraInSecondary,
                    b.key.clone(),
                    None,
                    Some(b.version),
                );
                s.page.pop_front();
                found
            }
            // Unreachable: (Some, None) is the missing arm.
            (Some(_), None) => break,
        };
        match kind {
            DifferenceKind::MissingInSecondary => report.missing += 1,
            DifferenceKind::ExtraInSecondary => report.extra += 1,
            DifferenceKind::Differs => report.differing += 1,
        }
        let repaired = if settings.repair {
            match repair(primary, secondary, &key, sv).await? {
                Repair::Done { cleared } => {
                    report.repaired += 1;
                    report.cleared += cleared;
                    true
                }
                Repair::Changed => {
                    report.changed_during_run += 1;
                    false
                }
            }
        } else {
            false
        };
        if report.differences.len() < settings.max_listed {
            report.differences.push(Difference {
                key,
                kind,
                primary_version: pv,
                secondary_version: sv,
                repaired,
            });
        }
    }
    report.primary_rows = p.rows;
    report.secondary_rows = s.rows;
    Ok(report)
}

enum Repair {
    Done { cleared: u64 },
    Changed,
}

/// Sets the secondary's row to the primary's as it is now, if the secondary still holds
/// what the run saw (`seen`, its version or absence); then clears the outbox entries
/// (missed ones included) that the repaired row covers.
async fn repair<P: OutboxStore, S: RowStore>(
    primary: &P,
    secondary: &S,
    key: &str,
    seen: Option<u64>,
) -> Result<Repair, DualError> {
    let truth = primary.get(key).await?;
    if !secondary.replace(key, seen, truth.as_ref()).await? {
        return Ok(Repair::Changed);
    }
    let cleared = match &truth {
        Some(row) => primary.settle(&[(row.key.clone(), row.version)]).await?,
        None => 0,
    };
    Ok(Repair::Done { cleared })
}
