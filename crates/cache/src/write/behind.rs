//! Write-behind: the service, its builder and the queue it shares with the writer task.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower_patterns_core::{BoxError, ConfigError, http::register_error_response, tenant::TenantId};
use tower_service::Service;

use super::{
    WriteBehindClosed, WriteBehindHandle,
    writer::{lock, run_writer},
};
use crate::{
    CacheHandle, ScopedKey,
    store::{CacheKey, Store},
};

/// The service a [`WriteBehind`] flushes batches to: takes the batch (keys in first-write
/// order, each with its latest value) and answers when the source of record has all of it.
pub trait BatchWriter<K, V>:
    Service<Vec<(ScopedKey<K>, V)>, Response = (), Error: Into<BoxError>, Future: Send + 'static>
    + Send
    + 'static
{
}

impl<K, V, W> BatchWriter<K, V> for W where
    W: Service<
            Vec<(ScopedKey<K>, V)>,
            Response = (),
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

pub(crate) struct Pending<K, V> {
    pub(crate) values: HashMap<ScopedKey<K>, V>,
    pub(crate) order: VecDeque<ScopedKey<K>>,
    /// The batch being written: still what reads must see until the source has it.
    pub(crate) writing: HashMap<ScopedKey<K>, V>,
    pub(crate) closed: bool,
}

pub(crate) struct BehindShared<K, V> {
    pub(crate) name: Arc<str>,
    pub(crate) max_pending: usize,
    pub(crate) pending: Mutex<Pending<K, V>>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) wake: Notify,
    pub(crate) flushed: Notify,
    pub(crate) max_batch: usize,
    pub(crate) max_delay: Duration,
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) written: std::sync::atomic::AtomicU64,
    pub(crate) dropped: std::sync::atomic::AtomicU64,
}

/// Write-behind: a write is answered once the cache holds it; a background task writes the
/// queued values to the source of record in batches. See the [module docs](super).
///
/// A `Service<(Option<TenantId>, K, V)>`: ready while the queue has room (or when the key is
/// already queued), so `ServiceBuilder`'s timeouts and load shedding apply to backpressure.
pub struct WriteBehind<K, V, St> {
    pub(crate) cache: CacheHandle<K, V, St>,
    shared: Arc<BehindShared<K, V>>,
    permits: PollSemaphore,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<K, V, St> Clone for WriteBehind<K, V, St> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            shared: self.shared.clone(),
            permits: self.permits.clone(),
            permit: None,
        }
    }
}

impl<K, V, St> fmt::Debug for WriteBehind<K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("name", &self.shared.name)
            .field("cache", &self.cache.shared.name)
            .field("max_batch", &self.shared.max_batch)
            .field("max_delay", &self.shared.max_delay)
            .finish_non_exhaustive()
    }
}

/// The cache of a [`WriteBehindBuilder`] that has none yet.
#[derive(Debug, Clone, Copy)]
pub struct NoCache;

/// The batch writer of a [`WriteBehindBuilder`] that has none yet.
#[derive(Debug, Clone, Copy)]
pub struct NoWriter;

/// Builds a [`WriteBehind`]: [`WriteBehind::builder`]`(name)`, then
/// [`cache`](Self::cache) and [`writer`](Self::writer) (both required), then settings, then
/// [`build`](WriteBehindBuilder::build).
#[derive(Debug, Clone)]
pub struct WriteBehindBuilder<C = NoCache, W = NoWriter> {
    name: Arc<str>,
    cache: C,
    writer: W,
    max_pending: usize,
    max_batch: usize,
    max_delay: Duration,
    attempts: u32,
    backoff: Duration,
}

/// What [`WriteBehindBuilder::build`] returns: the service and its handle.
pub type WriteBehindParts<K, V, St> = (WriteBehind<K, V, St>, WriteBehindHandle<K, V>);

impl WriteBehind<(), (), ()> {
    /// A builder for the write-behind named `name` (reports, metrics and logs), with the
    /// defaults; the cache and the batch writer come next.
    pub fn builder(name: impl Into<Arc<str>>) -> WriteBehindBuilder {
        WriteBehindBuilder {
            name: name.into(),
            cache: NoCache,
            writer: NoWriter,
            max_pending: 10_000,
            max_batch: 100,
            max_delay: Duration::from_millis(100),
            attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

impl<C, W> WriteBehindBuilder<C, W> {
    /// The cache the writes land in at once (its handle). Its loads see queued writes: a miss
    /// on a key whose write is queued or being written answers the queued value rather than
    /// the source's older one. One write-behind per cache.
    pub fn cache<K, V, St>(
        self,
        cache: CacheHandle<K, V, St>,
    ) -> WriteBehindBuilder<CacheHandle<K, V, St>, W> {
        WriteBehindBuilder {
            name: self.name,
            cache,
            writer: self.writer,
            max_pending: self.max_pending,
            max_batch: self.max_batch,
            max_delay: self.max_delay,
            attempts: self.attempts,
            backoff: self.backoff,
        }
    }

    /// The service that writes batches to the source of record (a [`BatchWriter`]).
    pub fn writer<W2>(self, writer: W2) -> WriteBehindBuilder<C, W2> {
        WriteBehindBuilder {
            name: self.name,
            cache: self.cache,
            writer,
            max_pending: self.max_pending,
            max_batch: self.max_batch,
            max_delay: self.max_delay,
            attempts: self.attempts,
            backoff: self.backoff,
        }
    }

    /// The most distinct keys queued (default 10,000); beyond, the service is not ready.
    #[must_use]
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// The most writes in one batch (default 100).
    #[must_use]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// How long a queued write waits for its batch to fill (default 100 ms).
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// How many times a failed batch is tried before its writes are dropped and reported
    /// (default 5), and the first pause between tries (doubling; default 100 ms).
    #[must_use]
    pub fn attempts(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts;
        self.backoff = backoff;
        self
    }
}

impl<K, V, St, W> WriteBehindBuilder<CacheHandle<K, V, St>, W>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    W: BatchWriter<K, V>,
{
    /// Starts the writer task on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// An empty name; zero `max_pending`, `max_batch` or `attempts`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn build(self) -> Result<WriteBehindParts<K, V, St>, ConfigError> {
        register_error_response::<WriteBehindClosed>();
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.max_pending == 0 {
            return Err(ConfigError::new("max_pending", "must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be at least 1"));
        }
        if self.attempts == 0 {
            return Err(ConfigError::new("attempts", "must be at least 1"));
        }
        let permits = Arc::new(Semaphore::new(self.max_pending));
        let shared = Arc::new(BehindShared {
            name: self.name.clone(),
            max_pending: self.max_pending,
            pending: Mutex::new(Pending {
                values: HashMap::new(),
                order: VecDeque::new(),
                writing: HashMap::new(),
                closed: false,
            }),
            permits: permits.clone(),
            wake: Notify::new(),
            flushed: Notify::new(),
            max_batch: self.max_batch,
            max_delay: self.max_delay,
            attempts: self.attempts,
            backoff: self.backoff,
            written: 0.into(),
            dropped: 0.into(),
        });
        let (cache, writer, name) = (self.cache, self.writer, self.name.clone());
        let queued = Arc::downgrade(&shared);
        let _ = cache.shared.queued.set(Arc::new(move |key: &ScopedKey<K>| {
            let shared = queued.upgrade()?;
            let p = lock(&shared);
            p.values.get(key).or_else(|| p.writing.get(key)).cloned()
        }));
        let task = tokio::spawn(run_writer(shared.clone(), writer, name));
        Ok((
            WriteBehind {
                cache,
                shared: shared.clone(),
                permits: PollSemaphore::new(permits),
                permit: None,
            },
            WriteBehindHandle {
                shared,
                task: Arc::new(Mutex::new(Some(task))),
            },
        ))
    }
}

impl<K, V, St> Service<(Option<TenantId>, K, V)> for WriteBehind<K, V, St>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.permits.poll_acquire(cx) {
            Poll::Ready(Some(p)) => {
                self.permit = Some(p);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(WriteBehindClosed.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, (tenant, key, value): (Option<TenantId>, K, V)) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("WriteBehind called before poll_ready returned Ready");
        let scoped = ScopedKey::new(tenant.clone(), key.clone());
        {
            let mut p = lock(&self.shared);
            if p.closed {
                return std::future::ready(Err(WriteBehindClosed.into())).boxed();
            }
            if p.values.insert(scoped.clone(), value.clone()).is_none() {
                p.order.push_back(scoped);
                // The key holds the permit until the writer has taken it.
                permit.forget();
            }
            // Wake the writer for a first write (to start its delay) and for a full batch.
            if p.order.len() == 1 || p.order.len() >= self.shared.max_batch {
                self.shared.wake.notify_one();
            }
        }
        let cache = self.cache.clone();
        async move {
            // The cache answers reads with the new value at once.
            cache
                .put(tenant.as_ref(), key, value)
                .await
                .map_err(Into::into)
        }
        .boxed()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static, St: Store<K, V>> WriteBehind<K, V, St> {
    /// The value queued for `key`, if any: what a read must see while the write is pending.
    pub fn queued(&self, tenant: Option<&TenantId>, key: K) -> Option<V> {
        let key = ScopedKey::new(tenant.cloned(), key);
        let p = lock(&self.shared);
        p.values.get(&key).or_else(|| p.writing.get(&key)).cloned()
    }
}
