//! The relay's loop: read a page after the checkpoint, publish it pipelined, await the
//! acknowledgements in order, checkpoint the last acknowledged event; back off on failure.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::watch;
use tower_patterns_core::{backoff::Backoff, rng::SplitMix64};
use tower_patterns_eventstore::{EventStore, RecordedEvent};

use super::{
    DUPLICATES, Observer, PUBLISHED,
    handle::{CATCHING_UP, LIVE, STOPPED, Shared},
};
use crate::{
    bus::nats::{BusError, BusErrorKind, event_headers},
    checkpoint::{Checkpoint, CheckpointStore},
};

/// The relay's moving parts, owned by its run loop.
pub(crate) struct Relay<S, C, F> {
    pub(crate) store: Arc<S>,
    pub(crate) checkpoints: C,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) subject: F,
    pub(crate) observer: Option<Observer>,
    pub(crate) batch: usize,
    pub(crate) backoff: Backoff,
    pub(crate) cap: Duration,
    pub(crate) rng: SplitMix64,
    pub(crate) shared: Arc<Shared>,
}

impl<S, C, F> Relay<S, C, F>
where
    S: EventStore,
    C: CheckpointStore,
    F: Fn(&RecordedEvent) -> String + Send + Sync + 'static,
{
    pub(crate) async fn run(mut self) -> Result<(), BusError> {
        let result = self.run_inner().await;
        self.shared.set_status(STOPPED);
        result
    }

    async fn run_inner(&mut self) -> Result<(), BusError> {
        let key = format!("outbox:{}", self.shared.name);
        let mut stop = self.shared.stop.subscribe();
        let mut attempt = 0u32;
        let mut previous = Duration::ZERO;
        let mut checkpoint = None;
        // After a failure, pages of one event until the failing event is acknowledged: a
        // full page would send the events behind it again at every retry, and a retry past
        // JetStream's duplicate window would store them again.
        let mut page = self.batch;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let step = match checkpoint {
                None => self.load(&key).await.map(|cp| {
                    self.shared.position.send_replace(cp.position);
                    checkpoint = Some(cp);
                }),
                // `step` moves `cp` to every checkpoint it stores, a failure after part of
                // a page included: the next compare-and-set must start from what is stored.
                Some(ref mut cp) => match self.step(&key, cp, page, &mut stop).await {
                    Ok(()) => Ok(()),
                    Err((e, _)) if e.kind() == BusErrorKind::Fenced => return Err(e),
                    Err((e, reload)) => {
                        if reload {
                            checkpoint = None;
                        }
                        Err(e)
                    }
                },
            };
            match step {
                Ok(()) => {
                    attempt = 0;
                    previous = Duration::ZERO;
                    page = self.batch;
                }
                Err(e) => {
                    page = 1;
                    attempt = attempt.saturating_add(1);
                    self.shared.failed(attempt, &e);
                    let delay = self
                        .backoff
                        .delay(attempt, previous, self.cap, &mut self.rng);
                    previous = delay;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }

    async fn load(&self, key: &str) -> Result<Checkpoint, BusError> {
        self.checkpoints
            .load(key)
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| self.error(BusErrorKind::Checkpoint, "load the checkpoint", e))
    }

    fn error(
        &self,
        kind: BusErrorKind,
        what: &str,
        e: impl Into<tower_patterns_core::BoxError>,
    ) -> BusError {
        BusError::with(
            kind,
            format!("outbox relay {}: {what}", self.shared.name),
            e,
        )
    }

    /// One page of up to `limit` events: read after `cp`, publish, checkpoint the last
    /// acknowledged event and move
    /// `cp` to it (also when a later event of the page failed). Returns the error and whether
    /// the checkpoint must be loaded again.
    async fn step(
        &self,
        key: &str,
        cp: &mut Checkpoint,
        limit: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), (BusError, bool)> {
        let page = self
            .store
            .read_all(cp.position, limit)
            .await
            .map_err(|e| (self.error(BusErrorKind::Store, "read the log", e), false))?;
        if page.is_empty() {
            self.shared.set_status(LIVE);
            tokio::select! {
                () = self.store.wait_for_events(cp.position) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            return Ok(());
        }
        if page.len() == limit {
            self.shared.set_status(CATCHING_UP);
        }
        let (acked, failure) = self.publish(&page).await;
        if let Some(last) = acked.checked_sub(1).map(|i| &page[i]) {
            let next = Checkpoint {
                position: last.position,
                version: cp.version,
            };
            match self.checkpoints.save(key, *cp, next).await {
                Ok(true) => {
                    *cp = next;
                    self.shared.position.send_replace(next.position);
                }
                Ok(false) => {
                    return Err((
                        BusError::new(
                            BusErrorKind::Fenced,
                            format!(
                                "outbox relay {}: the checkpoint moved under it (another relay of this name runs)",
                                self.shared.name
                            ),
                        ),
                        true,
                    ));
                }
                // The write may have landed: read it back before going on.
                Err(e) => {
                    return Err((
                        self.error(BusErrorKind::Checkpoint, "store the checkpoint", e),
                        true,
                    ));
                }
            }
        }
        match failure {
            None => {
                if page.len() < limit {
                    self.shared.set_status(LIVE);
                }
                Ok(())
            }
            Some(e) => Err((e, false)),
        }
    }

    /// Publishes `page` pipelined and awaits the acknowledgements in order; returns how many
    /// leading events were acknowledged, and the first failure.
    async fn publish(&self, page: &[RecordedEvent]) -> (usize, Option<BusError>) {
        let mut pending = Vec::with_capacity(page.len());
        let mut failure = None;
        for e in page {
            let payload = Bytes::copy_from_slice(e.payload.get().as_bytes());
            match self
                .jetstream
                .publish_with_headers((self.subject)(e), event_headers(e), payload)
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(err) => {
                    failure = Some(self.error(
                        BusErrorKind::Publish,
                        &format!("publish event {} at {}", e.id, e.position),
                        err,
                    ));
                    break;
                }
            }
        }
        let mut acked = 0;
        let mut duplicates = 0u64;
        for (e, ack) in page.iter().zip(pending) {
            match ack.await {
                Ok(ack) => {
                    acked += 1;
                    duplicates += u64::from(ack.duplicate);
                    self.shared.published.fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(observe) = &self.observer {
                        observe(e, ack.duplicate);
                    }
                }
                Err(err) => {
                    // An earlier event's failure comes before a later one's.
                    failure = Some(self.error(
                        BusErrorKind::Publish,
                        &format!("acknowledgement of event {} at {}", e.id, e.position),
                        err,
                    ));
                    break;
                }
            }
        }
        let name = self.shared.name.to_string();
        metrics::counter!(PUBLISHED, "name" => name.clone()).increment(acked as u64);
        if duplicates > 0 {
            metrics::counter!(DUPLICATES, "name" => name).increment(duplicates);
        }
        (acked, failure)
    }
}
