//! Middleware and functions that turn errors from tower-patterns layers into HTTP responses.
//!
//! | error (found anywhere in the source chain)         | status | headers       |
//! |----------------------------------------------------|--------|---------------|
//! | [`Rejected`] rate limited, quota exceeded           | 429    | `Retry-After` |
//! | [`Rejected`] circuit open, bulkhead full, load shed | 503    | `Retry-After` |
//! | tower's `Overloaded` (from `LoadShed`)              | 503    |               |
//! | tower's `Elapsed` (from `Timeout`)                  | 504    |               |
//! | [`KeyError`] (a missing or malformed request key)   | 400    |               |
//! | [`TenantError`] malformed                           | 400    |               |
//! | [`TenantError`] missing or invalid credentials      | 401    | `WWW-Authenticate: Bearer` |
//! | [`TenantError`] conflict, unknown, suspended        | 403    |               |
//! | [`TenantError`] registry unavailable                | 503    |               |
//! | an error of a type registered with [`register_error_response`] | its [`IntoErrorResponse`] | |
//! | anything else                                       | 500    |               |
//!
//! Each pattern crate maps its own errors: it implements [`IntoErrorResponse`] for them and
//! registers them when its layer is built, so this table grows without this module changing.
//! Register your own errors the same way (see [`IntoErrorResponse`]).
//!
//! A [`Rejected`] that carries a [`RateLimitInfo`] also gets
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
//!
//! `Retry-After` is given in whole seconds, rounded up, so a client that honours it never
//! comes back early. Bodies are short plain-text phrases; instance names and error messages
//! are never written to the response (they go to `tracing` instead), so nothing internal
//! leaks to clients.
//!
//! # With axum
//!
//! [`handle_error`] fits axum's `HandleErrorLayer` as it is:
//!
//! ```
//! use std::time::Duration;
//! use axum::{error_handling::HandleErrorLayer, routing::get, Router};
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorLayer::new(tower_patterns_core::http::handle_error))
//!         .timeout(Duration::from_secs(10)),
//! );
//! # let _ = app;
//! ```
//!
//! # With hyper or any `tower::Service`
//!
//! [`ErrorResponseLayer`] makes a fallible HTTP service infallible:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::{http::ErrorResponseLayer, BoxError, Rejected, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .service(service_fn(|_req: Request<String>| async {
//!         let rejected = Rejected::new(RejectionKind::RateLimited)
//!             .with_retry_after(Duration::from_millis(2100));
//!         Err::<Response<String>, BoxError>(rejected.into())
//!     }));
//!
//! let res: Response<String> = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "3");
//! # }
//! ```

use std::{
    convert::Infallible,
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Response, StatusCode, header};

#[cfg(doc)]
use crate::tenant::TenantError;
#[cfg(any(doc, test))]
use crate::{KeyError, Rejected};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, error::RateLimitInfo};

mod mapping;

pub use mapping::{ErrorMapping, IntoErrorResponse, classify_error, register_error_response};

/// Whole seconds for a `Retry-After` header, rounded up so a client never retries early.
pub fn retry_after_secs(after: Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
}

/// Builds the response for an error (see the table in the [module docs](self)).
///
/// Server errors (500) are logged with `tracing` at `error` level, everything else at `debug`,
/// under the target `tower_patterns::http`; the body carries only a generic phrase.
pub fn error_response<B>(err: &(dyn Error + 'static)) -> Response<B>
where
    B: From<&'static str>,
{
    let mapping = classify_error(err);
    if mapping.status.is_server_error() && mapping.status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(target: "tower_patterns::http", status = mapping.status.as_u16(), error = %err, "request failed");
    } else {
        tracing::debug!(target: "tower_patterns::http", status = mapping.status.as_u16(), error = %err, "request rejected");
    }
    let mut res = Response::new(B::from(mapping.message));
    *res.status_mut() = mapping.status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(after) = mapping.retry_after {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(after)),
        );
    }
    if let Some(limit) = mapping.limit {
        insert_rate_limit_headers(res.headers_mut(), limit);
    }
    if mapping.status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

/// `RateLimit-Limit`: the requests the limit allows (draft IETF `RateLimit` header fields).
pub const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: the requests left before the limit refuses.
pub const RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: whole seconds until the limit is full again.
pub const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

/// Writes `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (whole seconds,
/// rounded up) into `headers`, replacing any already there.
///
/// The names are constants and numbers below 4,096 come from a table: on a map with room for
/// three more headers this allocates nothing.
pub fn insert_rate_limit_headers(headers: &mut http::HeaderMap, limit: RateLimitInfo) {
    headers.reserve(3);
    headers.insert(RATELIMIT_LIMIT, number(limit.limit));
    headers.insert(RATELIMIT_REMAINING, number(limit.remaining));
    headers.insert(RATELIMIT_RESET, number(limit.reset_secs()));
}

/// A header value for `n`; the numbers below 4,096 (most limits, remainders and resets) come
/// from a table made once, so writing them is a reference-count increment, not an allocation.
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Box<[HeaderValue]>> = std::sync::LazyLock::new(|| {
        (0..4096u64)
            .map(|n| {
                let value = HeaderValue::from(n);
                // The first clone of a value's bytes moves them to shared storage (one
                // allocation); do it here so no request pays it.
                drop(value.clone());
                value
            })
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| SMALL.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// An error handler for axum's `HandleErrorLayer`: `HandleErrorLayer::new(handle_error)`.
///
/// `Response<String>` implements axum's `IntoResponse`.
pub async fn handle_error(err: BoxError) -> Response<String> {
    error_response(&*err)
}

/// Layer that turns the errors of an HTTP service into responses; see [`ErrorResponse`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer {
    _priv: (),
}

impl ErrorResponseLayer {
    /// Creates the layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse::new(inner)
    }
}

/// Middleware that answers every error of its inner service with an HTTP response, using
/// [`error_response`], so the service it makes never fails (hyper then never drops the
/// connection because of a layer's error).
///
/// An error from the inner service's `poll_ready` is kept and answered on the next `call`.
pub struct ErrorResponse<S> {
    inner: S,
    ready_error: Option<BoxError>,
}

impl<S> ErrorResponse<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            ready_error: None,
        }
    }

    /// Returns a [`ErrorResponseLayer`] that wraps services with this middleware.
    pub const fn layer() -> ErrorResponseLayer {
        ErrorResponseLayer::new()
    }

    crate::inner_service_accessors!();
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        // A clone has not been polled: it starts without a stored readiness error.
        Self::new(self.inner.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for ErrorResponse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponse")
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, Req, B> Service<Req> for ErrorResponse<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: From<&'static str>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.ready_error = Some(e.into());
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.ready_error.take() {
            Some(err) => ErrorResponseFuture::failed(err),
            None => ErrorResponseFuture::called(self.inner.call(req)),
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    pub struct ErrorResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            fut: F,
        },
        Failed {
            err: Option<BoxError>,
        },
    }
}

impl<F> ErrorResponseFuture<F> {
    fn called(fut: F) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    fn failed(err: BoxError) -> Self {
        Self {
            state: State::Failed { err: Some(err) },
        }
    }
}

impl<F> fmt::Debug for ErrorResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ErrorResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut } => match fut.poll(cx) {
                Poll::Ready(Ok(res)) => Poll::Ready(Ok(res)),
                Poll::Ready(Err(e)) => {
                    let e: BoxError = e.into();
                    Poll::Ready(Ok(error_response(&*e)))
                }
                Poll::Pending => Poll::Pending,
            },
            StateProj::Failed { err } => {
                let res = match err.take() {
                    Some(e) => error_response(&*e),
                    None => error_response(&PolledAfterCompletion),
                };
                Poll::Ready(Ok(res))
            }
        }
    }
}

#[derive(Debug)]
struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("future polled after completion")
    }
}

impl Error for PolledAfterCompletion {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectionKind;

    fn kinds() -> [RejectionKind; 5] {
        [
            RejectionKind::CircuitOpen,
            RejectionKind::BulkheadFull,
            RejectionKind::RateLimited,
            RejectionKind::QuotaExceeded,
            RejectionKind::LoadShed,
        ]
    }

    #[test]
    fn every_rejection_kind_maps_to_its_status_and_retry_after() {
        for kind in kinds() {
            let expected = match kind {
                RejectionKind::RateLimited | RejectionKind::QuotaExceeded => 429,
                _ => 503,
            };
            let with_hint = Rejected::new(kind)
                .with_name("internal-name")
                .with_retry_after(Duration::from_millis(1001));
            let res: Response<String> = error_response(&with_hint);
            assert_eq!(res.status().as_u16(), expected, "{kind}");
            assert_eq!(
                res.headers()[header::RETRY_AFTER],
                "2",
                "{kind}: rounded up"
            );
            assert_eq!(res.body(), kind.as_str());
            assert!(!res.body().contains("internal-name"), "names never leak");

            let without_hint: Response<String> = error_response(&Rejected::new(kind));
            assert_eq!(without_hint.status().as_u16(), expected);
            assert!(without_hint.headers().get(header::RETRY_AFTER).is_none());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn tower_errors_and_others() {
        let elapsed: BoxError = tower::timeout::error::Elapsed::new().into();
        assert_eq!(
            classify_error(&*elapsed).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        let shed: BoxError = tower::load_shed::error::Overloaded::new().into();
        assert_eq!(
            classify_error(&*shed).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let key = KeyError::missing("header x-tenant-id");
        assert_eq!(classify_error(&key).status, StatusCode::BAD_REQUEST);
        let other = std::io::Error::other("db password is hunter2");
        let res: Response<String> = error_response(&other);
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!res.body().contains("hunter2"), "internals never leak");
    }

    #[test]
    fn tenant_errors_map_to_400_401_403_503_and_leak_no_detail() {
        use crate::tenant::{TenantError, TenantErrorKind as K};
        for (kind, status) in [
            (K::Malformed, 400),
            (K::MissingCredentials, 401),
            (K::InvalidCredentials, 401),
            (K::Conflict, 403),
            (K::Unknown, 403),
            (K::Suspended, 403),
            (K::Unavailable, 503),
        ] {
            let err: BoxError = TenantError::new(kind, "tenant acme-secret, key kid-7").into();
            let res: Response<String> = error_response(&*err);
            assert_eq!(res.status().as_u16(), status, "{kind:?}");
            assert_eq!(res.body(), kind.public_message());
            assert!(!res.body().contains("acme-secret"));
            assert_eq!(
                res.headers().contains_key(header::WWW_AUTHENTICATE),
                status == 401
            );
        }
        // One answer for an unknown and a suspended tenant: no probing which ids exist.
        let answer = |kind| {
            let res: Response<String> = error_response(&TenantError::new(kind, "detail"));
            (res.status(), res.into_body())
        };
        assert_eq!(answer(K::Unknown), answer(K::Suspended));
    }

    #[test]
    fn a_rejection_with_limit_state_sets_the_ratelimit_headers() {
        let info = RateLimitInfo {
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(2500),
        };
        let rejected = Rejected::new(RejectionKind::RateLimited)
            .with_retry_after(Duration::from_millis(200))
            .with_limit(info);
        let res: Response<String> = error_response(&rejected);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["ratelimit-limit"], "10");
        assert_eq!(res.headers()["ratelimit-remaining"], "0");
        assert_eq!(res.headers()["ratelimit-reset"], "3");
        let huge = RateLimitInfo {
            reset: Duration::MAX,
            ..info
        };
        assert_eq!(huge.reset_secs(), u64::MAX);
    }
}
