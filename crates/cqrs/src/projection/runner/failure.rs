//! The failure policy carried out: retries after a backoff, dead letters, stops.

use std::time::Duration;

use serde_json::value::RawValue;
use tower_patterns_eventstore::{
    Error as StoreError, EventStore, GlobalPosition, Metadata, RecordedEvent,
};

use tokio::time::Instant;

use super::{
    ERROR_BACKOFF, ERROR_BACKOFF_CAP, Exit, LAG_EVERY, REBUILD_ATTEMPTS, Runner, UNREADABLE, Which,
};
use crate::{
    projection::{Action, ApplyError, ProjectionError, Status},
    target::{Slot, Target},
};

/// A stand-in for a stored row that could not be read: what a dead letter records.
pub(super) fn unreadable(stream: &str, version: u64, position: GlobalPosition) -> RecordedEvent {
    RecordedEvent {
        stream_id: stream.to_owned(),
        version,
        position,
        id: uuid::Uuid::nil(),
        event_type: UNREADABLE.to_owned(),
        schema_version: 0,
        payload: RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!()),
        metadata: Metadata::default(),
    }
}

impl<S: EventStore, T: Target> Runner<S, T> {
    /// Carries out the failure policy for `event`, which failed with `error`: returns once
    /// the event is applied or dead-lettered (the cursor past it).
    pub(super) async fn fail(
        &mut self,
        which: Which,
        slot: &Slot,
        event: RecordedEvent,
        error: ApplyError,
    ) -> Result<(), Exit> {
        let mut error = error;
        let mut attempt = 1u32;
        let mut previous = Duration::ZERO;
        loop {
            let policy = self.settings.policy;
            match policy.decide(attempt, &error, previous, &mut self.rng) {
                Action::Retry(delay) => {
                    self.meters.retries.increment(1);
                    tracing::debug!(
                        target: "tower_patterns::cqrs",
                        projection = %self.settings.name,
                        position = %event.position,
                        attempt,
                        error = %error,
                        "event failed; retrying"
                    );
                    self.shared.set_status(Status::Retrying {
                        attempt,
                        error: ProjectionError::apply(
                            &self.settings.name,
                            &event,
                            attempt,
                            ApplyError::transient(error.to_string()),
                        )
                        .to_string(),
                    });
                    self.sleep(delay, true).await?;
                    previous = delay;
                    attempt = attempt.saturating_add(1);
                }
                Action::DeadLetter => {
                    let after = self.cursor(which).position;
                    self.target
                        .dead_letter(slot, after, &event, &error, attempt)
                        .await?;
                    self.meters.dead_letters.increment(1);
                    tracing::warn!(
                        target: "tower_patterns::cqrs",
                        projection = %self.settings.name,
                        stream = %event.stream_id,
                        version = event.version,
                        position = %event.position,
                        error = %error,
                        "event set aside as a dead letter"
                    );
                    self.pass(which, event.position);
                    self.cursor(which).limit = self.settings.batch;
                    return Ok(());
                }
                Action::Stop if which == Which::Rebuild => {
                    return Err(Exit::RebuildStopped(ProjectionError::apply(
                        &self.settings.name,
                        &event,
                        attempt,
                        error,
                    )));
                }
                Action::Stop => {
                    let resumes = self.control.borrow().resumes;
                    let stopped =
                        ProjectionError::apply(&self.settings.name, &event, attempt, error);
                    tracing::error!(
                        target: "tower_patterns::cqrs",
                        projection = %self.settings.name,
                        error = %stopped,
                        "projection stopped by its failure policy"
                    );
                    self.shared.set_status(Status::Stopped {
                        error: stopped.to_string(),
                    });
                    self.shared.set_error(stopped);
                    self.park(resumes).await?;
                    self.shared.set_status(Status::CatchingUp);
                    attempt = 1;
                    previous = Duration::ZERO;
                }
            }
            match self.try_alone(which, slot).await? {
                None => {
                    self.cursor(which).limit = self.settings.batch;
                    return Ok(());
                }
                Some(e) => error = e,
            }
        }
    }

    /// Whether the rebuild may take its next step (no backoff pending).
    pub(super) fn rebuild_due(&self) -> bool {
        self.rebuild_retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// The rebuild's copy worked: the next failure counts from one.
    pub(super) fn rebuild_recovered(&mut self) {
        self.rebuild_failures = 0;
        self.rebuild_previous = Duration::ZERO;
        self.rebuild_retry_at = None;
    }

    /// The rebuild's copy could not be opened, advanced or swapped in with `error` (not the
    /// event store's): abandoned at once when trying again cannot help
    /// ([`ProjectionError::is_permanent`]) or after [`REBUILD_ATTEMPTS`] failures in a row;
    /// otherwise the rebuild alone waits a backoff while the live copy goes on. True when it
    /// is to be tried again.
    pub(super) async fn rebuild_failed(&mut self, error: ProjectionError) -> Result<bool, Exit> {
        self.rebuild_failures = self.rebuild_failures.saturating_add(1);
        if error.is_permanent() || self.rebuild_failures >= REBUILD_ATTEMPTS {
            self.abandon_rebuild(error).await?;
            return Ok(false);
        }
        let delay = ERROR_BACKOFF.delay(
            self.rebuild_failures,
            self.rebuild_previous,
            ERROR_BACKOFF_CAP,
            &mut self.rng,
        );
        self.rebuild_previous = delay;
        self.rebuild_retry_at = Some(Instant::now() + delay);
        tracing::warn!(
            target: "tower_patterns::cqrs",
            projection = %self.settings.name,
            attempt = self.rebuild_failures,
            error = %error,
            "rebuild failed; trying it again after a backoff while the live copy goes on"
        );
        Ok(true)
    }

    /// The rebuild failed for good (its copy could not be opened, advanced or swapped in,
    /// or its failure policy stopped it): it is dropped, the live copy goes on, and the
    /// handle's `last_error` tells why.
    pub(super) async fn abandon_rebuild(&mut self, error: ProjectionError) -> Result<(), Exit> {
        tracing::error!(
            target: "tower_patterns::cqrs",
            projection = %self.settings.name,
            error = %error,
            "rebuild failed and abandoned; the live copy goes on"
        );
        self.shared.set_error(error);
        self.rebuild = None;
        self.rebuild_recovered();
        let slot = self.rebuild_slot();
        if let Err(e) = self.target.discard(&slot).await {
            match Exit::from(e) {
                // Left for the next rebuild or start, which discard it first.
                Exit::Transient(e) | Exit::RebuildStopped(e) => tracing::warn!(
                    target: "tower_patterns::cqrs",
                    projection = %self.settings.name,
                    error = %e,
                    "the abandoned rebuild's tables could not be dropped yet"
                ),
                e => return Err(e),
            }
        }
        self.shared.set_status(Status::CatchingUp);
        Ok(())
    }

    /// Waits for a resume after `resumes` resumes, or a shutdown, measuring the lag once a
    /// second meanwhile.
    async fn park(&mut self, resumes: u64) -> Result<(), Exit> {
        let control = loop {
            self.measure_lag_due(None).await?;
            let next = self
                .lag_measured
                .map_or_else(Instant::now, |t| t + LAG_EVERY);
            tokio::select! {
                r = self.control.wait_for(|c| c.shutdown || c.resumes > resumes) => match r {
                    Ok(c) => break *c,
                    Err(_) => return Err(Exit::Shutdown),
                },
                () = tokio::time::sleep_until(next) => {}
            }
        };
        if control.shutdown {
            return Err(Exit::Shutdown);
        }
        self.seen.resumes = control.resumes;
        Ok(())
    }

    /// Reads the next event of `which` and applies it alone: `None` when it was applied.
    async fn try_alone(&mut self, which: Which, slot: &Slot) -> Result<Option<ApplyError>, Exit> {
        let after = self.cursor(which).position;
        let page = match self.store.read_all(after, 1).await {
            Ok(page) => page,
            Err(e @ StoreError::Corrupt { .. }) => return Ok(Some(ApplyError::from(e))),
            Err(e) => return Err(e.into()),
        };
        let Some(event) = page.first() else {
            return Ok(None);
        };
        let applied = self.target.apply(slot, after, &page).await?;
        if applied.count == 1 {
            self.advance(which, event, 1);
        }
        Ok(applied.failed)
    }
}
