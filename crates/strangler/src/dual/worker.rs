//! The worker: reads due outbox entries, sends each key's current row to the secondary,
//! settles what arrived and defers what failed.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;
use tower_patterns_core::rng::SplitMix64;

use super::{
    APPLIED, DualError, FAILURES, MISSED, MISSED_TOTAL, PENDING, Row, SUPERSEDED,
    handle::{CATCHING_UP, LIVE, PRIMARY_FAILING, SECONDARY_FAILING, STOPPED, Shared},
    policy::RetryPolicy,
    row::now_ms,
    store::{Deferral, OutboxStore, Pending, RowStore, short_error},
};

pub(crate) struct Worker<P, S> {
    pub(crate) primary: Arc<P>,
    pub(crate) secondary: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: RetryPolicy,
    pub(crate) batch: usize,
    pub(crate) poll: Duration,
    pub(crate) rng: SplitMix64,
}

/// How a round went.
struct Round {
    /// Entries it handled.
    entries: usize,
    /// The secondary's failure, if a delivery failed.
    failed: Option<DualError>,
}

impl<P: OutboxStore, S: RowStore> Worker<P, S> {
    pub(crate) async fn run(mut self) {
        let mut stop = self.shared.stop.subscribe();
        let mut primary_failures = 0u32;
        let mut counted: Option<Instant> = None;
        let mut failing = false;
        loop {
            if *stop.borrow() {
                break;
            }
            match self.round().await {
                Ok(round) => {
                    primary_failures = 0;
                    let full = round.entries >= self.batch;
                    self.report_round(&round, full, &mut failing);
                    if !full || counted.is_none_or(|t| t.elapsed() >= self.poll) {
                        if let Err(e) = self.count().await {
                            self.primary_failed(&e, 1);
                        }
                        counted = Some(Instant::now());
                    }
                    if full {
                        continue;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.poll) => {}
                        () = self.shared.wake.notified() => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                Err(e) => {
                    primary_failures = primary_failures.saturating_add(1);
                    self.primary_failed(&e, primary_failures);
                    let delay = self.policy.backoff.delay(
                        primary_failures,
                        Duration::ZERO,
                        self.policy.cap,
                        &mut self.rng,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay.max(self.poll)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        self.shared.set_status(STOPPED);
        self.shared.tally.send_modify(|_| {});
        tracing::debug!(target: "tower_patterns::strangler", dual = %self.shared.name, "dual-write worker stopped");
    }

    fn report_round(&self, round: &Round, full: bool, failing: &mut bool) {
        let name = &self.shared.name;
        match &round.failed {
            Some(e) => {
                self.shared.set_status(SECONDARY_FAILING);
                self.shared.set_error(e);
                if !*failing {
                    tracing::warn!(target: "tower_patterns::strangler", dual = %name, error = %e, "the secondary failed a delivery; writes go on and wait in the outbox");
                }
                *failing = true;
            }
            // A round with nothing due says nothing of the secondary: it stays failing
            // until a delivery succeeds.
            None if round.entries == 0 => {
                self.shared
                    .set_status(if *failing { SECONDARY_FAILING } else { LIVE });
            }
            None => {
                self.shared
                    .set_status(if full { CATCHING_UP } else { LIVE });
                if *failing {
                    tracing::info!(target: "tower_patterns::strangler", dual = %name, "the secondary takes deliveries again");
                    *failing = false;
                }
            }
        }
    }

    fn primary_failed(&self, e: &DualError, attempt: u32) {
        self.shared.set_status(PRIMARY_FAILING);
        self.shared.set_error(e);
        if attempt == 1 {
            tracing::warn!(target: "tower_patterns::strangler", dual = %self.shared.name, error = %e, "the dual-write worker cannot read the primary's outbox; retrying");
        }
    }

    async fn count(&self) -> Result<(), DualError> {
        let counts = self.primary.outbox_counts().await?;
        self.shared.pending.store(counts.pending, Ordering::Relaxed);
        self.shared.missed.store(counts.missed, Ordering::Relaxed);
        let name = self.shared.name.to_string();
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!(PENDING, "name" => name.clone()).set(counts.pending as f64);
            metrics::gauge!(MISSED, "name" => name).set(counts.missed as f64);
        }
        self.shared.tally.send_modify(|t| {
            t.round += 1;
            t.counts = counts;
        });
        Ok(())
    }

    /// One batch of due entries. Errors are the primary's; the secondary's go in the round.
    async fn round(&mut self) -> Result<Round, DualError> {
        let now = now_ms();
        let due = self.primary.due(now, self.batch).await?;
        if due.is_empty() {
            return Ok(Round {
                entries: 0,
                failed: None,
            });
        }
        let mut by_key: HashMap<&str, Vec<&Pending>> = HashMap::new();
        for entry in &due {
            by_key.entry(entry.key.as_str()).or_default().push(entry);
        }
        let keys: Vec<String> = by_key.keys().map(|k| (*k).to_owned()).collect();
        let rows = self.primary.rows(&keys).await?;
        // A key the primary no longer holds (removed by hand: writes leave tombstones) has
        // nothing to deliver; a reconciler removes it from the secondary.
        let mut delivered: Vec<(String, u64)> = Vec::new();
        for key in &keys {
            if !rows.iter().any(|r| &r.key == key) {
                tracing::warn!(target: "tower_patterns::strangler", dual = %self.shared.name, key = %key, "an outbox entry's row is gone from the primary; dropped");
                let top = by_key[key.as_str()].iter().map(|e| e.version).max();
                delivered.push((key.clone(), top.unwrap_or(0)));
            }
        }
        let mut failed: Vec<(&Row, String, bool)> = Vec::new();
        let mut first_failure: Option<DualError> = None;
        let (mut applied, mut superseded) = (0u64, 0u64);
        let mut tally = |row: &Row, stored: bool, delivered: &mut Vec<(String, u64)>| {
            if stored {
                applied += 1;
            } else {
                superseded += 1;
            }
            delivered.push((row.key.clone(), row.version));
        };
        match self.secondary.apply(&rows).await {
            Ok(stored) => {
                for (row, stored) in rows.iter().zip(stored) {
                    tally(row, stored, &mut delivered);
                }
            }
            // Down or busy: every row waits; nothing to learn from trying them one by one.
            Err(e) if e.is_transient() || rows.len() == 1 => {
                let (text, transient) = (short_error(&e), e.is_transient());
                failed.extend(rows.iter().map(|r| (r, text.clone(), transient)));
                first_failure = Some(e);
            }
            // One row may be at fault: find it, and deliver the others.
            Err(_) => {
                for row in &rows {
                    match self.secondary.apply(std::slice::from_ref(row)).await {
                        Ok(stored) => tally(
                            row,
                            stored.first().copied().unwrap_or(false),
                            &mut delivered,
                        ),
                        Err(e) => {
                            failed.push((row, short_error(&e), e.is_transient()));
                            first_failure.get_or_insert(e);
                        }
                    }
                }
            }
        }
        let mut deferrals: Vec<Deferral> = Vec::new();
        let mut newly_missed = 0u64;
        for (row, text, transient) in &failed {
            for entry in &by_key[row.key.as_str()] {
                let out =
                    self.policy
                        .after_failure(entry, !transient, text.clone(), now, &mut self.rng);
                newly_missed += u64::from(out.newly_missed);
                deferrals.push(out.deferral);
            }
        }
        self.primary.settle(&delivered).await?;
        self.primary.defer(&deferrals).await?;

        let name = self.shared.name.to_string();
        self.shared.applied.fetch_add(applied, Ordering::Relaxed);
        self.shared
            .superseded
            .fetch_add(superseded, Ordering::Relaxed);
        metrics::counter!(APPLIED, "name" => name.clone()).increment(applied);
        metrics::counter!(SUPERSEDED, "name" => name.clone()).increment(superseded);
        if !deferrals.is_empty() {
            let n = deferrals.len() as u64;
            self.shared.failures.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(FAILURES, "name" => name.clone()).increment(n);
        }
        if newly_missed > 0 {
            metrics::counter!(MISSED_TOTAL, "name" => name).increment(newly_missed);
            tracing::warn!(target: "tower_patterns::strangler", dual = %self.shared.name, writes = newly_missed, "writes recorded as missed by the secondary");
        }
        Ok(Round {
            entries: due.len(),
            failed: first_failure,
        })
    }
}
