//! The write-behind writer task: batches the queue and writes it to the source.

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use tower::ServiceExt as _;
use tower_patterns_core::BoxError;

use super::behind::{BatchWriter, BehindShared, Pending};
use crate::{ScopedKey, store::CacheKey};

pub(crate) fn lock<K, V>(shared: &BehindShared<K, V>) -> std::sync::MutexGuard<'_, Pending<K, V>> {
    shared
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

pub(crate) async fn run_writer<K, V, W>(
    shared: Arc<BehindShared<K, V>>,
    mut writer: W,
    name: Arc<str>,
) where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    W: BatchWriter<K, V>,
{
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        // Wait for a first write, then up to max_delay for the batch to fill.
        let closed = loop {
            let notified = shared.wake.notified();
            {
                let mut p = lock(&shared);
                // Every service and handle dropped without a shutdown: write what is queued
                // and stop, rather than wait forever.
                if Arc::strong_count(&shared) == 1 {
                    p.closed = true;
                }
                if !p.order.is_empty() || p.closed {
                    break p.closed;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        };
        if !closed {
            let deadline = tokio::time::Instant::now() + shared.max_delay;
            loop {
                let notified = shared.wake.notified();
                {
                    let p = lock(&shared);
                    if p.order.len() >= shared.max_batch || p.closed {
                        break;
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        let batch: Vec<(ScopedKey<K>, V)> = {
            let mut p = lock(&shared);
            let n = p.order.len().min(shared.max_batch);
            let keys: Vec<_> = p.order.drain(..n).collect();
            let batch: Vec<_> = keys
                .into_iter()
                .filter_map(|k| p.values.remove(&k).map(|v| (k, v)))
                .collect();
            p.writing = batch.iter().cloned().collect();
            batch
        };
        if batch.is_empty() {
            if lock(&shared).closed {
                shared.flushed.notify_waiters();
                return;
            }
            continue;
        }
        let n = batch.len();
        let mut pause = shared.backoff;
        let mut written = false;
        for attempt in 1..=shared.attempts {
            let ready: Result<&mut W, BoxError> = writer.ready().await.map_err(Into::into);
            let res = match ready {
                Ok(w) => w.call(batch.clone()).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        target: "tower_patterns::cache",
                        cache = %name, attempt, error = %e,
                        "write-behind: batch write failed"
                    );
                    if attempt < shared.attempts {
                        tokio::time::sleep(pause).await;
                        pause = pause.saturating_mul(2);
                    }
                }
            }
        }
        // A batch is the slow path: its count goes to the metrics at once.
        let outcome = if written { "written" } else { "dropped" };
        metrics::counter!("tower_patterns_cache_writes_total", "name" => name.to_string(), "outcome" => outcome)
            .increment(n as u64);
        if written {
            shared.written.fetch_add(n as u64, Relaxed);
        } else {
            shared.dropped.fetch_add(n as u64, Relaxed);
            tracing::error!(
                target: "tower_patterns::cache",
                cache = %name, writes = n,
                "write-behind: batch dropped after its last attempt"
            );
        }
        {
            let mut p = lock(&shared);
            p.writing.clear();
        }
        shared.permits.add_permits(n);
        shared.flushed.notify_waiters();
    }
}
