//! Write-through and write-behind: keeping the cache right when the data changes.
//!
//! **Write-through** ([`WriteThroughLayer`]) wraps the service that writes to the source of
//! record. The write goes to the source first; only when it succeeds does the cache change, by
//! storing the new value or dropping the key ([`WriteThroughMode`]). A failed write changes
//! nothing in the cache. A failed cache update drops the key instead, so the cache is never left
//! holding the old value; and loads that were in flight during the write never store what they
//! read before it.
//!
//! **Write-behind** ([`WriteBehind`]) answers a write once the cache holds it and writes to the
//! source later, in batches, from a bounded queue. Writes to a key that is already queued
//! replace the queued value (coalescing). A full queue makes the service not ready
//! (backpressure). [`WriteBehindHandle::flush`] writes everything queued and
//! [`WriteBehindHandle::shutdown`] does so and stops (dropping every service and handle without
//! it makes the writer flush and stop within a second). **The loss window**: a write acknowledged
//! but not yet flushed is lost if the process dies; at most `max_pending` keys and, under
//! steady load, about `max_delay` of writes.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_cache::{store::MokaStore, CacheLayer, WriteThroughLayer, WriteThroughMode};
//! use tower_patterns_core::{key::key_fn, KeyError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::builder("prices", MokaStore::<u64, u32>::builder().build())
//!     .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
//!     .unscoped()
//!     .build()
//!     .unwrap();
//! // The write returns the stored price; the cache takes it.
//! let write = WriteThroughLayer::new(
//!     cache.handle(),
//!     key_fn(|(id, _): &(u64, u32)| Ok::<_, KeyError>(*id)),
//!     WriteThroughMode::update(|price: &u32| Some(*price)),
//! )
//! .unscoped();
//! let save = write.layer(service_fn(|(_, price): (u64, u32)| async move { Ok::<_, Infallible>(price) }));
//! save.oneshot((1, 250)).await.unwrap();
//! assert_eq!(cache.handle().peek(None, 1).unwrap().value(), &250);
//! # }
//! ```

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_patterns_core::{BoxError, ConfigError, KeyExtractor, tenant::TenantId};
use tower_service::Service;

use crate::{
    CacheHandle, ScopedKey,
    key::{FromExtensions, Scope, ScopeFn, Unscoped},
    store::{CacheKey, Store},
};

type ValueOf<R, V> = Arc<dyn Fn(&R) -> Option<V> + Send + Sync>;

/// What a successful write does to the cache.
pub struct WriteThroughMode<R, V> {
    value: Option<ValueOf<R, V>>,
}

impl<R, V> Clone for WriteThroughMode<R, V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
        }
    }
}

impl<R, V> fmt::Debug for WriteThroughMode<R, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.value.is_some() {
            "WriteThroughMode::Update"
        } else {
            "WriteThroughMode::Invalidate"
        })
    }
}

impl<R, V> WriteThroughMode<R, V> {
    /// Drop the key: the next read loads the new value from the source.
    pub fn invalidate() -> Self {
        Self { value: None }
    }

    /// Store the value `value_of` takes from the write's response (`None`: drop the key).
    pub fn update(value_of: impl Fn(&R) -> Option<V> + Send + Sync + 'static) -> Self {
        Self {
            value: Some(Arc::new(value_of)),
        }
    }
}

/// Makes writes update or invalidate a cache after the source of record accepted them.
pub struct WriteThroughLayer<X, Sc, R, K, V, St> {
    cache: CacheHandle<K, V, St>,
    key: X,
    scope: Sc,
    mode: WriteThroughMode<R, V>,
}

impl<X: Clone, Sc: Clone, R, K, V, St> Clone for WriteThroughLayer<X, Sc, R, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            key: self.key.clone(),
            scope: self.scope.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<X, Sc, R, K, V, St> fmt::Debug for WriteThroughLayer<X, Sc, R, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThroughLayer")
            .field("cache", &self.cache.shared.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<X, R, K, V, St> WriteThroughLayer<X, FromExtensions, R, K, V, St> {
    /// Writes taking their key with `key` keep `cache` right, as `mode` says. The tenant comes
    /// from the request extensions, as for [`CacheLayer`](crate::CacheLayer); use the same
    /// scope as the cache's.
    pub fn new(cache: CacheHandle<K, V, St>, key: X, mode: WriteThroughMode<R, V>) -> Self {
        Self {
            cache,
            key,
            scope: FromExtensions,
            mode,
        }
    }
}

impl<X, Sc, R, K, V, St> WriteThroughLayer<X, Sc, R, K, V, St> {
    /// Takes the tenant with `scope`.
    pub fn scope<Sc2>(self, scope: Sc2) -> WriteThroughLayer<X, Sc2, R, K, V, St> {
        WriteThroughLayer {
            cache: self.cache,
            key: self.key,
            scope,
            mode: self.mode,
        }
    }

    /// No tenants.
    pub fn unscoped(self) -> WriteThroughLayer<X, Unscoped, R, K, V, St> {
        self.scope(Unscoped)
    }

    /// The tenant from a closure.
    pub fn scope_fn<Req, F: Fn(&Req) -> Option<TenantId>>(
        self,
        f: F,
    ) -> WriteThroughLayer<X, ScopeFn<F>, R, K, V, St> {
        self.scope(ScopeFn(f))
    }
}

impl<S, X: Clone, Sc: Clone, R, K, V, St> Layer<S> for WriteThroughLayer<X, Sc, R, K, V, St> {
    type Service = WriteThrough<S, X, Sc, R, K, V, St>;

    fn layer(&self, inner: S) -> Self::Service {
        WriteThrough {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`WriteThroughLayer`].
pub struct WriteThrough<S, X, Sc, R, K, V, St> {
    inner: S,
    layer: WriteThroughLayer<X, Sc, R, K, V, St>,
}

impl<S: Clone, X: Clone, Sc: Clone, R, K, V, St> Clone for WriteThrough<S, X, Sc, R, K, V, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, X, Sc, R, K, V, St> fmt::Debug for WriteThrough<S, X, Sc, R, K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThrough")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, X, Sc, R, K, V, St> WriteThrough<S, X, Sc, R, K, V, St> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, Req, X, Sc, R, K, V, St> Service<Req> for WriteThrough<S, X, Sc, R, K, V, St>
where
    S: Service<Req, Response = R>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req, Key = K>,
    Sc: Scope<Req>,
    R: Send + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let tenant = self.layer.scope.tenant(&req);
        // A write whose key cannot be taken is refused: letting it through would leave the
        // cache holding the old value.
        let key = match self.layer.key.extract(&req) {
            Ok(k) => k,
            Err(e) => return std::future::ready(Err(e.into())).boxed(),
        };
        let cache = self.layer.cache.clone();
        let value_of = self.layer.mode.value.clone();
        let write = self.inner.call(req);
        async move {
            let res = write.await.map_err(Into::into)?;
            let outcome = match value_of.as_ref().and_then(|f| f(&res)) {
                Some(v) => cache.put(tenant.as_ref(), key, v).await,
                None => cache.invalidate(tenant.as_ref(), key).await,
            };
            if let Err(e) = outcome {
                // The source has the write; the local tier has dropped the key. Report, and
                // answer the write's success.
                tracing::error!(
                    target: "tower_patterns::cache",
                    cache = %cache.name(),
                    error = %e,
                    cause = ?std::error::Error::source(&e),
                    "write-through: the cache step failed after the write; the key was dropped locally"
                );
            }
            Ok(res)
        }
        .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Write-behind

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

struct Pending<K, V> {
    values: HashMap<ScopedKey<K>, V>,
    order: VecDeque<ScopedKey<K>>,
    /// The batch being written: still what reads must see until the source has it.
    writing: HashMap<ScopedKey<K>, V>,
    closed: bool,
}

struct BehindShared<K, V> {
    pending: Mutex<Pending<K, V>>,
    permits: Arc<Semaphore>,
    wake: Notify,
    flushed: Notify,
    max_batch: usize,
    max_delay: Duration,
    attempts: u32,
    backoff: Duration,
    written: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

/// Write-behind: a write is answered once the cache holds it; a background task writes the
/// queued values to the source of record in batches. See the [module docs](self).
///
/// A `Service<(Option<TenantId>, K, V)>`: ready while the queue has room (or when the key is
/// already queued), so `ServiceBuilder`'s timeouts and load shedding apply to backpressure.
pub struct WriteBehind<K, V, St> {
    cache: CacheHandle<K, V, St>,
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
            .field("cache", &self.cache.shared.name)
            .field("max_batch", &self.shared.max_batch)
            .field("max_delay", &self.shared.max_delay)
            .finish_non_exhaustive()
    }
}

/// Builds a [`WriteBehind`].
#[derive(Debug, Clone)]
pub struct WriteBehindBuilder {
    max_pending: usize,
    max_batch: usize,
    max_delay: Duration,
    attempts: u32,
    backoff: Duration,
}

/// What [`WriteBehindBuilder::build`] returns: the service and its handle.
pub type WriteBehindParts<K, V, St> = (WriteBehind<K, V, St>, WriteBehindHandle<K, V>);

/// Flushes and stops a [`WriteBehind`]; reads its counts.
pub struct WriteBehindHandle<K, V> {
    shared: Arc<BehindShared<K, V>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
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
        f.debug_struct("WriteBehindHandle").finish_non_exhaustive()
    }
}

impl Default for WriteBehindBuilder {
    fn default() -> Self {
        Self {
            max_pending: 10_000,
            max_batch: 100,
            max_delay: Duration::from_millis(100),
            attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

impl WriteBehindBuilder {
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

    /// Starts the writer task on the current Tokio runtime. The cache's loads see queued
    /// writes: a miss on a key whose write is queued or being written answers the queued
    /// value rather than the source's older one. One write-behind per cache.
    ///
    /// # Errors
    ///
    /// Zero `max_pending`, `max_batch` or `attempts`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn build<K, V, St, W>(
        self,
        cache: CacheHandle<K, V, St>,
        writer: W,
    ) -> Result<WriteBehindParts<K, V, St>, ConfigError>
    where
        K: CacheKey,
        V: Clone + Send + Sync + 'static,
        St: Store<K, V>,
        W: BatchWriter<K, V>,
    {
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
        let name: Arc<str> = cache.shared.name.clone();
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

impl WriteBehind<(), (), ()> {
    /// A builder with the defaults (the types come from the cache given to `build`).
    pub fn builder() -> WriteBehindBuilder {
        WriteBehindBuilder::default()
    }
}

fn lock<K, V>(shared: &BehindShared<K, V>) -> std::sync::MutexGuard<'_, Pending<K, V>> {
    shared
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

async fn run_writer<K, V, W>(shared: Arc<BehindShared<K, V>>, mut writer: W, name: Arc<str>)
where
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
