//! Middleware that runs its inner service's futures on a dedicated runtime, so CPU-heavy or
//! blocking handlers cannot starve the rest (what resilience4j calls a thread-pool bulkhead).
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_bulkhead::{IsolatedExecutor, IsolatedLayer};
//! use tower_patterns_core::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Two threads of its own, and at most 16 calls running or queued on them.
//! let reports = IsolatedExecutor::new("reports", 2).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(IsolatedLayer::new(reports, 16).unwrap())
//!     .service(service_fn(|n: u64| async move { Ok::<_, BoxError>((1..=n).sum::<u64>()) }));
//! assert_eq!(svc.oneshot(100).await.unwrap(), 5050);
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{runtime::Runtime, task::JoinHandle};
use tower_layer::Layer;
use tower_patterns_core::{BoxError, ConfigError, Rejected, RejectionKind};
use tower_service::Service;

use crate::semaphore::{Permit, Semaphore};

/// A runtime of its own, on dedicated threads. Shut down (in the background) when the last
/// layer holding it is dropped.
pub struct IsolatedExecutor {
    name: Arc<str>,
    runtime: Option<Runtime>,
}

impl fmt::Debug for IsolatedExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedExecutor")
            .field("name", &self.name)
            .finish()
    }
}

impl IsolatedExecutor {
    /// A multi-threaded runtime with `threads` worker threads named `name-N`.
    ///
    /// # Errors
    ///
    /// When `threads` is 0 or the runtime cannot be started.
    pub fn new(name: &str, threads: usize) -> Result<Arc<Self>, ConfigError> {
        if threads == 0 {
            return Err(ConfigError::new("threads", "must be at least 1"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| ConfigError::new("runtime", e.to_string()))?;
        Ok(Arc::new(Self {
            name: name.into(),
            runtime: Some(runtime),
        }))
    }

    fn spawn<F>(&self, fut: F) -> Option<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().map(|rt| rt.spawn(fut))
    }
}

impl Drop for IsolatedExecutor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime inside another one's async context panics; this does not.
            runtime.shutdown_background();
        }
    }
}

/// Layer that runs the inner service's futures on an [`IsolatedExecutor`], at most
/// `capacity` at once (running or queued); beyond that, calls are rejected with
/// [`Rejected`] ([`RejectionKind::BulkheadFull`]).
#[derive(Clone, Debug)]
pub struct IsolatedLayer {
    executor: Arc<IsolatedExecutor>,
    slots: Arc<Semaphore>,
}

impl IsolatedLayer {
    /// Runs on `executor`, with room for `capacity` calls.
    ///
    /// # Errors
    ///
    /// When `capacity` is 0.
    pub fn new(executor: Arc<IsolatedExecutor>, capacity: u32) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        Ok(Self {
            executor,
            slots: Arc::new(Semaphore::new(capacity, 0)),
        })
    }

    /// Calls running or queued on the executor now.
    pub fn in_flight(&self) -> u64 {
        self.slots.in_flight()
    }
}

impl<S> Layer<S> for IsolatedLayer {
    type Service = Isolated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Isolated {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that runs its inner service's futures on a dedicated runtime; see
/// [`IsolatedLayer`]. The inner service is called on the caller's task (which only builds the
/// future); the future runs on the isolated runtime. Dropping the response future aborts the
/// task.
#[derive(Clone, Debug)]
pub struct Isolated<S> {
    inner: S,
    layer: IsolatedLayer,
}

impl<S> Isolated<S> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, Req> Service<Req> for Isolated<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = IsolatedFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(permit) = Permit::try_new(&self.layer.slots) else {
            return IsolatedFuture::failed(
                Rejected::new(RejectionKind::BulkheadFull)
                    .with_name(self.layer.executor.name.clone())
                    .into(),
            );
        };
        let fut = self.inner.call(req);
        let task = self.layer.executor.spawn(async move {
            let out = fut.await.map_err(Into::into);
            drop(permit);
            out
        });
        match task {
            Some(handle) => IsolatedFuture {
                handle: Some(handle),
                err: None,
            },
            None => IsolatedFuture::failed("isolated executor is shut down".into()),
        }
    }
}

/// Response future of [`Isolated`]: the task's result. Aborts the task when dropped early.
pub struct IsolatedFuture<T> {
    handle: Option<JoinHandle<Result<T, BoxError>>>,
    err: Option<BoxError>,
}

impl<T> IsolatedFuture<T> {
    fn failed(err: BoxError) -> Self {
        Self {
            handle: None,
            err: Some(err),
        }
    }
}

impl<T> fmt::Debug for IsolatedFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedFuture")
            .field("running", &self.handle.is_some())
            .finish()
    }
}

impl<T> Future for IsolatedFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(handle) = self.handle.as_mut() else {
            return Poll::Ready(Err(self
                .err
                .take()
                .unwrap_or_else(|| "isolated future polled after completion".into())));
        };
        let joined = std::task::ready!(Pin::new(handle).poll(cx));
        self.handle = None;
        Poll::Ready(match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err("the isolated call panicked".into()),
            Err(_) => Err("the isolated call was cancelled".into()),
        })
    }
}

impl<T> Drop for IsolatedFuture<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
