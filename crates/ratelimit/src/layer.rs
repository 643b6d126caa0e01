//! The layer and service every limiter plugs into.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_patterns_core::{BoxError, check::CheckThenCall};
use tower_service::Service;

use crate::{
    future::{HeaderGate, ResponseFuture},
    handle::KeyedRateLimitHandle,
    limiter::{Decision, HasHandle, Limiter},
};

/// Applies a [`Limiter`] to an HTTP service; see [`KeyedRateLimit`].
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_patterns_core::key::HeaderKey;
/// use tower_patterns_ratelimit::{GcraLimiter, Rate, KeyedRateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = GcraLimiter::builder("api")
///     .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
///     .rate(Rate::per_second(2))
///     .build()
///     .unwrap();
/// let layer = KeyedRateLimitLayer::new(limiter);
/// let svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
///
/// let req = || Request::builder().header("x-api-key", "k1").body(()).unwrap();
/// let first = svc.clone().oneshot(req()).await.unwrap();
/// assert_eq!(first.headers()["ratelimit-remaining"], "1");
/// svc.clone().oneshot(req()).await.unwrap();
/// let third = svc.oneshot(req()).await.unwrap_err();
/// assert_eq!(third.to_string(), "rate limited (api), retry after 500ms");
/// assert_eq!(layer.handle().rejected(), 1);
/// # }
/// ```
pub struct KeyedRateLimitLayer<L> {
    limiter: Arc<L>,
    headers: bool,
}

impl<L> KeyedRateLimitLayer<L> {
    /// A layer over `limiter`; responses get the `RateLimit-*` headers.
    pub fn new(limiter: L) -> Self {
        Self::from_shared(Arc::new(limiter))
    }

    /// A layer over a limiter shared with other layers (one budget for several routes).
    pub const fn from_shared(limiter: Arc<L>) -> Self {
        Self {
            limiter,
            headers: true,
        }
    }

    /// Whether allowed responses get `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` (default `true`). Refusals carry them in the error either way.
    #[must_use]
    pub const fn headers(mut self, on: bool) -> Self {
        self.headers = on;
        self
    }

    /// The limiter.
    pub fn limiter(&self) -> &Arc<L> {
        &self.limiter
    }

    /// A handle on the limiter's state (keys held, limit, rejections), whichever the limiter.
    pub fn handle(&self) -> KeyedRateLimitHandle
    where
        L: HasHandle,
    {
        self.limiter.handle()
    }
}

impl<L> Clone for KeyedRateLimitLayer<L> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            headers: self.headers,
        }
    }
}

impl<L> fmt::Debug for KeyedRateLimitLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, L> Layer<S> for KeyedRateLimitLayer<L> {
    type Service = KeyedRateLimit<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            limiter: self.limiter.clone(),
            headers: self.headers,
        }
    }
}

/// Middleware that takes one unit of a limit per request and refuses the request when the
/// limit is used up.
///
/// A refusal is a [`Rejected`](tower_patterns_core::Rejected) of kind `RateLimited` or
/// `QuotaExceeded`, with `retry_after` and the limit's state, which the HTTP mapping of
/// `tower-patterns-core` answers with 429, `Retry-After` and the `RateLimit-*` headers. A
/// missing or malformed key is a `KeyError` (400). The service is ready when its inner service
/// is; a decided limiter adds no allocation to the allowed path (the GCRA limiter none at all;
/// the quota limiter and a GCRA limiter with an idle timeout at most 1 in 60 admitted requests,
/// moka's read-log upkeep), and at most a shard's read lock (the GCRA limiter's key map).
pub struct KeyedRateLimit<S, L> {
    inner: S,
    limiter: Arc<L>,
    headers: bool,
}

impl<S: Clone, L> Clone for KeyedRateLimit<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            headers: self.headers,
        }
    }
}

impl<S: fmt::Debug, L> fmt::Debug for KeyedRateLimit<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, L> KeyedRateLimit<S, L> {
    tower_patterns_core::inner_service_accessors!();

    /// A handle on the limiter's state; see [`KeyedRateLimitLayer::handle`].
    pub fn handle(&self) -> KeyedRateLimitHandle
    where
        L: HasHandle,
    {
        self.limiter.handle()
    }
}

impl<S, L, ReqBody, ResBody> Service<Request<ReqBody>> for KeyedRateLimit<S, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    L: Limiter<Request<ReqBody>>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqBody>, L::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let gate = HeaderGate {
            headers: self.headers,
        };
        match self.limiter.check(&req) {
            Decision::Now(decided) => CheckThenCall::decided(decided, &mut self.inner, req, gate),
            // The inner service was made ready for this call: the future takes it, a clone
            // stays.
            Decision::Later(check) => CheckThenCall::checking(check, &mut self.inner, req, gate),
        }
    }
}
