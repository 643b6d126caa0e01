//! Keeping leases: the renewal task, and the signal that tells a driver it lost its saga.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;
use tower_patterns_eventstore::EventStore;

use super::Inner;
use crate::{SagaId, index::SagaIndex};

/// Set when this process may no longer hold a saga's lease: its driver stops at once,
/// dropping the calls in flight (their outcome is unknown; the next driver makes them again
/// under the same keys).
#[derive(Debug, Default)]
pub(crate) struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Returns once set.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Starts the task that renews the leases of the sagas this process drives, once. A saga
/// whose lease another took is marked lost; when renewals keep failing (the index is out of
/// reach), every saga is marked lost before its lease can expire elsewhere, two thirds of
/// a lease after the last renewal that worked.
pub(super) fn ensure_renewer<S: EventStore, I: SagaIndex>(inner: &Arc<Inner<S, I>>) {
    inner.renewer.call_once(|| {
        let weak = Arc::downgrade(inner);
        let every = inner.lease / 3;
        let give_up = inner.lease * 2 / 3;
        tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let round = inner.round.fetch_add(1, Ordering::SeqCst) + 1;
                let ids: Vec<SagaId> = inner.driving().keys().cloned().collect();
                let now = inner.clock.now_ms();
                let renewed = if ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    inner.index.renew(&inner.owner, &ids, now, inner.lease_until(now)).await
                };
                match renewed {
                    Ok(held) => {
                        last_ok = tokio::time::Instant::now();
                        let held: HashSet<_> = held.into_iter().collect();
                        for (id, d) in inner.driving().iter() {
                            if d.round < round && !held.contains(id) {
                                d.lost.set();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(orchestrator = %inner.name, error = %e, "lease renewal failed");
                        if last_ok.elapsed() >= give_up {
                            tracing::error!(orchestrator = %inner.name, "leases not renewed for two thirds of a lease: every saga stops here");
                            for d in inner.driving().values() {
                                d.lost.set();
                            }
                        }
                    }
                }
            }
        });
    });
}
