//! The operator's API: stuck sagas listed, retried, or resolved by hand; a saga's timeline.

use tower_patterns_eventstore::EventStore;

use super::{Orchestrator, driver::Driver, read_log};
use crate::{Outcome, SagaError, SagaEvent, SagaId, SagaStatus, index::SagaIndex};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Retry,
    RetryNewKeys,
    Resolve,
}

/// A stuck saga, for the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSaga {
    /// The saga.
    pub id: SagaId,
    /// Its definition's name.
    pub saga_type: String,
    /// The step whose compensation keeps failing.
    pub step: String,
    /// Its last error.
    pub error: String,
    /// Why the saga was compensating.
    pub reason: Option<String>,
    /// When it got stuck (Unix ms).
    pub since_ms: u64,
}

/// One event of a saga's log, with when it was recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEvent {
    /// The event.
    pub event: SagaEvent,
    /// When it was recorded (Unix microseconds).
    pub recorded_at_micros: u64,
}

impl<S: EventStore, I: SagaIndex> Orchestrator<S, I> {
    /// Up to `max` stuck sagas, longest stuck first.
    ///
    /// # Errors
    ///
    /// The index or the log failing.
    pub async fn stuck(&self, max: usize) -> Result<Vec<StuckSaga>, SagaError> {
        let entries = self
            .inner
            .index
            .list("stuck", max)
            .await
            .map_err(SagaError::Index)?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let state = match self.state(&entry.id).await {
                Ok(Some(state)) => state,
                // An unreadable log is stuck too: listed, with what is known.
                Ok(None) | Err(SagaError::Log(_)) => {
                    out.push(StuckSaga {
                        id: entry.id,
                        saga_type: entry.saga_type,
                        step: String::new(),
                        error: "the saga log cannot be read".to_owned(),
                        reason: None,
                        since_ms: entry.updated_ms,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (step, error) = state.stuck.clone().unwrap_or_default();
            out.push(StuckSaga {
                id: entry.id,
                saga_type: entry.saga_type,
                step,
                error,
                reason: state.reason,
                since_ms: entry.updated_ms,
            });
        }
        Ok(out)
    }

    /// Retries stuck saga `id`: logs who and why, then compensates again from where it
    /// stopped, with fresh attempts under the same idempotency keys (a compensation that took
    /// effect but answered an error is not applied twice), and returns the new outcome (stuck
    /// again if the compensation still fails).
    ///
    /// # Errors
    ///
    /// [`SagaError::Invalid`] without `by` or `why`, [`SagaError::NotFound`],
    /// [`SagaError::NotStuck`], [`SagaError::Leased`] while another orchestrator holds it,
    /// or the log or the index failing.
    pub async fn retry(&self, id: &SagaId, by: &str, why: &str) -> Result<Outcome, SagaError> {
        self.operate(id, by, why, Op::Retry).await
    }

    /// As [`retry`](Self::retry), with a new generation of idempotency keys: for a service
    /// that remembers a failure under a key and would answer the same key with it again.
    /// Use it only when the failed compensations are known to have taken no effect: under a
    /// new key a service applies them afresh.
    ///
    /// # Errors
    ///
    /// As [`retry`](Self::retry).
    pub async fn retry_with_new_keys(
        &self,
        id: &SagaId,
        by: &str,
        why: &str,
    ) -> Result<Outcome, SagaError> {
        self.operate(id, by, why, Op::RetryNewKeys).await
    }

    /// Closes stuck saga `id` by hand (the operator undid the step some other way): logs
    /// who and why, and the saga ends `Resolved`.
    ///
    /// # Errors
    ///
    /// As [`retry`](Self::retry).
    pub async fn resolve(&self, id: &SagaId, by: &str, why: &str) -> Result<Outcome, SagaError> {
        self.operate(id, by, why, Op::Resolve).await
    }

    async fn operate(
        &self,
        id: &SagaId,
        by: &str,
        why: &str,
        op: Op,
    ) -> Result<Outcome, SagaError> {
        if by.trim().is_empty() || why.trim().is_empty() {
            return Err(SagaError::Invalid("an operator action needs who and why"));
        }
        let inner = &self.inner;
        // Only a stuck saga is operated on: no orchestrator drives it, so taking its lease
        // disturbs no one (a saga still running keeps its driver's lease untouched).
        let before = self
            .state(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.clone()))?;
        if before.status != SagaStatus::Stuck {
            return Err(SagaError::NotStuck {
                id: id.clone(),
                status: before.status,
            });
        }
        let now = inner.clock.now_ms();
        let claim = inner
            .index
            .claim_one(id, &inner.owner, now, inner.lease_until(now))
            .await
            .map_err(SagaError::Index)?;
        if claim.is_none() {
            // Another operator's retry drives it now.
            return Err(SagaError::Leased(id.clone()));
        }
        // Read again under the lease: another operator may have acted in between.
        let state = self
            .state(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.clone()))?;
        if state.status != SagaStatus::Stuck {
            let _ = inner.index.release(id, &inner.owner).await;
            return Err(SagaError::NotStuck {
                id: id.clone(),
                status: state.status,
            });
        }
        let Some(def) = inner.definitions.get(&*state.saga_type).cloned() else {
            return Err(SagaError::UnknownType(state.saga_type.to_string()));
        };
        let (by, why) = (by.to_owned(), why.to_owned());
        let event = match op {
            Op::Retry => SagaEvent::SagaRetried {
                by,
                why,
                generation: state.generation,
            },
            Op::RetryNewKeys => SagaEvent::SagaRetried {
                by,
                why,
                generation: state.generation + 1,
            },
            Op::Resolve => SagaEvent::SagaResolved { by, why },
        };
        tracing::info!(saga = %id, action = event.kind(), "operator action: {}", event.describe());
        inner.stats.operated();
        let durable = state.version;
        let mut state = state;
        state.apply(&event);
        if op != Op::Resolve {
            inner
                .index
                .set_status(id, SagaStatus::Compensating, now)
                .await
                .map_err(SagaError::Index)?;
        }
        Driver::new(inner.clone(), def, state, vec![event], durable, None)
            .ok_or_else(|| SagaError::Leased(id.clone()))?
            .run_result()
            .await?;
        self.state(id)
            .await?
            .map(|s| s.outcome())
            .ok_or_else(|| SagaError::NotFound(id.clone()))
    }

    /// Saga `id`'s log, oldest first: its timeline.
    ///
    /// # Errors
    ///
    /// The log failing, or holding an event that is not a saga event.
    pub async fn history(&self, id: &SagaId) -> Result<Vec<LoggedEvent>, SagaError> {
        Ok(read_log(&*self.inner.store, id)
            .await?
            .into_iter()
            .map(|(event, recorded_at_micros)| LoggedEvent {
                event,
                recorded_at_micros,
            })
            .collect())
    }
}
