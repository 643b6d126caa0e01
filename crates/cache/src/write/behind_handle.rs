//! The write-behind handle: flush, shutdown, counts, report; and the error of a closed queue.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use http::StatusCode;
use tower_patterns_core::{
    http::{ErrorMapping, IntoErrorResponse},
    observe::{Health, Report, StateHandle},
};

use super::{behind::BehindShared, writer::lock};
use crate::{metrics::export_counts, store::CacheKey};

impl<K, V> WriteBehindHandle<K, V>
where
    K: CacheKey,
    V: Send + 'static,
{
    /// Writes queued now and not yet handed to the writer.
    pub fn pending(&self) -> usize {
        lock(&self.shared).order.len()
    }

    /// Writes the source has accepted.
    pub fn written(&self) -> u64 {
        self.shared
            .written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes dropped after their batch's last attempt failed.
    pub fn dropped(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The write-behind's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the queue was shut down (later writes are refused).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared).closed
    }

    /// Waits until everything queued before the call has been written (or dropped).
    pub async fn flush(&self) {
        loop {
            let flushed = self.shared.flushed.notified();
            {
                let p = lock(&self.shared);
                if p.order.is_empty() && p.writing.is_empty() {
                    return;
                }
            }
            self.shared.wake.notify_one();
            flushed.await;
        }
    }

    /// Flushes, then stops the writer: later writes are refused.
    pub async fn shutdown(&self) {
        lock(&self.shared).closed = true;
        self.shared.permits.close();
        self.shared.wake.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The write-behind queue was shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBehindClosed;

impl fmt::Display for WriteBehindClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("write-behind queue is shut down")
    }
}

impl std::error::Error for WriteBehindClosed {}

/// A write refused because the queue was shut down: the service is going away, so `503
/// Service Unavailable` (registered when a write-behind is built).
impl IntoErrorResponse for WriteBehindClosed {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
    }
}

/// Flushes and stops a [`WriteBehind`](super::WriteBehind); reads its counts; reports as a
/// [`StateHandle`] (pattern `"cache"`). From [`WriteBehindBuilder::build`](super::WriteBehindBuilder::build).
pub struct WriteBehindHandle<K, V> {
    pub(crate) shared: Arc<BehindShared<K, V>>,
    pub(crate) task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<K, V> Clone for WriteBehindHandle<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            task: self.task.clone(),
        }
    }
}

impl<K, V> fmt::Debug for WriteBehindHandle<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<K, V> StateHandle for WriteBehindHandle<K, V>
where
    K: CacheKey,
    V: Send + 'static,
{
    fn pattern(&self) -> &'static str {
        "cache"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    /// `ok` while the queue has room, `degraded` when it is full (writers wait) or batches
    /// were dropped, `unavailable` once shut down. The report also publishes the counts as
    /// metrics (see the [module docs](super#metrics)).
    fn report(&self) -> Report {
        let (pending, writing, closed) = {
            let p = lock(&self.shared);
            (p.order.len(), p.writing.len(), p.closed)
        };
        let (written, dropped) = (self.written(), self.dropped());
        export_counts(
            &self.shared.name,
            &[],
            &[("tower_patterns_cache_write_queue", pending as u64)],
        );
        let (health, state) = if closed {
            (Health::Unavailable, "closed")
        } else if pending >= self.shared.max_pending || dropped > 0 {
            (
                Health::Degraded,
                if dropped > 0 { "dropping" } else { "full" },
            )
        } else {
            (Health::Ready, "ok")
        };
        Report::new("cache", self.shared.name.to_string(), health, state)
            .with_value("pending", pending as f64)
            .with_value("writing", writing as f64)
            .with_value("max_pending", self.shared.max_pending as f64)
            .with_value("written", written as f64)
            .with_value("dropped", dropped as f64)
    }
}
