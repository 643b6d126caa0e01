//! Carrying out the policy: one task per saga, logging before each call and after it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt as _;
use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion};

use super::{Driving, Inner, lease::Lost};
use crate::{
    SagaDefinition, SagaError, SagaEvent, SagaState, SagaStatus, StepError, metrics,
    policy::{self, Call, DEADLINE_PASSED, Next},
    step::{IdempotencyKey, Phase, StepRequest},
};

/// How many times an append that failed for another reason than a conflict is tried.
const APPEND_TRIES: u32 = 4;

pub(super) struct Driver<S, I> {
    inner: Arc<Inner<S, I>>,
    def: SagaDefinition,
    state: SagaState,
    /// Transitions applied to `state` and not yet in the log.
    pending: Vec<SagaEvent>,
    /// The log's version before `pending`.
    durable: u64,
    started: Option<oneshot::Sender<Result<(), SagaError>>>,
    /// When this driver registered the saga (a start), until its first append.
    pub(super) registered: Option<tokio::time::Instant>,
    lost: Arc<Lost>,
    outcome: watch::Sender<Option<crate::Outcome>>,
}

impl<S: EventStore, I: crate::index::SagaIndex> Driver<S, I> {
    /// A driver for `state`'s saga, registered as driving here; `None` when this process
    /// drives that saga already (two starts, or a start and a claim, that raced).
    pub(super) fn new(
        inner: Arc<Inner<S, I>>,
        def: SagaDefinition,
        state: SagaState,
        pending: Vec<SagaEvent>,
        durable: u64,
        started: Option<oneshot::Sender<Result<(), SagaError>>>,
    ) -> Option<Self> {
        let lost = Arc::new(Lost::default());
        let (outcome, _) = watch::channel(None);
        match inner.driving().entry(state.id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return None,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Driving {
                    outcome: outcome.clone(),
                    lost: lost.clone(),
                    round: inner.round.load(Ordering::SeqCst),
                });
            }
        }
        Some(Self {
            inner,
            def,
            state,
            pending,
            durable,
            started,
            registered: None,
            lost,
            outcome,
        })
    }

    pub(super) async fn run(self) {
        let _ = self.run_result().await;
    }

    /// Drives the saga until it ends, is stuck, or cannot go on; cleans up either way.
    pub(super) async fn run_result(mut self) -> Result<(), SagaError> {
        let id = self.state.id.clone();
        let result = self.drive().await;
        {
            let mut driving = self.inner.driving();
            if driving
                .get(&id)
                .is_some_and(|d| Arc::ptr_eq(&d.lost, &self.lost))
            {
                driving.remove(&id);
            }
        }
        if let Err(e) = &result {
            match e {
                SagaError::LeaseLost(_) => {
                    self.inner.stats.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(saga = %id, "saga lease lost: another orchestrator drives it");
                }
                e => {
                    self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(saga = %id, error = %e, "saga paused: it resumes when claimed again");
                }
            }
            // Given back if still ours (a lease another took is not touched), once no driver
            // here has the saga: whoever claims it next, this process included, reads the log
            // and goes on.
            let _ = self.inner.index.release(&id, &self.inner.owner).await;
        }
        result
    }

    async fn drive(&mut self) -> Result<(), SagaError> {
        loop {
            if self.lost.is_set() {
                return Err(SagaError::LeaseLost(self.state.id.clone()));
            }
            let now = self.inner.clock.now_ms();
            match policy::next(&self.state, &self.def, now) {
                Next::Done => return self.finish().await,
                Next::Record(event) => self.record(event),
                Next::Calls(calls) => self.calls(calls).await?,
            }
        }
    }

    fn record(&mut self, event: SagaEvent) {
        self.state.apply(&event);
        self.pending.push(event);
    }

    /// Appends what is pending, expecting the log where this driver left it: a conflict
    /// means another orchestrator wrote to the log, so this one stops.
    async fn flush(&mut self) -> Result<(), SagaError> {
        match self.append_pending().await {
            Ok(()) => Ok(()),
            Err(e) => match self.started.take() {
                // The start's caller hears why (a conflict: another started it; the log
                // down: 503); the driver stops with the same kind of error.
                Some(tx) => {
                    let again = match &e {
                        SagaError::LeaseLost(id) => SagaError::LeaseLost(id.clone()),
                        _ => SagaError::Invalid("the saga's start was not logged"),
                    };
                    let _ = tx.send(Err(e));
                    Err(again)
                }
                None => Err(e),
            },
        }
    }

    async fn append_pending(&mut self) -> Result<(), SagaError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = self
            .pending
            .iter()
            .map(SagaEvent::to_data)
            .collect::<Result<Vec<EventData>, _>>()?;
        let expected = if self.durable == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(self.durable)
        };
        let stream = self.state.id.stream();
        let mut tries = 0;
        let done = loop {
            tries += 1;
            // The same event ids every try: an append that committed but whose answer was
            // lost answers as a duplicate.
            match self
                .inner
                .store
                .append(&stream, expected, data.clone())
                .await
            {
                Ok(done) => break done,
                Err(e) if e.is_conflict() => {
                    return Err(SagaError::LeaseLost(self.state.id.clone()));
                }
                Err(e) if tries >= APPEND_TRIES => return Err(SagaError::Log(e)),
                Err(e) => {
                    tracing::debug!(saga = %self.state.id, error = %e, "saga log append failed; trying again");
                    tokio::time::sleep(Duration::from_millis(50 << tries)).await;
                }
            }
        };
        self.durable = done.version;
        self.pending.clear();
        if let Some(registered) = self.registered.take()
            && registered.elapsed() >= self.inner.lease / 2
        {
            // The start took long enough for another orchestrator to have found the saga's
            // entry without a log and removed it: register it again (a no-op if it is there).
            let now = self.inner.clock.now_ms();
            let lease_until = self.inner.lease_until(now);
            self.inner
                .index
                .register(
                    &self.state.id,
                    &self.state.saga_type,
                    &self.inner.owner,
                    now,
                    lease_until,
                )
                .await
                .map_err(SagaError::Index)?;
        }
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Ok(()));
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SagaError> {
        self.flush().await?;
        let status = self.state.status;
        let stats = &self.inner.stats;
        let counter = match status {
            SagaStatus::Completed => &stats.completed,
            SagaStatus::Compensated => &stats.compensated,
            SagaStatus::Stuck => {
                stats.stuck_now.fetch_add(1, Ordering::Relaxed);
                &stats.stuck
            }
            SagaStatus::Resolved => &stats.resolved,
            _ => &stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::ended(&self.inner.name, &self.state.saga_type, status);
        if status == SagaStatus::Stuck {
            tracing::error!(saga = %self.state.id, stuck = ?self.state.stuck, "saga stuck: an operator must retry or resolve it");
        }
        let now = self.inner.clock.now_ms();
        if let Err(e) = self
            .inner
            .index
            .set_status(&self.state.id, status, now)
            .await
        {
            // The log has the end; whoever claims the saga next reads it and settles the index.
            tracing::warn!(saga = %self.state.id, error = %e, "saga index not updated");
        }
        self.outcome.send_replace(Some(self.state.outcome()));
        Ok(())
    }

    async fn calls(&mut self, calls: Vec<Call>) -> Result<(), SagaError> {
        let forward = self.state.status == SagaStatus::Running;
        let deadline = self
            .state
            .deadline_ms
            .filter(|_| forward)
            .map(|ms| self.inner.clock.instant(ms));
        let wait = calls.iter().map(|c| c.delay).max().unwrap_or_default();
        if !wait.is_zero() {
            // Durable first: what failed is in the log before the backoff.
            self.flush().await?;
            let until = tokio::time::Instant::now() + wait;
            match deadline {
                Some(d) if d < until => {
                    tokio::time::sleep_until(d).await;
                    return Ok(()); // the policy now sees the deadline
                }
                _ => tokio::time::sleep_until(until).await,
            }
        }
        for c in calls.iter().filter(|c| c.log_start) {
            let step = self.def.stages[c.stage][c.index].name.to_string();
            self.record(match c.phase {
                Phase::Action => SagaEvent::StepStarted {
                    step,
                    attempt: c.attempt,
                },
                Phase::Compensation => SagaEvent::StepCompensationStarted {
                    step,
                    attempt: c.attempt,
                },
            });
        }
        self.flush().await?;
        if self.lost.is_set() {
            return Err(SagaError::LeaseLost(self.state.id.clone()));
        }
        let mut running: FuturesUnordered<_> = calls.iter().map(|c| self.call(c)).collect();
        let mut outcomes = Vec::with_capacity(calls.len());
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let lost = self.lost.clone();
        let lost_wait = lost.wait();
        tokio::pin!(lost_wait);
        loop {
            tokio::select! {
                next = running.next() => match next {
                    Some(done) => outcomes.push(done),
                    None => break,
                },
                () = &mut sleep => break,
                // Another may drive the saga now: stop, the calls in flight dropped.
                () = &mut lost_wait => return Err(SagaError::LeaseLost(self.state.id.clone())),
            }
        }
        drop(running);
        for (call, result) in outcomes {
            let event = outcome_event(&self.def, call, result);
            self.record(event);
        }
        // A call still running had no answer when the deadline passed: its outcome is unknown.
        for c in &calls {
            let step = &self.def.stages[c.stage][c.index].name;
            if matches!(self.state.phase(step), crate::StepPhase::Running { .. }) {
                self.record(SagaEvent::StepFailed {
                    step: step.to_string(),
                    attempt: c.attempt,
                    error: DEADLINE_PASSED.to_owned(),
                    refused: false,
                });
            }
        }
        Ok(())
    }

    fn call<'a>(
        &self,
        c: &'a Call,
    ) -> impl Future<Output = (&'a Call, Result<Value, tower_patterns_core::BoxError>)> + use<'a, S, I>
    {
        let step = &self.def.stages[c.stage][c.index];
        let service = match c.phase {
            Phase::Action => Some(step.action.clone()),
            Phase::Compensation => step.compensation.clone(),
        };
        let timeout = step.timeout;
        let req = StepRequest {
            saga: self.state.id.clone(),
            saga_type: self.state.saga_type.clone(),
            step: step.name.clone(),
            phase: c.phase,
            key: IdempotencyKey::new(&self.state.id, &step.name, c.phase, self.state.generation),
            attempt: c.attempt,
            input: self.state.input.clone(),
            outputs: self.state.outputs.clone(),
        };
        async move {
            let Some(service) = service else {
                return (c, Ok(Value::Null));
            };
            let call = service.oneshot(req);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => Err("step timed out".into()),
                },
                None => call.await,
            };
            (c, result)
        }
    }
}

fn outcome_event(
    def: &SagaDefinition,
    c: &Call,
    result: Result<Value, tower_patterns_core::BoxError>,
) -> SagaEvent {
    let step = def.stages[c.stage][c.index].name.to_string();
    match (c.phase, result) {
        (Phase::Action, Ok(output)) => SagaEvent::StepSucceeded { step, output },
        (Phase::Action, Err(e)) => {
            let refused = StepError::find(&e);
            SagaEvent::StepFailed {
                step,
                attempt: c.attempt,
                error: refused.map_or_else(|| e.to_string(), |r| r.reason().to_owned()),
                refused: refused.is_some(),
            }
        }
        (Phase::Compensation, Ok(_)) => SagaEvent::StepCompensated { step },
        (Phase::Compensation, Err(e)) => SagaEvent::CompensationFailed {
            step,
            attempt: c.attempt,
            error: e.to_string(),
        },
    }
}
