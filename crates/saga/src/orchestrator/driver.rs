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

use super::{
    Driving, Inner,
    lease::{Lost, ensure_renewer},
    read_log,
};
use crate::{
    SagaDefinition, SagaError, SagaEvent, SagaId, SagaState, SagaStatus, StepError, metrics,
    policy::{self, Call, DEADLINE_PASSED, Next},
    step::{IdempotencyKey, Phase, StepRequest},
};

/// How many times an append that failed for another reason than a conflict is tried.
const APPEND_TRIES: u32 = 4;

pub(super) async fn start<S: EventStore, I: crate::index::SagaIndex>(
    inner: &Arc<Inner<S, I>>,
    saga_type: &str,
    id: SagaId,
    input: Value,
    deadline: Option<Duration>,
) -> Result<(), SagaError> {
    let def = inner
        .definitions
        .get(saga_type)
        .ok_or_else(|| SagaError::UnknownType(saga_type.to_owned()))?
        .clone();
    if deadline.is_some_and(|d| d.is_zero()) {
        return Err(SagaError::Invalid("a deadline of zero"));
    }
    ensure_renewer(inner);
    let now = inner.clock.now_ms();
    let lease_until = inner.lease_until(now);
    if !inner
        .index
        .register(&id, saga_type, &inner.owner, now, lease_until)
        .await
        .map_err(SagaError::Index)?
    {
        // Known already: a retried start, whose outcome is awaited as any other's; unless
        // the process that registered it died before it logged the start, and its lease
        // has expired (or was this owner's): then it never began, and begins now. One
        // driven here (a start racing this one) is left to its driver.
        if inner.driving().contains_key(&id) {
            return Ok(());
        }
        let never_began = inner.store.stream_version(&id.stream()).await? == 0;
        if !never_began {
            return Ok(());
        }
        let taken = inner
            .index
            .claim_one(&id, &inner.owner, now, lease_until)
            .await
            .map_err(SagaError::Index)?
            .is_some();
        // Not taken: held by a live starter, or just removed by a recovery that found no
        // log (then it registers anew).
        if !taken
            && !inner
                .index
                .register(&id, saga_type, &inner.owner, now, lease_until)
                .await
                .map_err(SagaError::Index)?
        {
            return Ok(());
        }
    }
    let deadline_ms = deadline
        .or(def.deadline)
        .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    let started = SagaEvent::SagaStarted {
        saga_type: saga_type.to_owned(),
        input,
        deadline_ms,
        owner: inner.owner.to_string(),
    };
    let state = SagaState::started(id.clone(), &started).ok_or(SagaError::Invalid("start"))?;
    let (tx, rx) = oneshot::channel();
    let mut driver = Driver::new(inner.clone(), def, state, vec![started], 0, Some(tx));
    driver.registered = Some(tokio::time::Instant::now());
    inner.stats.started.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(driver.run());
    rx.await.unwrap_or(Err(SagaError::LeaseLost(id)))
}

/// Claims what the index offers (up to the free permits), reads each claimed saga's log,
/// and spawns a driver for each that has something to do; returns how many were claimed.
/// With `reclaim_own`, takes back this owner's unexpired leases too (a restart). The logs are
/// read before this returns, so a start of the same id after it finds the index settled.
pub(super) async fn claim_and_spawn<S: EventStore, I: crate::index::SagaIndex>(
    inner: &Arc<Inner<S, I>>,
    reclaim_own: bool,
) -> Result<usize, SagaError> {
    let free = inner.permits.available_permits();
    if free == 0 {
        return Ok(0);
    }
    ensure_renewer(inner);
    let now = inner.clock.now_ms();
    let claims = inner
        .index
        .claim(&inner.owner, now, inner.lease_until(now), free, reclaim_own)
        .await
        .map_err(SagaError::Index)?;
    let taken = claims.len();
    let mut prepared = Vec::with_capacity(claims.len());
    for claim in claims {
        if inner.driving().contains_key(&claim.id) {
            continue; // driven here already (a reclaim of one's own)
        }
        let Ok(permit) = inner.permits.clone().try_acquire_owned() else {
            // More claimed than permits (a claim raced a start): give it back.
            let _ = inner.index.release(&claim.id, &inner.owner).await;
            continue;
        };
        prepared.push(async move {
            let id = claim.id.clone();
            (
                id,
                prepare(inner, claim.id, claim.previous_owner).await,
                permit,
            )
        });
    }
    for (id, driver, permit) in futures_util::future::join_all(prepared).await {
        match driver {
            Ok(Some(driver)) => {
                tokio::spawn(async move {
                    let _ = driver.run_result().await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(orchestrator = %inner.name, saga = %id, error = %e, "saga not resumed");
            }
        }
    }
    Ok(taken)
}

/// Takes saga `id` back if its lease is free (or this owner's) and no driver here has it,
/// and drives it in the background.
pub(super) async fn take_back<S: EventStore, I: crate::index::SagaIndex>(
    inner: &Arc<Inner<S, I>>,
    id: &SagaId,
) -> Result<(), SagaError> {
    if inner.driving().contains_key(id) {
        return Ok(());
    }
    let now = inner.clock.now_ms();
    let claim = inner
        .index
        .claim_one(id, &inner.owner, now, inner.lease_until(now))
        .await
        .map_err(SagaError::Index)?;
    if let Some(claim) = claim
        && let Some(driver) = prepare(inner, claim.id, claim.previous_owner).await?
    {
        tokio::spawn(driver.run());
    }
    Ok(())
}

/// Reads a claimed saga's log and makes its driver (registered as driving here); `None`
/// when there is nothing to drive (it never began).
async fn prepare<S: EventStore, I: crate::index::SagaIndex>(
    inner: &Arc<Inner<S, I>>,
    id: SagaId,
    previous_owner: Option<String>,
) -> Result<Option<Driver<S, I>>, SagaError> {
    let log = match read_log(&*inner.store, &id).await {
        Ok(log) => log,
        Err(SagaError::Log(e)) if !matches!(e, tower_patterns_eventstore::Error::Backend(_)) => {
            // A log this orchestrator cannot read (a corrupt event): an operator's case.
            tracing::error!(saga = %id, error = %e, "saga log unreadable: marked stuck");
            let now = inner.clock.now_ms();
            inner
                .index
                .set_status(&id, SagaStatus::Stuck, now)
                .await
                .map_err(SagaError::Index)?;
            return Err(SagaError::Log(e));
        }
        Err(e) => {
            let _ = inner.index.release(&id, &inner.owner).await;
            return Err(e);
        }
    };
    let Some(state) = SagaState::replay(id.clone(), log.iter().map(|(e, _)| e)) else {
        // Registered, then the process died before the start was logged: it never began,
        // and a retried start begins it.
        inner.index.remove(&id).await.map_err(SagaError::Index)?;
        return Ok(None);
    };
    let Some(def) = inner.definitions.get(&*state.saga_type).cloned() else {
        let _ = inner.index.release(&id, &inner.owner).await;
        return Err(SagaError::UnknownType(state.saga_type.to_string()));
    };
    let mut pending = Vec::new();
    if let Some(previous) = previous_owner
        && !state.status.is_terminal()
        && state.status != SagaStatus::Stuck
    {
        tracing::info!(saga = %id, from = %previous, to = %inner.owner, "saga taken over");
        inner.stats.resumed.fetch_add(1, Ordering::Relaxed);
        metrics::resumed(&inner.name);
        // Logged first: a previous owner still alive loses its next append to it.
        pending.push(SagaEvent::SagaResumed {
            owner: inner.owner.to_string(),
        });
    }
    let durable = state.version;
    let mut state = state;
    for e in &pending {
        state.apply(e);
    }
    Ok(Some(Driver::new(
        inner.clone(),
        def,
        state,
        pending,
        durable,
        None,
    )))
}

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
    registered: Option<tokio::time::Instant>,
    lost: Arc<Lost>,
    outcome: watch::Sender<Option<crate::Outcome>>,
}

impl<S: EventStore, I: crate::index::SagaIndex> Driver<S, I> {
    pub(super) fn new(
        inner: Arc<Inner<S, I>>,
        def: SagaDefinition,
        state: SagaState,
        pending: Vec<SagaEvent>,
        durable: u64,
        started: Option<oneshot::Sender<Result<(), SagaError>>>,
    ) -> Self {
        let lost = Arc::new(Lost::default());
        let (outcome, _) = watch::channel(None);
        inner.driving().insert(
            state.id.clone(),
            Driving {
                outcome: outcome.clone(),
                lost: lost.clone(),
                round: inner.round.load(Ordering::SeqCst),
            },
        );
        Self {
            inner,
            def,
            state,
            pending,
            durable,
            started,
            registered: None,
            lost,
            outcome,
        }
    }

    async fn run(self) {
        let _ = self.run_result().await;
    }

    /// Drives the saga until it ends, is stuck, or cannot go on; cleans up either way.
    pub(super) async fn run_result(mut self) -> Result<(), SagaError> {
        let id = self.state.id.clone();
        let result = self.drive().await;
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
            // Given back if still ours (a lease another took is not touched): whoever claims
            // the saga next, this process included, reads the log and goes on.
            let _ = self.inner.index.release(&id, &self.inner.owner).await;
        }
        let mut driving = self.inner.driving();
        if driving
            .get(&id)
            .is_some_and(|d| Arc::ptr_eq(&d.lost, &self.lost))
        {
            driving.remove(&id);
        }
        drop(driving);
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
