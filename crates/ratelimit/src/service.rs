//! The layer and service every limiter plugs into.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError,
    error::RateLimitInfo,
    http::{RATELIMIT_REMAINING, insert_rate_limit_headers},
};
use tower_service::Service;

/// What a limiter decided about one request.
#[derive(Debug)]
pub enum Decision<F> {
    /// Decided at once (an in-process limiter): `Ok` with the limit's state (or `None` when it
    /// has none to report), or `Err` with a [`Rejected`](tower_patterns_core::Rejected) or a
    /// [`KeyError`](tower_patterns_core::KeyError).
    Now(Result<Option<RateLimitInfo>, BoxError>),
    /// Decided by a future (a limiter over the network).
    Later(F),
}

/// A rate limit or quota that admits or refuses requests of type `Req`.
///
/// [`GcraLimiter`](crate::GcraLimiter) and [`QuotaLimiter`](crate::QuotaLimiter) decide in
/// process, at once; the Redis limiter (feature `redis`) decides with a future.
pub trait Limiter<Req> {
    /// The future of a decision made later.
    type Future: Future<Output = Result<Option<RateLimitInfo>, BoxError>>;

    /// Takes one unit of the request's limit, or refuses it.
    fn check(&self, req: &Req) -> Decision<Self::Future>;
}

impl<Req, L: Limiter<Req>> Limiter<Req> for Arc<L> {
    type Future = L::Future;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        (**self).check(req)
    }
}

/// Applies a [`Limiter`] to an HTTP service; see [`RateLimit`].
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_patterns_core::key::HeaderKey;
/// use tower_patterns_ratelimit::{GcraLimiter, Rate, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = GcraLimiter::builder("api", HeaderKey::new(http::HeaderName::from_static("x-api-key")))
///     .rate(Rate::per_second(2))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(limiter))
///     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
///
/// let req = || Request::builder().header("x-api-key", "k1").body(()).unwrap();
/// let first = svc.clone().oneshot(req()).await.unwrap();
/// assert_eq!(first.headers()["ratelimit-remaining"], "1");
/// svc.clone().oneshot(req()).await.unwrap();
/// let third = svc.oneshot(req()).await.unwrap_err();
/// assert_eq!(third.to_string(), "rate limited (api), retry after 500ms");
/// # }
/// ```
pub struct RateLimitLayer<L> {
    limiter: Arc<L>,
    headers: bool,
}

impl<L> RateLimitLayer<L> {
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
}

impl<L> Clone for RateLimitLayer<L> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            headers: self.headers,
        }
    }
}

impl<L> fmt::Debug for RateLimitLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, L> Layer<S> for RateLimitLayer<L> {
    type Service = RateLimit<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
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
/// is; a decided limiter adds no lock to the allowed path, and no allocation beyond its key
/// map's upkeep (moka's read log: at most 1 in 60 admitted requests for the in-process
/// limiters).
pub struct RateLimit<S, L> {
    inner: S,
    limiter: Arc<L>,
    headers: bool,
}

impl<S: Clone, L> Clone for RateLimit<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            headers: self.headers,
        }
    }
}

impl<S: fmt::Debug, L> fmt::Debug for RateLimit<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, L> RateLimit<S, L> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, L, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, L>
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
        let headers = self.headers;
        match self.limiter.check(&req) {
            Decision::Now(Ok(info)) => ResponseFuture {
                state: State::Called {
                    fut: self.inner.call(req),
                    info: info.filter(|_| headers),
                },
            },
            Decision::Now(Err(err)) => ResponseFuture {
                state: State::Failed { err: Some(err) },
            },
            Decision::Later(check) => {
                // The inner service was made ready for this call; take it, leave a clone.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Checking {
                        check,
                        pending: Some((svc, req)),
                        headers,
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<S: Service<Req>, Req, F> {
        #[pin]
        state: State<S, Req, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req, F> {
        Checking { #[pin] check: F, pending: Option<(S, Req)>, headers: bool },
        Called { #[pin] fut: S::Future, info: Option<RateLimitInfo> },
        Failed { err: Option<BoxError> },
    }
}

impl<S: Service<Req>, Req, F> fmt::Debug for ResponseFuture<S, Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Checking { .. } => "checking",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, F, ResBody> Future for ResponseFuture<S, Req, F>
where
    S: Service<Req, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    F: Future<Output = Result<Option<RateLimitInfo>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    pending,
                    headers,
                } => {
                    let decided = ready!(check.poll(cx));
                    let headers = *headers;
                    let Some((mut svc, req)) = pending.take() else {
                        return Poll::Ready(
                            Err("rate limit future polled after completion".into()),
                        );
                    };
                    match decided {
                        Ok(info) => this.state.set(State::Called {
                            fut: svc.call(req),
                            info: info.filter(|_| headers),
                        }),
                        Err(err) => return Poll::Ready(Err(err)),
                    }
                }
                StateProj::Called { fut, info } => {
                    let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if let Some(info) = *info {
                        annotate(res.headers_mut(), info);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "rate limit future polled after completion".into())));
                }
            }
        }
    }
}

/// Writes the limit's state, unless a limit nearer to running out (an inner rate limit layer)
/// already wrote its own: clients see the limit that will refuse them first.
fn annotate(headers: &mut HeaderMap, info: RateLimitInfo) {
    let inner_remaining = headers
        .get(RATELIMIT_REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if inner_remaining.is_none_or(|inner| info.remaining < inner) {
        insert_rate_limit_headers(headers, info);
    }
}
