//! Taking sagas to drive: a start, a claim of what the index offers, taking one back; each
//! ends in a [`Driver`](super::driver::Driver).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::oneshot;
use tower_patterns_eventstore::EventStore;

use super::{Inner, driver::Driver, lease::ensure_renewer, read_log};
use crate::{SagaError, SagaEvent, SagaId, SagaState, SagaStatus, metrics};

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
    let Some(mut driver) = Driver::new(inner.clone(), def, state, vec![started], 0, Some(tx))
    else {
        return Ok(()); // a start of the same id, racing this one, drives it
    };
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

/// After removing the entry of a saga whose log was empty: the starter, alive but slow, may
/// have logged the start between that read and the removal, and its second registration
/// (see the driver) found this claim's entry and changed nothing. Then the log has the start
/// now, and the entry is put back in the starter's name, so that its lease holds, or
/// expires and the saga is taken over, as if it had never been removed. Without this the
/// saga would be logged but in no index: driven by no one, and waited on forever.
async fn restore_if_started<S: EventStore, I: crate::index::SagaIndex>(
    inner: &Arc<Inner<S, I>>,
    id: &SagaId,
) -> Result<(), SagaError> {
    let log = read_log(&*inner.store, id).await?;
    if let Some((
        SagaEvent::SagaStarted {
            saga_type, owner, ..
        },
        _,
    )) = log.first()
    {
        tracing::info!(saga = %id, owner, "saga started while its entry was removed: put back");
        let now = inner.clock.now_ms();
        inner
            .index
            .register(id, saga_type, owner, now, inner.lease_until(now))
            .await
            .map_err(SagaError::Index)?;
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
        restore_if_started(inner, &id).await?;
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
    Ok(Driver::new(
        inner.clone(),
        def,
        state,
        pending,
        durable,
        None,
    ))
}
