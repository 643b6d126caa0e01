//! Retrying HTTP and gRPC: which responses, which methods, how long the server asks to wait,
//! and which bodies can be sent again.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use tower_patterns_core::BoxError;

use crate::policy::{Pushback, RetryKind, Verdict, error_verdict};

/// The attempt number of a request (1 for the first), in its extensions on retries.
///
/// ```
/// use tower_patterns_retry::Attempt;
///
/// fn attempt_of<B>(req: &http::Request<B>) -> u32 {
///     req.extensions().get::<Attempt>().map_or(1, |a| a.0)
/// }
/// assert_eq!(attempt_of(&http::Request::new(())), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt(pub u32);

/// A request body that can be sent again.
///
/// Implemented for bodies held in memory; streaming bodies are not replayable, so such
/// requests are sent once and never retried.
pub trait TryCloneBody: Sized {
    /// A copy for another attempt, if the body can be sent again.
    fn try_clone(&self) -> Option<Self>;
}

impl TryCloneBody for String {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl TryCloneBody for Bytes {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl TryCloneBody for () {
    fn try_clone(&self) -> Option<Self> {
        Some(())
    }
}

impl<D: Clone> TryCloneBody for http_body_util::Full<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> TryCloneBody for http_body_util::Empty<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(Self::new())
    }
}

/// Retries HTTP and gRPC calls; see [`RetryPolicyBuilder::http`](crate::RetryPolicyBuilder::http).
///
/// - **Responses**: 408, 429, 502, 503 and 504 by default (`statuses` to change); gRPC
///   statuses in the response headers (trailers-only responses, as servers send errors) that
///   are UNAVAILABLE by default (`grpc_codes`). Other 4xx and 5xx are not retried.
/// - **Errors**: transport errors and timeouts are retried; a [`Rejected`] from a layer below
///   (an open circuit, a full bulkhead) is not, unless `retry_rejected`.
/// - **Methods**: GET, HEAD, OPTIONS, PUT, DELETE and TRACE are idempotent; POST and PATCH are
///   retried only with an `Idempotency-Key` header (never charge a user twice).
/// - **Server pushback**: `Retry-After` in seconds or as an HTTP date, and
///   `grpc-retry-pushback-ms` (negative: do not retry); a retry never goes earlier.
/// - **Attempt**: retries carry [`Attempt`] in their extensions and, with `attempt_header`,
///   a header.
///
/// [`Rejected`]: tower_patterns_core::Rejected
#[derive(Clone, Debug)]
pub struct HttpRetry {
    statuses: [bool; 600],
    grpc_codes: u32,
    retry_rejected: bool,
    attempt_header: Option<HeaderName>,
}

impl Default for HttpRetry {
    fn default() -> Self {
        let mut statuses = [false; 600];
        for s in [408, 429, 502, 503, 504] {
            statuses[s] = true;
        }
        Self {
            statuses,
            grpc_codes: 1 << 14, // UNAVAILABLE
            retry_rejected: false,
            attempt_header: None,
        }
    }
}

impl HttpRetry {
    /// Retries exactly these statuses.
    #[must_use]
    pub fn statuses(mut self, statuses: &[StatusCode]) -> Self {
        self.statuses = [false; 600];
        for s in statuses {
            if let Some(slot) = self.statuses.get_mut(usize::from(s.as_u16())) {
                *slot = true;
            }
        }
        self
    }

    /// Retries exactly these gRPC status codes (0 to 16; for example 14 UNAVAILABLE and 8
    /// RESOURCE_EXHAUSTED).
    #[must_use]
    pub fn grpc_codes(mut self, codes: &[u8]) -> Self {
        self.grpc_codes = codes.iter().filter(|c| **c < 32).fold(0, |m, c| m | 1 << c);
        self
    }

    /// Retries rejections from layers below too.
    #[must_use]
    pub fn retry_rejected(mut self, on: bool) -> Self {
        self.retry_rejected = on;
        self
    }

    /// Also sends the attempt number in this header (for example `x-retry-attempt`).
    #[must_use]
    pub fn attempt_header(mut self, name: HeaderName) -> Self {
        self.attempt_header = Some(name);
        self
    }

    fn idempotent<B>(req: &Request<B>) -> bool {
        match *req.method() {
            Method::GET
            | Method::HEAD
            | Method::OPTIONS
            | Method::PUT
            | Method::DELETE
            | Method::TRACE => true,
            Method::POST | Method::PATCH => req.headers().contains_key("idempotency-key"),
            _ => false,
        }
    }
}

/// A copy of `req` for another attempt (method, URI, version, headers, extensions and the
/// body), if its body can be sent again.
pub(crate) fn copy_request<B: TryCloneBody>(req: &Request<B>) -> Option<Request<B>> {
    let mut copy = Request::new(req.body().try_clone()?);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// `Retry-After`: whole seconds, or an HTTP date (a past date means now). Malformed values
/// are ignored.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `grpc-retry-pushback-ms`: milliseconds to wait, or (negative) do not retry.
pub fn grpc_pushback(headers: &http::HeaderMap) -> Option<Pushback> {
    let ms: i64 = headers
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(match u64::try_from(ms) {
        Ok(ms) => Pushback::After(Duration::from_millis(ms)),
        Err(_) => Pushback::Stop,
    })
}

impl<B: TryCloneBody, RB> RetryKind<Request<B>, Response<RB>, BoxError> for HttpRetry {
    fn verdict(&self, _req: &Request<B>, result: &Result<Response<RB>, BoxError>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(e) => return error_verdict(e, self.retry_rejected),
        };
        if let Some(code) = res.headers().get("grpc-status") {
            let code = code
                .to_str()
                .ok()
                .and_then(|c| c.trim().parse::<u32>().ok());
            return match code {
                Some(0) => Verdict::Success,
                Some(c) if c < 32 && self.grpc_codes & (1 << c) != 0 => {
                    Verdict::Retryable(grpc_pushback(res.headers()))
                }
                _ => Verdict::Failure,
            };
        }
        let status = res.status();
        if self
            .statuses
            .get(usize::from(status.as_u16()))
            .copied()
            .unwrap_or(false)
        {
            Verdict::Retryable(retry_after(res.headers()).map(Pushback::After))
        } else if status.is_client_error() || status.is_server_error() {
            Verdict::Failure
        } else {
            Verdict::Success
        }
    }

    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        if !Self::idempotent(req) {
            return None;
        }
        copy_request(req)
    }

    fn mark_attempt(&self, req: &mut Request<B>, attempt: u32) {
        req.extensions_mut().insert(Attempt(attempt));
        if let Some(name) = &self.attempt_header {
            req.headers_mut()
                .insert(name.clone(), HeaderValue::from(attempt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_seconds_dates_and_garbage() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let d = retry_after(&headers(&[("retry-after", &in_a_minute)])).unwrap();
        assert!(
            d > Duration::from_secs(59) && d <= Duration::from_secs(61),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(600));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-5")])), None);
    }

    #[test]
    fn grpc_pushback_values() {
        assert_eq!(
            grpc_pushback(&headers(&[("grpc-retry-pushback-ms", "250")])),
            Some(Pushback::After(Duration::from_millis(250)))
        );
        assert_eq!(
            grpc_pushback(&headers(&[("grpc-retry-pushback-ms", "-1")])),
            Some(Pushback::Stop)
        );
        assert_eq!(
            grpc_pushback(&headers(&[("grpc-retry-pushback-ms", "x")])),
            None
        );
    }

    #[test]
    fn idempotency_gate() {
        let kind = HttpRetry::default();
        let req = |m: Method, key: bool| {
            let mut r = Request::builder().method(m);
            if key {
                r = r.header("idempotency-key", "k-1");
            }
            r.body(String::new()).unwrap()
        };
        let clone = |r: &Request<String>| {
            <HttpRetry as RetryKind<Request<String>, Response<()>, BoxError>>::clone_request(
                &kind, r,
            )
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(clone(&req(m.clone(), false)).is_some(), "{m}");
        }
        assert!(clone(&req(Method::POST, false)).is_none());
        assert!(clone(&req(Method::PATCH, false)).is_none());
        assert!(clone(&req(Method::POST, true)).is_some());
    }
}
